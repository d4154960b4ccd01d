/**
 * Agent pods with real sidecars for integration tests: a pod created through the API server (looking injected),
 * a real pod-bound service-account token on disk, and the sidecar process logic (sidecar/runtime.ts) in controller
 * mode against a controller URL; plus an upstream that answers 200 to everything, and a helper that sends a
 * request through a sidecar's proxy.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger, type Logger } from '../../lib/log.ts';
import { createRegistry } from '../../lib/prom-text.ts';
import { startSidecar, type RunningSidecar } from '../../sidecar/runtime.ts';
import { runOrThrow } from './cluster.ts';
import { kubeRequest } from './kube-request.ts';
import { injectedPod, serviceAccountToken, type CreatedPod } from './identity-server.ts';

/**
 * An agent pod created through the API server as the webhook would have injected it (rendered with TEST_INJECTOR,
 * which the test controllers' token exchange expects).
 */
export async function createInjectedPod(ns: string, name: string, agent: string, sa = 'agent'): Promise<CreatedPod> {
  await runOrThrow(['create', 'serviceaccount', sa, '-n', ns]).catch(() => undefined); // may exist already
  const res = await kubeRequest(
    'POST',
    `/api/v1/namespaces/${ns}/pods`,
    injectedPod(ns, name, { agent, serviceAccount: sa }),
  );
  if (res.status !== 201) throw new Error(`creating pod ${ns}/${name}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body as CreatedPod;
}

export interface TestSidecar {
  sidecar: RunningSidecar;
  /** GET through the sidecar's proxy: status and body. */
  get(url: string): Promise<{ status: number; body: string }>;
  status(): Promise<Record<string, unknown>>;
  ready(): Promise<boolean>;
  metric(name: string): Promise<number>;
  stop(): Promise<void>;
}

export async function startTestSidecar(options: {
  ns: string;
  pod: CreatedPod;
  sa?: string;
  controllerUrl: string;
  caPem: string;
  maxStalenessMs: number;
  logger?: Logger;
}): Promise<TestSidecar> {
  const dir = await mkdtemp(join(tmpdir(), 'agentfence-sidecar-'));
  await writeFile(join(dir, 'token'), await serviceAccountToken(options.ns, options.sa ?? 'agent', options.pod));
  await writeFile(join(dir, 'ca.crt'), options.caPem);
  const registry = createRegistry({ defaultMetrics: false });
  const sidecar = await startSidecar(
    {
      listen: { host: '127.0.0.1', port: 0 },
      adminListen: { host: '127.0.0.1', port: 0 },
      mode: {
        kind: 'controller',
        controllerUrl: options.controllerUrl,
        tokenFile: join(dir, 'token'),
        caFile: join(dir, 'ca.crt'),
      },
      maxStalenessMs: options.maxStalenessMs,
      pod: { name: options.pod.metadata.name, namespace: options.ns },
    },
    options.logger ?? silentLogger,
    { audit: { write: () => undefined, dropped: () => 0, flush: () => undefined }, registry },
  );
  const proxyPort = Number(new URL(sidecar.proxyUrl).port);
  return {
    sidecar,
    get: (url) => proxyGet(proxyPort, url),
    async status() {
      return (await (await fetch(`${sidecar.adminUrl}/status`)).json()) as Record<string, unknown>;
    },
    async ready() {
      return (await fetch(`${sidecar.adminUrl}/readyz`)).status === 200;
    },
    async metric(name) {
      const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
      let sum = 0;
      for (const line of text.split('\n')) {
        if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.split(' ').at(-1));
      }
      return sum;
    },
    async stop() {
      await sidecar.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function proxyGet(proxyPort: number, url: string): Promise<{ status: number; body: string }> {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(proxyPort, '127.0.0.1', () =>
      s.write(`GET ${url} HTTP/1.1\r\nhost: ${target.host}\r\nconnection: close\r\n\r\n`),
    );
    let out = '';
    s.on('data', (c: Buffer) => (out += c.toString()));
    s.on('end', () =>
      resolve({
        status: Number(/^HTTP\/1\.1 (\d{3})/.exec(out)?.[1] ?? 0),
        body: out.slice(out.indexOf('\r\n\r\n') + 4),
      }),
    );
    s.on('error', reject);
  });
}

/** An upstream on loopback that answers 200 with the path to every request. */
export async function startUpstream(): Promise<{ port: number; url: string; close(): void }> {
  const server: Server = createServer((req, res) => res.end(JSON.stringify({ path: req.url })));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** The "worker" agents' AgentPolicy: one rule to 127.0.0.1 on `port` (revoke it with a port nothing listens on). */
export function workerPolicy(ns: string, port: number): string {
  return JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: 'worker', namespace: ns },
    spec: {
      agentSelector: { matchLabels: { 'agentfence.io/agent': 'worker' } },
      egress: [{ name: 'up', to: { cidrs: ['127.0.0.1/32'] }, ports: [{ port }] }],
    },
  });
}
