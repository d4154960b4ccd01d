/**
 * The fence on a real node, as a cluster runs it: the chart installs the controller (its Deployment runs as
 * pods), the webhook injects the real sidecar container into a Deployment's pods, the kubelet runs it with the
 * volumes, user and environment the webhook gave it, and the sidecar reaches the controller through its
 * Service by name (`agentfence-controller.<ns>.svc`: cluster DNS, then kube-proxy's NAT), allowed by the
 * operator's baseline NetworkPolicy alone. The app container talks through the sidecar, and kube-router
 * enforces the NetworkPolicies the operator wrote on real connections between pods.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import {
  createNamespace,
  eventually,
  execNode,
  getPod,
  installChart,
  realnode,
  run,
  runOrThrow,
  skipReason,
  uninstallChart,
  waitPodReady,
  type PodStatus,
} from './support.ts';

const reason = skipReason();
const HTTP_PORT = 8080;
const ECHO_PORT = 9000;
const APP_UID = 1000;
/** The sidecar's bound (the chart's sidecar.maxStaleness): above the controller's 15 s heartbeat, short for a test. */
const MAX_STALENESS_S = 20;
const CONTROLLER_REPLICAS = 2;

/** A plain HTTP server naming itself, plus a TCP echo: what upstreams and agent apps run. */
const SERVE = `const http=require('node:http'),net=require('node:net');
http.createServer((q,s)=>s.end(JSON.stringify({me:process.env.ME,path:q.url}))).listen(${HTTP_PORT});
net.createServer((c)=>c.pipe(c)).listen(${ECHO_PORT});`;

/** A GET through the sidecar's proxy (absolute-form), from inside the app container. */
const proxyGet = (url: string): string => `const net=require('node:net');
const u=new URL(${JSON.stringify(url)});const s=net.connect(15001,'127.0.0.1');let out='';
const done=(r)=>{console.log(JSON.stringify(r));process.exit(0)};
setTimeout(()=>done({error:'timeout'}),8000);
s.on('connect',()=>s.write('GET '+u.href+' HTTP/1.1\\r\\nhost: '+u.host+'\\r\\nconnection: close\\r\\n\\r\\n'));
s.on('data',(c)=>out+=c);s.on('error',(e)=>done({error:e.code}));
s.on('end',()=>done({status:Number((/^HTTP\\/1\\.1 (\\d{3})/.exec(out)||[])[1]||0),body:out.slice(out.indexOf('\\r\\n\\r\\n')+4)}));`;

/** A direct TCP connection, around the proxy. */
const directConnect = (host: string, port: number): string => `const net=require('node:net');
const s=net.connect(${port},${JSON.stringify(host)});const done=(r)=>{console.log(JSON.stringify(r));process.exit(0)};
setTimeout(()=>done({connected:false,error:'timeout'}),4000);
s.on('connect',()=>done({connected:true}));s.on('error',(e)=>done({connected:false,error:e.code}));`;

interface ProxyResult {
  status?: number;
  body?: string;
  error?: string;
}
interface DirectResult {
  connected: boolean;
  error?: string;
}

let system: string;
let agents: string;
let upstreams: string;
const ips: Record<string, string> = {};
const pods: Record<string, string> = {};

function upstreamPod(name: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: upstreams, labels: { app: name } },
    spec: {
      containers: [
        {
          name: 'server',
          image: realnode().image,
          imagePullPolicy: 'Never',
          command: ['node', '-e', SERVE],
          env: [{ name: 'ME', value: name }],
          securityContext: { runAsUser: APP_UID, runAsGroup: APP_UID, allowPrivilegeEscalation: false },
        },
      ],
      terminationGracePeriodSeconds: 1,
    },
  });
}

