/**
 * The demo's agents as real pods on a local node (`demo --node`): the pod runs the project image with an idle
 * app container, the kubelet runs the injected sidecar container, and each agent call is made from inside the
 * app container (`kubectl exec`) through the sidecar's proxy, exactly as the agent's HTTP client would with
 * HTTP_PROXY. Audit records are the sidecar container's own log lines.
 */
import type { AuditRecord } from '../sidecar/audit.ts';
import { ADMIN_PORT, PROXY_PORT, SIDECAR_NAME } from '../webhook/inject.ts';
import { sleep } from '../lib/sleep.ts';
import { call, type AgentRunner, type DemoAgent } from './demo.ts';

/** The project image as the demo's pods and the webhook name it. */
export const DEMO_IMAGE = 'localhost/agentfence/agentfence:demo';
const APP_UID = 1000;
/** The port research-agent's app serves other agents on, inside its pod (its gate is in front of it). */
const APP_PORT = 8080;
/** The app's server, as the container runs it: the same answer as the in-process one (demo.ts researchAnswer). */
const APP = `require('node:http').createServer((req,res)=>{req.resume();res.setHeader('content-type','application/json');
res.end(JSON.stringify({answer:'three sources found',caller:req.headers['agentfence-caller']??null}))}).listen(${APP_PORT});`;
const READY_TIMEOUT_MS = 120_000;

/** An absolute-form request to the sidecar's proxy, from the app container; prints one JSON line. */
const CALL = `const http=require('node:http');const [method,url,body,extra]=JSON.parse(process.argv[1]);
const req=http.request({host:'127.0.0.1',port:${PROXY_PORT},method,path:url,headers:{host:new URL(url).host,
...(body?{'content-type':'application/json'}:{}),...extra}},(res)=>{let t='';res.setEncoding('utf8');res.on('data',(c)=>t+=c);
res.on('end',()=>console.log(JSON.stringify({status:res.statusCode,body:t})))});
req.on('error',(e)=>console.log(JSON.stringify({status:0,body:String(e.code)})));req.end(body);`;

/**
 * An HTTPS call from the app container as an HTTPS_PROXY-aware client makes it: CONNECT through the sidecar, then
 * TLS trusting the process's CA store — which holds the pod CA because the webhook set NODE_EXTRA_CA_CERTS to the
 * trust bundle the sidecar wrote.
 */
const CALL_HTTPS = `const http=require('node:http'),https=require('node:https'),tls=require('node:tls');
const [method,url,init]=JSON.parse(process.argv[1]);const u=new URL(url);const done=(o)=>console.log(JSON.stringify(o));
http.request({host:'127.0.0.1',port:${PROXY_PORT},method:'CONNECT',path:u.host,headers:{host:u.host}})
.on('connect',(res,socket,head)=>{if(res.statusCode!==200){let t=head.toString();socket.on('data',(c)=>t+=c);
socket.on('end',()=>done({status:res.statusCode,body:t}));return;}
const req=https.request({host:u.hostname,port:u.port,method,path:u.pathname,headers:init.headers??{},
createConnection:()=>tls.connect({socket,host:u.hostname})},(r)=>{let t='';r.setEncoding('utf8');
r.on('data',(c)=>t+=c);r.on('end',()=>{done({status:r.statusCode,body:t});socket.destroy();});});
req.on('error',(e)=>done({status:0,body:String(e.code)}));req.end(init.body);})
.on('error',(e)=>done({status:0,body:String(e.code)})).end();`;

/** The sidecar's admin status, from the app container (the pod shares one network namespace). */
const STATUS = `fetch('http://127.0.0.1:${ADMIN_PORT}/status').then(async(r)=>console.log(JSON.stringify(
{ready:r.status===200,status:await r.json()})),(e)=>console.log(JSON.stringify({ready:false,error:String(e)})));`;

interface PodState {
  status?: { podIP?: string; conditions?: { type: string; status: string }[] };
}

