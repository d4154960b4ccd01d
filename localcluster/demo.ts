/**
 * `npm run demo`: the whole of Agentfence on the built-in local control plane, narrated.
 * Real parts throughout: kube-apiserver calls the webhook over TLS, the controller compiles real AgentPolicies,
 * sidecars exchange real pod-bound tokens and proxy real HTTP to upstream servers on loopback. By default the
 * kubelet is missing, so the agent pods are admitted (and injected) but never run: their sidecars run here
 * instead. With a node (`demo --node`, root) the same narration runs the agents as real pods: the kubelet runs
 * the injected sidecar container, the agent calls go through it from the app container, and the upstreams
 * listen on the node's address (localcluster/demo-node.ts).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest, createServer, type Server } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { stringify } from 'yaml';
import { clientFromKubeconfig } from '../lib/kube/client.ts';
import { createRegistry } from '../lib/prom-text.ts';
import { silentLogger, type Logger } from '../lib/log.ts';
import { sleep } from '../lib/sleep.ts';
import { createAgentVerifier } from '../lib/verify/index.ts';
import { agentOf, requireAgent } from '../lib/verify/express.ts';
import { fetchWithCA } from '../lib/verify/fetch-with-ca.ts';
import {
  entitlementIntegrityBinding,
  entitlementIntegrityPolicy,
  mutatingWebhookConfiguration,
  podIntegrityBinding,
  podIntegrityPolicy,
} from '../webhook/manifests.ts';
import { startSidecar, type RunningSidecar } from '../sidecar/runtime.ts';
import type { AuditRecord } from '../sidecar/audit.ts';
import type { Binaries } from './binaries.ts';
import { LOCAL_ADMIN_USER, startControlPlane } from './controlplane.ts';
import { NODE_NETWORK, startNode, type NodeBinaries } from './node.ts';
import { DEMO_IMAGE, nodeAgents } from './demo-node.ts';
import { buildProjectImage } from './image.ts';
import { localInjectorConfig, startLocalController } from './controller.ts';
import { installCRDs, kubectlOrThrow } from './kubectl.ts';
import { CONTROLLER } from '../operator/defaults.ts';
import { LABEL_CA_BUNDLE, LABEL_CREDENTIAL } from '../lib/api/constants.ts';
import { createHash, randomBytes } from 'node:crypto';
import { createCertificateAuthority, issueCertificate } from '../lib/tls/pki.ts';
import { gatesOfPod, type Gate } from '../lib/inbound/gates.ts';

export interface DemoOptions {
  binaries: Binaries;
  /** Run the agents as real pods on a local node (root only): its binaries. */
  nodeBinaries?: NodeBinaries;
  kubeconfigPath?: string;
  /**
   * Resolves when the user wants to stop (Ctrl-C); the demo then tears everything down. Absent (--once): tear
   * down right after the narration.
   */
  until?: Promise<unknown>;
  out: (line: string) => void;
  logger: Logger;
}

const NS = 'demo';

export interface AgentResponse {
  status: number;
  body: string;
}

/** One running agent, as the narration drives it: its HTTP client (through its sidecar) and its sidecar's status. */
export interface DemoAgent {
  call(method: string, url: string, body?: string, headers?: Record<string, string>): Promise<AgentResponse>;
  /** The pod's address (another agent calls it there; its inbound gates listen there). */
  podIP(): Promise<string>;
  /** An HTTPS call through the sidecar (CONNECT, then TLS trusting the bundle the webhook mounts). */
  callHttps(method: string, url: string, init?: HttpsInit): Promise<AgentResponse>;
  /** Resolves once the sidecar is ready: its identity and entitlement revision. */
  ready(): Promise<{ agent: string; revision: string }>;
}

/** Headers and body of an agent's HTTPS call. */
export interface HttpsInit {
  headers?: Record<string, string>;
  body?: string;
}