function agentDeployment(agent: string, inject = true): string {
  const labels = { app: agent, 'agentfence.io/agent': agent, ...(inject ? { 'agentfence.io/inject': 'true' } : {}) };
  return JSON.stringify({
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: agent, namespace: agents },
    spec: {
      replicas: 1,
      selector: { matchLabels: { app: agent } },
      template: {
        metadata: { labels },
        spec: {
          serviceAccountName: agent,
          terminationGracePeriodSeconds: 1,
          containers: [
            {
              name: 'app',
              image: realnode().image,
              imagePullPolicy: 'Never',
              command: ['node', '-e', SERVE],
              // Declared, as an agent must declare what it serves: the webhook puts the sidecar's inbound gate in
              // front of it, and other agents reach it only through that gate.
              ports: [{ name: 'http', containerPort: HTTP_PORT }],
              env: [{ name: 'ME', value: agent }],
              securityContext: { runAsUser: APP_UID, runAsGroup: APP_UID, allowPrivilegeEscalation: false },
            },
          ],
        },
      },
    },
  });
}

function alphaPolicy(rules: { echo: boolean; beta: boolean }): string {
  const egress: unknown[] = [
    { name: 'allowed-http', to: { cidrs: [`${ips.allowed}/32`] }, ports: [{ port: HTTP_PORT }] },
  ];
  if (rules.echo)
    egress.push({ name: 'allowed-echo', to: { cidrs: [`${ips.allowed}/32`] }, ports: [{ port: ECHO_PORT }] });
  if (rules.beta) {
    egress.push({
      name: 'to-beta',
      to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'beta' } } } },
      ports: [{ port: HTTP_PORT }],
    });
  }
  return stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: 'alpha', namespace: agents },
    spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'alpha' } }, egress },
  });
}

async function podOf(app: string): Promise<PodStatus> {
  const name = await eventually(async () => {
    const out = await runOrThrow([
      'get',
      'pods',
      '-n',
      agents,
      '-l',
      `app=${app}`,
      '-o',
      'jsonpath={.items[*].metadata.name}',
    ]);
    const names = out.split(' ').filter(Boolean);
    return names.length === 1 ? names[0] : undefined;
  }, `one pod of deployment ${app}`);
  return waitPodReady(agents, name);
}

const viaProxy = (from: string, url: string): Promise<ProxyResult> => execNode(agents, from, 'app', proxyGet(url));
const direct = (ns: string, from: string, container: string, host: string, port: number): Promise<DirectResult> =>
  execNode(ns, from, container, directConnect(host, port));

