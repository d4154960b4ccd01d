// Admission latency and throughput: our injection handler beside a no-op AdmissionReview handler, on the same
// express + HTTPS stack, in one run. Target (PERFORMANCE.md): our p99 <= 2x the no-op p99.
import { once } from 'node:events';
import { Agent, createServer, request } from 'node:https';
import type { AddressInfo } from 'node:net';
import express, { type Router } from 'express';
import { createAdmissionRouter } from '../webhook/admission.ts';
import { createRegistry } from '../lib/metrics.ts';
import { silentLogger } from '../lib/log.ts';
import { createCertificateAuthority, issueCertificate } from '../lib/tls/pki.ts';

const ca = await createCertificateAuthority('bench', 1);
const cert = await issueCertificate(ca, {
  commonName: 'b',
  ipAddresses: ['127.0.0.1'],
  usage: 'server',
  validityDays: 1,
});
const noop: Router = express.Router();
noop.use(express.json({ limit: '4mb' }));
noop.post('/', (req, res) => {
  const uid = (req.body as { request: { uid: string } }).request.uid;
  res.json({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid, allowed: true } });
});
const ours = createAdmissionRouter({
  config: {
    version: 'bench',
    image: 'ghcr.io/agentfence/agentfence:0.1.0',
    controllerUrl: 'https://agentfence-controller.agentfence-system.svc',
    logLevel: 'info',
    maxStaleness: '60s',
    resources: { cpuRequest: '50m', memoryRequest: '48Mi', memoryLimit: '128Mi' },
  },
  logger: silentLogger,
  registry: createRegistry({ defaultMetrics: false }),
});

// A realistic pod: three containers with env, volumes, probes — a few KB, like a typical Deployment's pod.
const pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    generateName: 'support-agent-',
    namespace: 'support',
    labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'support-agent', app: 'support' },
  },
  spec: {
    serviceAccountName: 'support-agent',
    containers: ['agent', 'tools', 'metrics'].map((name) => ({
      name,
      image: `registry.example/${name}:1.2.3`,
      env: Array.from({ length: 10 }, (_, i) => ({ name: `VAR_${i}`, value: `value-${i}` })),
      resources: { requests: { cpu: '100m', memory: '128Mi' } },
      readinessProbe: { httpGet: { path: '/ready', port: 8080 } },
      volumeMounts: [{ name: 'data', mountPath: '/data' }],
    })),
    volumes: [{ name: 'data', emptyDir: {} }],
  },
};
const body = (uid: number): string =>
  JSON.stringify({
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: { uid: `u-${uid}`, kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', object: pod },
  });

async function serve(router: Router): Promise<{ port: number; close: () => void }> {
  const app = express();
  app.use('/mutate-pods', router);
  const server = createServer({ cert: cert.certPem, key: cert.keyPem }, app);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, close: () => server.close() };
}

async function measure(
  port: number,
  requests: number,
  concurrency: number,
): Promise<{ p50: number; p99: number; rps: number }> {
  const agent = new Agent({ keepAlive: true, ca: ca.certPem, maxSockets: concurrency });
  const latencies: number[] = [];
  let next = 0;
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const payload = body(next++);
      const start = performance.now();
      const req = request(
        {
          host: '127.0.0.1',
          port,
          path: '/mutate-pods',
          method: 'POST',
          agent,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        },
        (res) => {
          res.resume();
          res.on('end', () => {
            latencies.push(performance.now() - start);
            resolve();
          });
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < requests) await one();
    }),
  );
  const elapsed = performance.now() - started;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const q = (p: number): number => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0;
  return { p50: q(0.5), p99: q(0.99), rps: (latencies.length / elapsed) * 1000 };
}

const results: Record<string, { c1: Awaited<ReturnType<typeof measure>>; c16: Awaited<ReturnType<typeof measure>> }> =
  {};
for (const [name, router] of [
  ['no-op handler', noop],
  ['agentfence injector', ours],
] as const) {
  const s = await serve(router);
  await measure(s.port, 500, 4); // warm up (TLS sessions, JIT)
  results[name] = { c1: await measure(s.port, 3000, 1), c16: await measure(s.port, 6000, 16) };
  s.close();
}
const base = results['no-op handler'];
const mine = results['agentfence injector'];
if (!base || !mine) throw new Error('missing results');
const f = (n: number): string => n.toFixed(3);
console.log('| handler (HTTPS + express, same stack) | p50 ms (1 conn) | p99 ms (1 conn) | req/s (16 conns) |');
console.log('|---|---|---|---|');
console.log(`| no-op AdmissionReview | ${f(base.c1.p50)} | ${f(base.c1.p99)} | ${Math.round(base.c16.rps)} |`);
console.log(`| agentfence injector | ${f(mine.c1.p50)} | ${f(mine.c1.p99)} | ${Math.round(mine.c16.rps)} |`);
console.log(
  `| ratio (ours / no-op) | ${(mine.c1.p50 / base.c1.p50).toFixed(2)}x | ${(mine.c1.p99 / base.c1.p99).toFixed(2)}x (target <= 2x) | ${(mine.c16.rps / base.c16.rps).toFixed(2)}x |`,
);