/** Where the agents run: sidecars in this process (default), or real pods on a node. */
export interface AgentRunner {
  /** The address the agents reach the upstreams at (they listen there; the policies allow it). */
  host: string;
  /** The agent pod's container, before injection; `appPort`: the agent serves other agents there (a named port). */
  container(agent: string, appPort?: number): object;
  /** Starts the app an agent serves on (echoes the verified caller its sidecar names) and returns its port. */
  serveApp(cleanup: (() => Promise<void> | void)[]): Promise<number>;
  /** A caller off the fence, from the host: no sidecar, no token. */
  call(method: string, url: string, body?: string, headers?: Record<string, string>): Promise<AgentResponse>;
  /** Whatever the agent namespace needs before pods are created there. */
  prepareNamespace?(): Promise<void>;
  /** The admitted (injected) pod's running agent. */
  attach(pod: AdmittedPod, agent: string): Promise<DemoAgent>;
  /** Audit records so far, oldest first. */
  audits(): Promise<AuditRecord[]>;
}

export interface AdmittedPod {
  metadata: { name: string; uid: string; labels: Record<string, string> };
  spec: { initContainers?: { name: string; args?: unknown }[] };
}

/** The app research-agent serves to other agents: it trusts the caller its sidecar's gate names. */
export function researchAnswer(caller: string | string[] | undefined): string {
  return JSON.stringify({ answer: 'three sources found', caller: caller ?? null });
}

async function listen(server: Server, host: string, cleanup: (() => Promise<void> | void)[]): Promise<number> {
  server.listen(0, host);
  await once(server, 'listening');
  cleanup.push(() => {
    server.close();
    server.closeAllConnections();
  });
  return (server.address() as AddressInfo).port;
}

/** An agent's HTTP call, as its HTTP client sends it with HTTP_PROXY pointing at its sidecar. */
export function call(
  sidecar: RunningSidecar | undefined,
  method: string,
  url: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    // Through the agent's sidecar (absolute form), or — without one — straight to the URL (a caller off the fence).
    const target = new URL(url);
    const via = sidecar ? new URL(sidecar.proxyUrl) : target;
    const req = httpRequest(
      {
        host: via.hostname,
        port: via.port,
        method,
        path: sidecar ? url : target.pathname,
        headers: { host: target.host, ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    // A connection the NetworkPolicies drop never answers: a caller off the fence gives up and says so.
    req.setTimeout(5000, () => {
      req.destroy();
      resolve({ status: 0, body: 'no answer (dropped)' });
    });
    req.end(body);
  });
}

/**
 * An agent's HTTPS call, as its HTTP client makes it with HTTPS_PROXY and SSL_CERT_FILE from the webhook: a
 * CONNECT to the sidecar, then TLS trusting the bundle the sidecar wrote (public roots + the pod CA).
 */
async function callHttps(
  sidecar: RunningSidecar,
  bundleFile: string,
  method: string,
  url: string,
  init: HttpsInit = {},
): Promise<{ status: number; body: string }> {
  const target = new URL(url);
  const proxy = new URL(sidecar.proxyUrl);
  const raw = netConnect(Number(proxy.port), proxy.hostname);
  await once(raw, 'connect');
  raw.write(`CONNECT ${target.host} HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`);
  const [head] = (await once(raw, 'data')) as [Buffer];
  if (!head.toString('latin1').startsWith('HTTP/1.1 200')) {
    raw.destroy();
    return {
      status: Number(head.toString('latin1').slice(9, 12)),
      body: head.toString('utf8').split('\r\n\r\n')[1] ?? '',
    };
  }
  const socket = tlsConnect({ socket: raw, host: target.hostname, ca: await readFile(bundleFile, 'utf8') });
  await once(socket, 'secureConnect');
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: target.hostname,
        port: target.port,
        method,
        path: target.pathname,
        headers: init.headers,
        createConnection: () => socket,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          socket.destroy();
          resolve({ status: res.statusCode ?? 0, body: text });
        });
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

/**
 * What the demo prints of a received header that should carry the Secret's key: whether it is the expected value,
 * a short SHA-256 prefix and its length — never any of its characters (a prefix of a key is a part of the key).
 */
const fingerprint = (received: string | undefined, expected: string): string => {
  if (received === undefined) return 'no Authorization header';
  const digest = createHash('sha256').update(received).digest('hex').slice(0, 8);
  const verdict = received === expected ? "matches the Secret's key" : "does NOT match the Secret's key";
  return `an Authorization header that ${verdict} (sha256 ${digest}…), ${received.length} chars`;
};