describe.skipIf(reason)('the fence on a real node', () => {
  beforeAll(async () => {
    system = await createNamespace('af-system');
    agents = await createNamespace('agents');
    upstreams = await createNamespace('upstreams');
    // Upstream pods are never injected: their namespace is excluded like the system ones.
    await installChart(system, {
      'sidecar.maxStaleness': `${MAX_STALENESS_S}s`,
      'controller.replicas': String(CONTROLLER_REPLICAS),
      'webhook.excludeNamespaces': `{kube-system,kube-public,kube-node-lease,${upstreams}}`,
    });

    for (const name of ['allowed', 'other']) await runOrThrow(['apply', '-f', '-'], upstreamPod(name));
    for (const name of ['allowed', 'other']) {
      const pod = await waitPodReady(upstreams, name);
      ips[name] = pod.status.podIP ?? '';
    }
    for (const sa of ['alpha', 'beta']) await runOrThrow(['create', 'serviceaccount', sa, '-n', agents]);
    await runOrThrow(['apply', '-f', '-'], alphaPolicy({ echo: true, beta: false }));
    for (const agent of ['alpha', 'beta']) await runOrThrow(['apply', '-f', '-'], agentDeployment(agent));
    for (const agent of ['alpha', 'beta']) {
      const pod = await podOf(agent);
      pods[agent] = pod.metadata.name;
      ips[agent] = pod.status.podIP ?? '';
    }
  });

  afterAll(async () => {
    // Agent pods first, while the controller still answers their sidecars (and the webhook).
    if (agents) await run(['delete', 'namespace', agents, '--wait=true', '--timeout=60s']);
    if (system) await uninstallChart(system);
    for (const ns of [upstreams, system]) if (ns) await run(['delete', 'namespace', ns, '--wait=false']);
  });

  it('injects the sidecar into the Deployment’s pods; the kubelet runs it, it reaches the chart’s controller through its Service by name and becomes ready before the app', async () => {
    const pod = await getPod(agents, pods.alpha ?? '');
    expect(pod.spec.initContainers?.map((c) => c.name)).toContain('agentfence-sidecar');
    const args = (pod.spec.initContainers?.find((c) => c.name === 'agentfence-sidecar') as { args?: string[] }).args;
    expect(args).toContain(`--controller=https://agentfence-controller.${system}.svc`);
    // No NetworkPolicy in the agent namespace but the operator's: the baseline alone lets the sidecar reach it.
    const policies = JSON.parse(await runOrThrow(['get', 'networkpolicies', '-n', agents, '-o', 'json'])) as {
      items: { metadata: { labels?: Record<string, string> } }[];
    };
    expect(policies.items.length).toBeGreaterThan(0);
    for (const p of policies.items) expect(p.metadata.labels?.['app.kubernetes.io/managed-by']).toBeDefined();
    const sidecar = pod.status.initContainerStatuses?.find((c) => c.name === 'agentfence-sidecar');
    expect(sidecar).toMatchObject({ ready: true, started: true, restartCount: 0 });
    expect(sidecar?.state?.running).toBeDefined();
    // The sidecar holds its identity: its own log says so, and the entitlement reports it in sync.
    await eventually(async () => {
      const ae = JSON.parse(await runOrThrow(['get', 'ae', pods.alpha ?? '', '-n', agents, '-o', 'json'])) as {
        status?: { inSync?: boolean };
      };
      return ae.status?.inSync ? true : undefined;
    }, 'AgentEntitlement of alpha in sync');
  });

  it('lets the app reach the entitled upstream through the sidecar and refuses it elsewhere', async () => {
    const ok = await viaProxy(pods.alpha ?? '', `http://${ips.allowed}:${HTTP_PORT}/hello`);
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body ?? '{}')).toMatchObject({ me: 'allowed', path: '/hello' });
    const denied = await viaProxy(pods.alpha ?? '', `http://${ips.other}:${HTTP_PORT}/hello`);
    expect(denied.status).toBe(403);
  });

  it('refuses the app’s direct connection around the proxy at L3 (kube-router enforcing the operator’s NetworkPolicies)', async () => {
    // Control: the same connection from a pod without policies gets through, so the refusal is the policy.
    expect(await direct(upstreams, 'allowed', 'server', ips.other ?? '', HTTP_PORT)).toEqual({ connected: true });
    const bypass = await direct(agents, pods.alpha ?? '', 'app', ips.other ?? '', HTTP_PORT);
    expect(bypass.connected).toBe(false);
    // The documented limit: NetworkPolicy selects pods, not containers, so the app container reaches what its
    // sidecar is entitled to at L3 directly too (only the L7 profile — methods, paths, identity — is lost).
    expect(await direct(agents, pods.alpha ?? '', 'app', ips.allowed ?? '', HTTP_PORT)).toEqual({ connected: true });
  });

  it('keeps two agents of one namespace apart, in both directions, until a grant opens one path', async () => {
    expect((await direct(agents, pods.alpha ?? '', 'app', ips.beta ?? '', HTTP_PORT)).connected).toBe(false);
    expect((await direct(agents, pods.beta ?? '', 'app', ips.alpha ?? '', HTTP_PORT)).connected).toBe(false);
    // Ingress too: a pod without policies cannot reach an agent (the baseline refuses all ingress).
    expect((await direct(upstreams, 'allowed', 'server', ips.beta ?? '', HTTP_PORT)).connected).toBe(false);
    expect((await viaProxy(pods.alpha ?? '', `http://${ips.beta}:${HTTP_PORT}/`)).status).toBe(403);

    await runOrThrow(['apply', '-f', '-'], alphaPolicy({ echo: true, beta: true }));
    const granted = await eventually(async () => {
      const res = await viaProxy(pods.alpha ?? '', `http://${ips.beta}:${HTTP_PORT}/from-alpha`);
      return res.status === 200 ? res : undefined;
    }, 'alpha → beta through the sidecar after the grant');
    expect(JSON.parse(granted.body ?? '{}')).toMatchObject({ me: 'beta', path: '/from-alpha' });
    // One way only: beta was granted nothing.
    expect((await direct(agents, pods.beta ?? '', 'app', ips.alpha ?? '', HTTP_PORT)).connected).toBe(false);
  });

  it('cuts an open tunnel of a real pod when the policy is narrowed', async () => {
    // A CONNECT tunnel to the echo port, held open and exercised every 50 ms until it closes.
    const script = `const net=require('node:net');const s=net.connect(15001,'127.0.0.1');let open=false;
s.on('connect',()=>s.write('CONNECT ${ips.allowed}:${ECHO_PORT} HTTP/1.1\\r\\nhost: ${ips.allowed}:${ECHO_PORT}\\r\\n\\r\\n'));
s.on('data',(c)=>{if(!open&&/^HTTP\\/1\\.1 200/.test(String(c))){open=true;console.log(JSON.stringify({open:true}));setInterval(()=>s.write('x'),50)}});
const end=()=>{console.log(JSON.stringify({closedAt:Date.now(),open}));process.exit(0)};s.on('close',end);s.on('error',end);
setTimeout(end,60000);`;
    const exec = spawn(realnode().binaries.kubectl, [
      `--kubeconfig=${realnode().kubeconfigPath}`,
      'exec',
      pods.alpha ?? '',
      '-n',
      agents,
      '-c',
      'app',
      '--',
      'node',
      '-e',
      script,
    ]);
    let out = '';
    exec.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const finished = new Promise<void>((resolve) => exec.once('close', () => resolve()));
    try {
      await eventually(() => (out.includes('"open":true') ? true : undefined), 'tunnel open', 30_000);
      const appliedAt = Date.now();
      await runOrThrow(['apply', '-f', '-'], alphaPolicy({ echo: false, beta: true }));
      await finished;
      const closed = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { closedAt?: number; open?: boolean };
      expect(closed.open).toBe(true);
      expect(closed.closedAt).toBeGreaterThan(appliedAt);
      process.stderr.write(
        `realnode: narrowing → open tunnel closed in a real pod ${(closed.closedAt ?? 0) - appliedAt} ms after kubectl apply started\n`,
      );
      // And a new attempt is refused by the sidecar.
      const script2 = `const net=require('node:net');const s=net.connect(15001,'127.0.0.1');let out='';
s.on('connect',()=>s.write('CONNECT ${ips.allowed}:${ECHO_PORT} HTTP/1.1\\r\\nhost: ${ips.allowed}:${ECHO_PORT}\\r\\n\\r\\n'));
s.on('data',(c)=>{out+=c;console.log(JSON.stringify({status:Number((/^HTTP\\/1\\.1 (\\d{3})/.exec(out)||[])[1]||0)}));process.exit(0)});
s.on('error',(e)=>{console.log(JSON.stringify({error:e.code}));process.exit(0)});`;
      expect(await execNode<{ status: number }>(agents, pods.alpha ?? '', 'app', script2)).toEqual({ status: 403 });
    } finally {
      exec.kill();
    }
  });

  it('reports the sidecar container’s memory from the kubelet’s own stats', async () => {
    const summary = JSON.parse(
      await runOrThrow(['get', '--raw', `/api/v1/nodes/${realnode().nodeName}/proxy/stats/summary`]),
    ) as {
      pods: { podRef: { name: string }; containers: { name: string; memory?: { workingSetBytes?: number } }[] }[];
    };
    const sidecars = summary.pods
      .filter((p) => Object.values(pods).includes(p.podRef.name))
      .map((p) => p.containers.find((c) => c.name === 'agentfence-sidecar')?.memory?.workingSetBytes ?? 0);
    expect(sidecars.length).toBe(2);
    for (const bytes of sidecars) expect(bytes).toBeGreaterThan(0);
    process.stderr.write(
      `realnode: sidecar working set (kubelet stats): ${sidecars.map((b) => `${(b / 2 ** 20).toFixed(1)} MiB`).join(', ')}\n`,
    );
  });

  it('starts an injected pod (sidecar first, then the app) and a plain one: both run; the figures are printed', async () => {
    const started: Record<string, number> = {};
    for (const [name, inject] of [
      ['plain', false],
      ['injected', true],
    ] as const) {
      const createdAt = Date.now();
      await runOrThrow(
        ['apply', '-f', '-'],
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: {
            name: `start-${name}`,
            namespace: agents,
            labels: { 'agentfence.io/agent': 'alpha', ...(inject ? { 'agentfence.io/inject': 'true' } : {}) },
          },
          spec: {
            serviceAccountName: 'alpha',
            terminationGracePeriodSeconds: 1,
            containers: [
              {
                name: 'app',
                image: realnode().image,
                imagePullPolicy: 'Never',
                command: ['node', '-e', SERVE],
                securityContext: { runAsUser: APP_UID, runAsGroup: APP_UID, allowPrivilegeEscalation: false },
              },
            ],
          },
        }),
      );
      const pod = await waitPodReady(agents, `start-${name}`);
      started[name] = Date.now() - createdAt;
      expect(pod.spec.initContainers?.some((c) => c.name === 'agentfence-sidecar') ?? false).toBe(inject);
    }
    process.stderr.write(
      `realnode: pod start (create → Ready): plain ${started.plain} ms, injected ${started.injected} ms\n`,
    );
  });

  it('fails closed in a real pod once the controller Deployment is scaled to zero for longer than the staleness bound, and recovers when it is back', async () => {
    expect((await viaProxy(pods.alpha ?? '', `http://${ips.allowed}:${HTTP_PORT}/`)).status).toBe(200);
    // Scaled to zero rather than pods deleted: the Deployment would replace deleted pods at once, so "the
    // controller is gone" holds only while it wants none; it also keeps the chart's objects for the way back.
    const goneAt = Date.now();
    await runOrThrow(['scale', 'deployment', 'agentfence-controller', '-n', system, '--replicas=0']);
    await eventually(
      async () => ((await runOrThrow(['get', 'pods', '-n', system, '-o', 'name'])).trim() === '' ? true : undefined),
      'no controller pod left',
    );
    const refused = await eventually(
      async () => {
        const res = await viaProxy(pods.alpha ?? '', `http://${ips.allowed}:${HTTP_PORT}/`);
        return res.status !== 200 ? res : undefined;
      },
      'the sidecar refusing once its snapshot is stale',
      (MAX_STALENESS_S + 30) * 1000,
    );
    const refusedAfterMs = Date.now() - goneAt;
    expect(refused.status).toBeGreaterThanOrEqual(403);
    // The refusal is the staleness bound's (not, say, a lost token): the sidecar says so, naming the bound.
    const logs = await runOrThrow(['logs', pods.alpha ?? '', '-n', agents, '-c', 'agentfence-sidecar']);
    const failedClosed = logs
      .split('\n')
      .filter((l) => l.includes('no entitlement snapshot within the staleness bound'))
      .map((l) => JSON.parse(l) as { maxStalenessMs?: number });
    expect(failedClosed.at(-1)?.maxStalenessMs).toBe(MAX_STALENESS_S * 1000);
    process.stderr.write(
      `realnode: controller scaled to 0 → sidecar refusing ${refusedAfterMs} ms later (bound ${MAX_STALENESS_S} s)\n`,
    );

    await runOrThrow([
      'scale',
      'deployment',
      'agentfence-controller',
      '-n',
      system,
      `--replicas=${CONTROLLER_REPLICAS}`,
    ]);
    await eventually(
      async () => {
        const res = await viaProxy(pods.alpha ?? '', `http://${ips.allowed}:${HTTP_PORT}/`);
        return res.status === 200 ? res : undefined;
      },
      'the sidecar allowing again once the controller is back',
      180_000,
    );
  });
});

// Reported as skipped, with the reason in its name, only where the suite cannot run.
if (reason)
  describe('the fence on a real node (skipped)', () => it.skip(`skipped on this machine: ${reason}`, () => undefined));