export function nodeAgents(ctx: {
  k: (args: string[], input?: string) => Promise<string>;
  namespace: string;
  /** The controller, served on the host at the node's address. */
  controllerUrl: string;
  host: string;
}): AgentRunner {
  const pods: string[] = [];
  const exec = async <T>(pod: string, script: string, arg?: string): Promise<T> => {
    const out = await ctx.k([
      'exec',
      pod,
      '-n',
      ctx.namespace,
      '-c',
      'agent',
      '--',
      'node',
      '-e',
      script,
      ...(arg === undefined ? [] : [arg]),
    ]);
    return JSON.parse(out.trim().split('\n').pop() ?? 'null') as T;
  };
  return {
    host: ctx.host,
    container: (agent, appPort) => ({
      name: 'agent',
      image: DEMO_IMAGE,
      imagePullPolicy: 'Never',
      command: ['node', '-e', appPort ? APP : 'setInterval(() => {}, 1e9)'],
      ...(appPort ? { ports: [{ name: 'http', containerPort: appPort }] } : {}),
      env: [{ name: 'AGENT', value: agent }],
      securityContext: { runAsUser: APP_UID, runAsGroup: APP_UID, allowPrivilegeEscalation: false },
    }),
    serveApp: () => Promise.resolve(APP_PORT),
    // From the host: the node's address, which no NetworkPolicy of the operator's admits to an agent.
    call: (method, url, body, headers) => call(undefined, method, url, body, headers),
    // The controller runs on the host, not as pods the baseline's operator rule selects: one more egress rule.
    prepareNamespace: async () => {
      const port = Number(new URL(ctx.controllerUrl).port);
      await ctx.k(
        ['apply', '-f', '-'],
        JSON.stringify({
          apiVersion: 'networking.k8s.io/v1',
          kind: 'NetworkPolicy',
          metadata: { name: 'controller-on-the-host', namespace: ctx.namespace },
          spec: {
            podSelector: { matchLabels: { 'agentfence.io/inject': 'true' } },
            policyTypes: ['Egress'],
            egress: [{ to: [{ ipBlock: { cidr: `${ctx.host}/32` } }], ports: [{ protocol: 'TCP', port }] }],
          },
        }),
      );
    },
    attach: (pod): Promise<DemoAgent> => {
      const name = pod.metadata.name;
      pods.push(name);
      return Promise.resolve({
        call: (method, url, body, headers) =>
          exec(name, CALL, JSON.stringify([method, url, body ?? '', headers ?? {}])),
        callHttps: (method, url, init) => exec(name, CALL_HTTPS, JSON.stringify([method, url, init ?? {}])),
        podIP: async () => {
          const state = JSON.parse(await ctx.k(['get', 'pod', name, '-n', ctx.namespace, '-o', 'json'])) as PodState;
          if (!state.status?.podIP) throw new Error(`pod ${ctx.namespace}/${name} has no IP`);
          return state.status.podIP;
        },
        ready: async () => {
          const deadline = Date.now() + READY_TIMEOUT_MS;
          for (;;) {
            const state = JSON.parse(await ctx.k(['get', 'pod', name, '-n', ctx.namespace, '-o', 'json'])) as PodState;
            if (state.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) {
              const res = await exec<{ ready: boolean; status?: { agent: string; revision: string } }>(name, STATUS);
              if (res.ready && res.status) return res.status;
            }
            if (Date.now() > deadline) throw new Error(`pod ${ctx.namespace}/${name} did not become Ready`);
            await sleep(500);
          }
        },
      });
    },
    audits: async () => {
      const records: AuditRecord[] = [];
      for (const pod of pods) {
        const logs = await ctx.k(['logs', pod, '-n', ctx.namespace, '-c', SIDECAR_NAME]);
        for (const line of logs.split('\n')) {
          try {
            const parsed = JSON.parse(line) as Partial<AuditRecord>;
            if (parsed.decision) records.push(parsed as AuditRecord);
          } catch {
            // A log line that is not JSON: not an audit record.
          }
        }
      }
      return records.sort((a, b) => a.time.localeCompare(b.time));
    },
  };
}