/** The default runner: each agent pod is admitted but never runs; its sidecar runs here with a real token. */
function inProcessAgents(ctx: {
  k: (args: string[], input?: string) => Promise<string>;
  dir: string;
  issuerUrl: string;
  cleanup: (() => Promise<void> | void)[];
}): AgentRunner {
  const audits: AuditRecord[] = [];
  return {
    host: '127.0.0.1',
    container: (agent, appPort) => ({
      name: 'agent',
      image: `registry.example/${agent}:1`,
      ...(appPort ? { ports: [{ name: 'http', containerPort: appPort }] } : {}),
    }),
    serveApp: (cleanup) =>
      listen(
        createServer((req, res) => {
          req.resume();
          res.setHeader('content-type', 'application/json');
          res.end(researchAnswer(req.headers['agentfence-caller']));
        }),
        '127.0.0.1',
        cleanup,
      ),
    call: (method, url, body, headers) => call(undefined, method, url, body, headers),
    attach: async (pod, agent) => {
      // The pod never runs here, so a loopback address stands in for its pod IP where it serves other agents.
      const gates = gatesOfPod(pod.spec);
      const podIP = `127.77.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
      if (gates.length > 0) {
        await ctx.k([
          'patch',
          'pod',
          pod.metadata.name,
          '-n',
          NS,
          '--subresource=status',
          '--type=merge',
          '-p',
          JSON.stringify({ status: { podIP, podIPs: [{ ip: podIP }] } }),
        ]);
      }
      const token = JSON.parse(
        await ctx.k([
          'create',
          'token',
          agent,
          '-n',
          NS,
          '--audience=agentfence.io/operator',
          `--bound-object-kind=Pod`,
          `--bound-object-name=${pod.metadata.name}`,
          `--bound-object-uid=${pod.metadata.uid}`,
          '--duration=10m',
          '-o',
          'json',
        ]),
      ) as { status: { token: string } };
      const tokenFile = join(ctx.dir, `${agent}.token`);
      await writeFile(tokenFile, token.status.token);
      const sidecar = await startSidecar(
        {
          listen: { host: '127.0.0.1', port: 0 },
          adminListen: { host: '127.0.0.1', port: 0 },
          mode: { kind: 'controller', controllerUrl: ctx.issuerUrl, tokenFile, caFile: join(ctx.dir, 'ca.crt') },
          maxStalenessMs: 60_000,
          ...(gates.length > 0 ? { inbound: { host: podIP, gates } } : {}),
          pod: { name: pod.metadata.name, namespace: NS },
          // The in-memory volume the webhook mounts read-only into the agent's containers.
          trustBundleDir: join(ctx.dir, `${agent}-trust`),
        },
        silentLogger,
        {
          audit: { write: (r) => audits.push(r), dropped: () => 0, flush: () => undefined },
          registry: createRegistry({ defaultMetrics: false }),
        },
      );
      ctx.cleanup.push(() => sidecar.stop());
      return {
        call: (method, url, body, headers) => call(sidecar, method, url, body, headers),
        podIP: () => Promise.resolve(podIP),
        callHttps: (method, url, init) =>
          callHttps(sidecar, join(ctx.dir, `${agent}-trust`, 'ca-bundle.pem'), method, url, init),
        ready: async () => {
          for (let i = 0; i < 300 && (await fetch(`${sidecar.adminUrl}/readyz`)).status !== 200; i++) await sleep(100);
          return (await (await fetch(`${sidecar.adminUrl}/status`)).json()) as { agent: string; revision: string };
        },
      };
    },
    audits: () => Promise.resolve(audits),
  };
}

export async function runDemo(options: DemoOptions): Promise<void> {
  const { out } = options;
  const cleanup: (() => Promise<void> | void)[] = [];
  const started = Date.now();
  try {
    const onNode = options.nodeBinaries;
    out(
      onNode
        ? '▶ starting the local control plane and a real node (containerd, kubelet, kube-proxy, kube-router, CoreDNS)…'
        : '▶ starting the local control plane (etcd, kube-apiserver, kube-controller-manager)…',
    );
    const plane = await startControlPlane({
      binaries: options.binaries,
      logger: options.logger,
      ...(options.kubeconfigPath ? { kubeconfigPath: options.kubeconfigPath } : {}),
      ...(onNode ? { node: NODE_NETWORK } : {}),
    });
    cleanup.push(() => plane.stop());
    const node = onNode ? await startNode({ plane, binaries: onNode, logger: options.logger }) : undefined;
    if (node) {
      cleanup.push(() => node.stop());
      await buildProjectImage(node, DEMO_IMAGE);
      out(`✔ node ${node.name} ready at ${node.ip}; project image ${DEMO_IMAGE} built and imported`);
    }
    await installCRDs(plane);
    const k = (args: string[], input?: string): Promise<string> => kubectlOrThrow(plane, args, input);
    const client = await clientFromKubeconfig(plane.kubeconfigPath);
    cleanup.push(() => client.close());
    const dir = await mkdtemp(join(tmpdir(), 'agentfence-demo-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));

    // The controller: reconciler, webhook, identity issuer and entitlement distribution, on one TLS port.
    await k(['create', 'namespace', CONTROLLER.namespace]);
    // On a node the pods reach it (and the upstreams) at the node's address; the sidecar it injects is the image.
    const { operator, issuerUrl, caPem } = await startLocalController({
      client,
      namespace: CONTROLLER.namespace,
      podName: `${CONTROLLER.serviceName}-0`,
      heartbeatMs: 5000,
      logger: options.logger,
      ...(node ? { host: node.ip } : {}),
      injector: (controllerUrl) => ({
        ...localInjectorConfig(controllerUrl, 'demo'),
        ...(node ? { image: DEMO_IMAGE } : {}),
      }),
    });
    const ca = { certPem: caPem };
    await writeFile(join(dir, 'ca.crt'), caPem);
    cleanup.push(() => operator.stop());
    const caBundle = Buffer.from(ca.certPem).toString('base64');
    const exclude = ['kube-system', 'kube-public', 'kube-node-lease', CONTROLLER.namespace];
    await k(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify(
        mutatingWebhookConfiguration({
          clientConfig: { url: `${issuerUrl}/mutate-pods` },
          caBundle,
          excludeNamespaces: exclude,
        }),
      ),
    );
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify(podIntegrityPolicy()));
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify(podIntegrityBinding({ excludeNamespaces: exclude })));
    // The demo's controller runs with the admin credentials, as does this control plane's garbage collector.
    await k(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify(entitlementIntegrityPolicy({ controller: LOCAL_ADMIN_USER })),
    );
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify(entitlementIntegrityBinding()));
    out(`✔ controller up at ${issuerUrl} (webhook, identity, entitlements); webhook and admission policy registered`);
    const runner = node
      ? nodeAgents({ k, namespace: NS, controllerUrl: issuerUrl, host: node.ip })
      : inProcessAgents({ k, dir, issuerUrl, cleanup });
    const host = runner.host;
    const base = `http://${host}`;

    // Upstreams an agent might talk to.
    const verifier = createAgentVerifier({
      issuer: issuerUrl,
      audience: 'orders-api',
      trustDomain: 'cluster.local',
      fetch: fetchWithCA(ca.certPem),
    });
    const ordersApp = express();
    ordersApp.get(
      '/v1/orders/:id',
      requireAgent(verifier, { allowAgents: [`spiffe://cluster.local/ns/${NS}/agent/support-agent`] }),
      (req, res) => {
        res.json({ order: req.params.id, status: 'shipped', verifiedCaller: agentOf(res).sub });
      },
    );
    const ordersPort = await listen(createServer(ordersApp), host, cleanup);
    const llmPort = await listen(
      createServer((_req, res) =>
        res.end(JSON.stringify({ choices: [{ message: { content: 'Here is a summary.' } }] })),
      ),
      host,
      cleanup,
    );
    const docsPort = await listen(
      createServer((req, res) => res.end(`docs page ${req.url ?? ''}\n`)),
      host,
      cleanup,
    );
    // An HTTPS API with its own CA (an internal service): the policy names that CA in a labelled ConfigMap.
    const issuesCa = await createCertificateAuthority('demo issues-api CA', 1);
    // The LLM API key: it lives in a Secret; the research agent never gets it.
    const llmKey = `sk-demo-${randomBytes(16).toString('hex')}`;
    const issuesCert = await issueCertificate(issuesCa, {
      commonName: host,
      ipAddresses: [host],
      usage: 'server',
      validityDays: 1,
    });
    const issuesPort = await listen(
      createHttpsServer({ cert: issuesCert.certPem, key: issuesCert.keyPem }, (req, res) => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ path: req.url, issues: [{ id: 7, title: 'TLS inspection' }] }));
      }),
      host,
      cleanup,
    );
    // An HTTPS LLM-like API that needs an API key (same internal CA): it answers with the Authorization it got.
    let llmAuthorization: string | undefined;
    const llmsPort = await listen(
      createHttpsServer({ cert: issuesCert.certPem, key: issuesCert.keyPem }, (req, res) => {
        llmAuthorization = req.headers.authorization;
        req.resume();
        const ok = llmAuthorization === `Bearer ${llmKey}`;
        res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify(ok ? { choices: [{ message: { content: 'Summary, paid for.' } }] } : { error: 'bad key' }),
        );
      }),
      host,
      cleanup,
    );
    out(
      `✔ upstreams: orders API :${ordersPort} (verifies agent tokens), LLM-like API :${llmPort}, docs site :${docsPort}, HTTPS issues API :${issuesPort} (own CA), HTTPS LLM API :${llmsPort} (needs a key)`,
    );
    // research-agent's own app: it serves research to other agents and trusts the caller its sidecar names.
    const researchPort = await runner.serveApp(cleanup);

    // Policies and agents.
    await k(['create', 'namespace', NS]);
    await runner.prepareNamespace?.();
    await k(['create', 'serviceaccount', 'support-agent', '-n', NS]);
    await k(['create', 'serviceaccount', 'research-agent', '-n', NS]);
    await k(
      ['apply', '-f', '-'],
      stringify({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'issues-api-ca', namespace: NS, labels: { [LABEL_CA_BUNDLE]: 'true' } },
        data: { 'ca.crt': issuesCa.certPem },
      }),
    );
    await k(
      ['apply', '-f', '-'],
      stringify({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: 'llm-api-key', namespace: NS, labels: { [LABEL_CREDENTIAL]: 'true' } },
        stringData: { token: llmKey },
      }),
    );
    const supportPolicy = (withOrders: boolean): string =>
      stringify({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        metadata: { name: 'support-agent', namespace: NS },
        spec: {
          agentSelector: { matchLabels: { 'agentfence.io/agent': 'support-agent' } },
          egress: [
            ...(withOrders
              ? [
                  {
                    name: 'orders-api',
                    to: { cidrs: [`${host}/32`] },
                    ports: [{ port: ordersPort }],
                    http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] }],
                    audience: 'orders-api',
                  },
                ]
              : []),
            {
              // Another agent: the sidecar attaches a token for research-agent's SPIFFE ID and dials its gate.
              name: 'research-agent',
              to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'research-agent' } } } },
              ports: [{ port: researchPort }],
              http: [{ methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/research' }] }],
            },
          ],
        },
      });
    const researchPolicy = stringify({
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentPolicy',
      metadata: { name: 'research-agent', namespace: NS },
      spec: {
        agentSelector: { matchLabels: { 'agentfence.io/agent': 'research-agent' } },
        egress: [
          {
            name: 'llm-api',
            to: { cidrs: [`${host}/32`] },
            ports: [{ port: llmPort }],
            http: [{ methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/chat/completions' }] }],
          },
          {
            name: 'docs-site',
            to: { cidrs: [`${host}/32`] },
            ports: [{ port: docsPort }],
            http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/docs/' }] }],
          },
          {
            // HTTPS with a path rule: the sidecar inspects it with the pod CA, and verifies the API's own CA.
            name: 'issues-api',
            to: { cidrs: [`${host}/32`] },
            ports: [{ port: issuesPort }],
            http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/repos/agentfence/' }] }],
            caBundle: { configMap: 'issues-api-ca' },
          },
          {
            // The key is added by the sidecar on the wire, from the labelled Secret.
            name: 'llm-https',
            to: { cidrs: [`${host}/32`] },
            ports: [{ port: llmsPort }],
            http: [{ methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/chat/completions' }] }],
            caBundle: { configMap: 'issues-api-ca' },
            credentials: {
              secretRef: { name: 'llm-api-key', key: 'token' },
              header: 'Authorization',
              format: 'Bearer {value}',
            },
          },
        ],
      },
    });
    await k(['apply', '-f', '-'], supportPolicy(true));
    await k(['apply', '-f', '-'], researchPolicy);
    out(
      '✔ AgentPolicies applied: support-agent → orders API (GET /v1/orders/*) + research-agent (POST /v1/research); research-agent → LLM (POST) + docs (GET /docs/*) + HTTPS issues API (GET /repos/agentfence/*) + HTTPS LLM API (key brokered from Secret llm-api-key)',
    );

    const agents = new Map<string, DemoAgent>();
    let researchGates: Gate[] = [];
    for (const agent of ['support-agent', 'research-agent']) {
      const pod = JSON.parse(
        await k(
          ['create', '-o', 'json', '-f', '-'],
          stringify({
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name: `${agent}-0`, namespace: NS, labels: { 'agentfence.io/inject': 'true' } },
            spec: {
              serviceAccountName: agent,
              // research-agent serves other agents on a named port: the webhook puts its sidecar's gate in front.
              containers: [runner.container(agent, agent === 'research-agent' ? researchPort : undefined)],
            },
          }),
        ),
      ) as AdmittedPod;
      const gates = gatesOfPod(pod.spec);
      if (agent === 'research-agent') researchGates = gates;
      out(
        `✔ pod ${NS}/${pod.metadata.name} created through the API server → injected: ${(pod.spec.initContainers ?? []).map((c) => c.name).join(', ')}, agent label ${pod.metadata.labels['agentfence.io/agent'] ?? '?'}${gates.length > 0 ? `, inbound gate ${gates.map((g) => `:${g.gate} → app :${g.port}`).join(', ')}` : ''}`,
      );
      agents.set(agent, await runner.attach(pod, agent));
    }
    for (const [agent, running] of agents) {
      const status = await running.ready();
      out(`✔ sidecar of ${agent} ready: identity ${status.agent}, entitlements ${status.revision.slice(0, 19)}…`);
    }
    const support = agents.get('support-agent');
    const research = agents.get('research-agent');
    if (!support || !research) throw new Error('agents missing');

    const show = async (
      who: string,
      agent: DemoAgent | undefined,
      method: string,
      url: string,
      body?: string,
      headers?: Record<string, string>,
    ): Promise<number> => {
      const res = await (agent ?? runner).call(method, url, body, headers);
      let detail = res.body.trim();
      try {
        const json = JSON.parse(detail) as Record<string, unknown>;
        detail = res.status >= 400 ? `${String(json.reason)}: ${String(json.missing)}` : JSON.stringify(json);
      } catch {
        /* plain text */
      }
      out(`  ${who.padEnd(15)} ${method.padEnd(4)} ${url.replace(`${base}:`, ':')} → ${res.status} ${detail}`);
      return res.status;
    };
    out('');
    out('▶ agents making calls through their sidecars:');
    await show('support-agent', support, 'GET', `${base}:${ordersPort}/v1/orders/42`);
    await show('support-agent', support, 'POST', `${base}:${ordersPort}/v1/orders/42`, '{}');
    await show('support-agent', support, 'POST', `${base}:${llmPort}/v1/chat/completions`, '{}');
    await show('research-agent', research, 'POST', `${base}:${llmPort}/v1/chat/completions`, '{"messages":[]}');
    await show('research-agent', research, 'GET', `${base}:${docsPort}/docs/intro`);
    await show('research-agent', research, 'GET', `${base}:${ordersPort}/v1/orders/42`);

    out('');
    out('▶ HTTPS through the same fence: the sidecar terminates TLS with its pod CA (trusted through the bundle the');
    out('  webhook mounts), judges each request, and verifies the upstream against the policy’s caBundle:');
    for (const path of ['/repos/agentfence/issues', '/admin/users']) {
      const url = `https://${host}:${issuesPort}${path}`;
      const res = await research.callHttps('GET', url);
      let detail = res.body.trim();
      try {
        const json = JSON.parse(detail) as Record<string, unknown>;
        detail = res.status === 403 ? `${String(json.reason)}: ${String(json.missing)}` : JSON.stringify(json);
      } catch {
        /* plain text */
      }
      out(`  ${'research-agent'.padEnd(15)} GET  ${url.replace(`//${host}:`, '//:')} → ${res.status} ${detail}`);
    }

    out('');
    out('▶ agent to agent: support-agent → its sidecar → research-agent’s gate (verifies the caller) → research app:');
    const researchIP = await research.podIP();
    const researchUrl = `http://${researchIP}:${researchPort}/v1/research`;
    for (let i = 0; i < 100 && (await support.call('POST', researchUrl, '{}')).status !== 200; i++) await sleep(100);
    await show('support-agent', support, 'POST', researchUrl, '{"q":"refund policy"}', {
      'agentfence-caller': `spiffe://cluster.local/ns/${NS}/agent/admin`,
    });
    const gatePort = researchGates[0]?.gate ?? 0;
    out(`  a caller off the fence, claiming to be support-agent, straight to the gate :${gatePort}:`);
    await show('forged caller', undefined, 'POST', `http://${researchIP}:${gatePort}/v1/research`, '{}', {
      'agentfence-caller': `spiffe://cluster.local/ns/${NS}/agent/support-agent`,
    });

    out('');
    out('▶ credentials the agent never sees: research-agent calls the HTTPS LLM API with a dummy key');
    out('  (Authorization: Bearer brokered); its sidecar replaces it with the Secret llm-api-key on the wire:');
    {
      const url = `https://${host}:${llmsPort}/v1/chat/completions`;
      const res = await research.callHttps('POST', url, {
        headers: { authorization: 'Bearer brokered', 'content-type': 'application/json' },
        body: '{"messages":[]}',
      });
      out(
        `  ${'research-agent'.padEnd(15)} POST ${url.replace(`//${host}:`, '//:')} → ${res.status} ${res.body.trim()}`,
      );
      out(`  the LLM API received ${fingerprint(llmAuthorization, `Bearer ${llmKey}`)}, not the agent's dummy`);
    }

    out('');
    out(`▶ kubectl get agentpolicies,agententitlements,networkpolicies -n ${NS}`);
    await sleep(500);
    for (const line of (await k(['get', 'agentpolicies,agententitlements,networkpolicies', '-n', NS]))
      .trimEnd()
      .split('\n'))
      out(`  ${line}`);

    out('');
    out('▶ audit lines (one JSON object per decision on each sidecar’s stdout; three shown):');
    for (const a of (await runner.audits()).slice(0, 3)) {
      out(
        `  ${JSON.stringify({ agent: a.agent, method: a.method, host: a.host, port: a.port, path: a.path, decision: a.decision, reason: a.reason, rule: a.rule, status: a.status })}`,
      );
    }

    out('');
    out('▶ narrowing support-agent live: kubectl apply the policy without the orders-api rule');
    const t0 = Date.now();
    await k(['apply', '-f', '-'], supportPolicy(false));
    let status = 200;
    while (status !== 403 && Date.now() - t0 < 15_000) {
      // Revocation closes idle keep-alive connections; a request racing that close is simply retried.
      status = await support.call('GET', `${base}:${ordersPort}/v1/orders/42`).then(
        (r) => r.status,
        () => 0,
      );
    }
    out(
      `  enforced ${Date.now() - t0} ms after kubectl apply (including kubectl itself${node ? ' and a kubectl exec per attempt' : ''}):`,
    );
    await show('support-agent', support, 'GET', `${base}:${ordersPort}/v1/orders/42`);

    out('');
    const took = `Done in ${((Date.now() - started) / 1000).toFixed(1)} s.`;
    if (!options.until) {
      out(`${took} Stopping the control plane and removing every process and file.`);
      return;
    }
    out(`${took} The cluster keeps running: kubectl --kubeconfig ${plane.kubeconfigPath} get ap,ae,netpol -A`);
    out(`  kubectl: ${options.binaries.kubectl}`);
    out('Press Ctrl-C to stop; everything is removed on exit.');
    await options.until;
  } finally {
    for (const fn of cleanup.reverse()) {
      try {
        await fn();
      } catch {
        // keep tearing down
      }
    }
  }
}
