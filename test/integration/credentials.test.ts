/**
 * Credential brokering end to end on the real API server: a labelled Secret, an AgentPolicy whose rule names
 * it, the whole controller (reconciler, Secret informer, entitlement stream) and a sidecar in controller mode
 * with a real pod-bound token, in front of a local HTTPS upstream with its own CA (the rule's caBundle) that
 * records the headers it receives. The agent sends its own dummy key; the upstream sees the Secret's value.
 * Rotation, a redirect to another destination, a denied request, another agent's stream, deletion of the
 * Secret, a real SDK (the openai package, configured only through the environment the webhook renders) — and
 * at the end every output of the run is searched for the secret values.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { createServer as createHttpsServer, type Server } from 'node:https';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { createLogger } from '../../lib/log.ts';
import { createRegistry } from '../../lib/prom-text.ts';
import { createRegistry as createControllerRegistry } from '../../lib/metrics.ts';
import type { RunningOperator } from '../../operator/runtime.ts';
import { startLocalController } from '../../localcluster/controller.ts';
import type { AuditRecord } from '../../sidecar/audit.ts';
import { POD_CA_FILE } from '../../sidecar/pod-ca.ts';
import { startSidecar, type RunningSidecar } from '../../sidecar/runtime.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';
import { kubeRequest } from '../support/kube-request.ts';
import { injectedPod, serviceAccountToken } from '../support/identity-server.ts';
import { testPki, type TestPki } from '../support/tls-upstreams.ts';
import type { InjectorConfig } from '../../webhook/inject.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 120_000 });
const run = promisify(execFile);

/** Two values the test can search for; neither may show up anywhere but on the wire to the upstream. */
const SECRET_1 = `sk-first-${randomBytes(12).toString('hex')}`;
const SECRET_2 = `sk-second-${randomBytes(12).toString('hex')}`;

let client: KubeClient;
let operator: RunningOperator;
let controllerRegistry: ReturnType<typeof createControllerRegistry>;
let sidecar: RunningSidecar;
let bystander: RunningSidecar;
let ns: string;
let dir: string;
let pki: TestPki;
let llm: Recorder;
let other: Recorder;
/** What beforeAll started, stopped in reverse order (whatever got started before a failure). */
const cleanup: (() => unknown)[] = [];
/** Every line any component wrote, every audit record, every response body the agent got. */
const outputs: string[] = [];
const audits: AuditRecord[] = [];
/** What the hub streamed to each pod (the same events the HTTP stream writes). */
const streamed = new Map<string, string[]>();

interface Recorder {
  port: number;
  received: { path: string; authorization: string | undefined }[];
  close(): Promise<void>;
}

/**
 * An OpenAI-compatible HTTPS upstream that records the Authorization header of every request. `/redirect`
 * answers 302 to `location` (another destination).
 */
async function recorder(cert: { certPem: string; keyPem: string }, location?: () => string): Promise<Recorder> {
  const received: Recorder['received'] = [];
  const server: Server = createHttpsServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    received.push({ path: req.url ?? '', authorization: req.headers.authorization });
    req.resume();
    if (req.url === '/redirect' && location) {
      res.writeHead(302, { location: location(), 'content-length': 0 }).end();
      return;
    }
    const body = JSON.stringify({
      id: 'chatcmpl-1',
      object: 'chat.completion',
      created: 1,
      model: 'fake',
      choices: [{ index: 0, finish_reason: 'stop', message: { role: 'assistant', content: 'hello from upstream' } }],
    });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    received,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
}

/** HTTPS through the sidecar: CONNECT, TLS with the pod CA, one request. Status, Location and body. */
async function viaSidecar(
  proxy: RunningSidecar,
  port: number,
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; location: string | undefined; body: string }> {
  const raw = connect(Number(new URL(proxy.proxyUrl).port), '127.0.0.1');
  await once(raw, 'connect');
  raw.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n\r\n`);
  const [reply] = (await once(raw, 'data')) as [Buffer];
  if (!reply.toString().startsWith('HTTP/1.1 200')) {
    raw.destroy();
    return { status: Number(reply.toString().slice(9, 12)), location: undefined, body: reply.toString() };
  }
  const socket = tlsConnect({ socket: raw, host: '127.0.0.1', ca: proxy.podCA.caCertificates() });
  await once(socket, 'secureConnect');
  return new Promise((resolve, reject) => {
    // Plain HTTP over the TLS socket made above (the pod CA verified the sidecar's leaf for 127.0.0.1).
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        method: init.method ?? 'GET',
        headers: { ...init.headers, connection: 'close' },
        createConnection: () => socket,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          outputs.push(body, JSON.stringify(res.headers));
          resolve({ status: res.statusCode ?? 0, location: res.headers.location, body });
        });
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

const chat = (proxy: RunningSidecar, path = '/v1/chat/completions') =>
  viaSidecar(proxy, llm.port, path, {
    method: 'POST',
    headers: { authorization: 'Bearer brokered', 'content-type': 'application/json' },
    body: '{"model":"fake","messages":[]}',
  });

function policy(name: string, agent: string, rules: unknown[]): string {
  return JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name, namespace: ns },
    spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': agent } }, egress: rules },
  });
}

function secret(value: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 'llm-api', namespace: ns, labels: { 'agentfence.io/credential': 'true' } },
    stringData: { token: value },
  });
}

const capture = (line: string): void => void outputs.push(line);

async function agentSidecar(name: string, agent: string, injector: InjectorConfig) {
  const created = await kubeRequest(
    'POST',
    `/api/v1/namespaces/${ns}/pods`,
    injectedPod(ns, name, { agent, serviceAccount: agent, injector }),
  );
  const pod = created.body as { metadata: { name: string; uid: string } };
  await writeFile(join(dir, `${name}.token`), await serviceAccountToken(ns, agent, pod));
  // The hub's own stream for this pod, recorded: what any stream of it delivers.
  const events: string[] = [];
  streamed.set(name, events);
  operator.hub.subscribe(
    { namespace: ns, podName: name, podUID: pod.metadata.uid },
    { send: (_event, data) => (events.push(data), true), close: () => undefined },
  );
  const trust = join(dir, `${name}-trust`);
  const running = await startSidecar(
    {
      listen: { host: '127.0.0.1', port: 0 },
      adminListen: { host: '127.0.0.1', port: 0 },
      mode: {
        kind: 'controller',
        controllerUrl: issuerUrl,
        tokenFile: join(dir, `${name}.token`),
        caFile: join(dir, 'ca.crt'),
      },
      maxStalenessMs: 5000,
      pod: { name, namespace: ns },
      trustBundleDir: trust,
    },
    createLogger({ level: 'debug', write: capture }),
    {
      audit: {
        write: (r) => {
          audits.push(r);
          outputs.push(JSON.stringify(r));
        },
        dropped: () => 0,
        flush: () => undefined,
      },
      registry: createRegistry({ defaultMetrics: false }),
    },
  );
  await eventually(
    async () => ((await fetch(`${running.adminUrl}/readyz`)).status === 200 ? true : undefined),
    `${name} sidecar ready`,
    30_000,
  );
  return running;
}

let issuerUrl: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  cleanup.push(() => client.close());
  const system = await createNamespace('af-creds-system');
  ns = await createNamespace('creds');
  dir = await mkdtemp(join(tmpdir(), 'agentfence-creds-'));
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  controllerRegistry = createControllerRegistry({ defaultMetrics: false });
  const started = await startLocalController({
    client,
    namespace: system,
    podName: 'creds-0',
    heartbeatMs: 500,
    registry: controllerRegistry,
    logger: createLogger({ level: 'debug', write: capture }),
  });
  operator = started.operator;
  cleanup.push(() => operator.stop());
  issuerUrl = started.issuerUrl;
  await writeFile(join(dir, 'ca.crt'), started.caPem);

  pki = await testPki(['llm.test']);
  other = await recorder(pki.good);
  cleanup.push(() => other.close());
  llm = await recorder(pki.good, () => `https://127.0.0.1:${other.port}/landing`);
  cleanup.push(() => llm.close());

  await runOrThrow(['create', 'serviceaccount', 'researcher', '-n', ns]);
  await runOrThrow(['create', 'serviceaccount', 'bystander', '-n', ns]);
  await runOrThrow(['apply', '-f', '-'], secret(SECRET_1));
  await runOrThrow(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'upstream-ca', namespace: ns, labels: { 'agentfence.io/ca-bundle': 'true' } },
      data: { 'ca.crt': pki.ca.certPem },
    }),
  );
  await runOrThrow(
    ['apply', '-f', '-'],
    policy('researcher', 'researcher', [
      {
        name: 'llm',
        to: { cidrs: ['127.0.0.1/32'] },
        ports: [{ port: llm.port }],
        http: [{ methods: ['GET', 'POST'], paths: [{ value: '/v1/' }, { type: 'Exact', value: '/redirect' }] }],
        caBundle: { configMap: 'upstream-ca' },
        credentials: {
          secretRef: { name: 'llm-api', key: 'token' },
          header: 'Authorization',
          format: 'Bearer {value}',
        },
      },
      // Another destination, no credentials: where the redirect points.
      {
        name: 'other',
        to: { cidrs: ['127.0.0.1/32'] },
        ports: [{ port: other.port }],
        tls: 'Inspect',
        caBundle: { configMap: 'upstream-ca' },
      },
    ]),
  );
  // Another agent with a grant to the same upstream, without credentials.
  await runOrThrow(
    ['apply', '-f', '-'],
    policy('bystander', 'bystander', [
      {
        name: 'llm',
        to: { cidrs: ['127.0.0.1/32'] },
        ports: [{ port: llm.port }],
        tls: 'Inspect',
        caBundle: { configMap: 'upstream-ca' },
      },
    ]),
  );
  sidecar = await agentSidecar('researcher-0', 'researcher', started.injector);
  cleanup.push(() => sidecar.stop());
  bystander = await agentSidecar('bystander-0', 'bystander', started.injector);
  cleanup.push(() => bystander.stop());
});

afterAll(async () => {
  for (const stop of cleanup.reverse()) await stop();
});

describe('brokered credentials', () => {
  it('the upstream receives the Secret’s value in place of the agent’s own', async () => {
    const res = await eventually(async () => {
      const r = await chat(sidecar);
      return r.status === 200 ? r : undefined;
    }, 'an allowed request with the credential');
    expect(JSON.parse(res.body)).toMatchObject({ object: 'chat.completion' });
    expect(llm.received.at(-1)).toEqual({ path: '/v1/chat/completions', authorization: `Bearer ${SECRET_1}` });
    // The audit line names the credential, never the value.
    expect(audits.find((a) => a.path === '/v1/chat/completions' && a.decision === 'allow')).toMatchObject({
      credential: 'llm-api/token',
      tls: 'inspected',
      rule: 'llm',
    });
    // The entitlement names the Secret, key and a version; the value is not in it.
    const ae = await runOrThrow(['get', 'ae', 'researcher-0', '-n', ns, '-o', 'json']);
    outputs.push(ae);
    const rules = (JSON.parse(ae) as AgentEntitlement).spec.egress ?? [];
    expect(rules.find((r) => r.rule === 'llm')?.credentials).toEqual({
      secret: 'llm-api',
      key: 'token',
      header: 'authorization',
      format: 'Bearer {value}',
      version: expect.stringMatching(/^sha256:[0-9a-f]{32}$/) as unknown,
    });
    expect(ae).not.toContain(SECRET_1);
  });

  it('a real SDK (openai) with apiKey "brokered" reaches the upstream with the brokered key', async () => {
    const before = llm.received.length;
    const script = `
      import OpenAI from 'openai';
      const client = new OpenAI({ apiKey: 'brokered', baseURL: process.env.LLM_URL, maxRetries: 0 });
      const r = await client.chat.completions.create({ model: 'fake', messages: [{ role: 'user', content: 'hi' }] });
      process.stdout.write(r.choices[0].message.content);
    `;
    const { stdout, stderr } = await run(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('../..', import.meta.url).pathname,
      env: {
        PATH: process.env.PATH ?? '', // eslint-disable-line no-restricted-properties -- the child's PATH
        LLM_URL: `https://127.0.0.1:${llm.port}/v1`,
        // What the webhook renders into the app container (proxy and trust variables).
        HTTPS_PROXY: sidecar.proxyUrl,
        NODE_USE_ENV_PROXY: '1',
        NODE_EXTRA_CA_CERTS: join(dir, 'researcher-0-trust', POD_CA_FILE),
      },
    });
    outputs.push(stdout, stderr);
    expect(stdout).toBe('hello from upstream');
    const seen = llm.received.slice(before);
    expect(seen).toEqual([{ path: '/v1/chat/completions', authorization: `Bearer ${SECRET_1}` }]);
  });

  it('a redirect to another destination is returned to the agent, never followed with the credential', async () => {
    const beforeOther = other.received.length;
    const res = await viaSidecar(sidecar, llm.port, '/redirect', { headers: { authorization: 'Bearer brokered' } });
    expect(res.status).toBe(302);
    expect(res.location).toBe(`https://127.0.0.1:${other.port}/landing`);
    expect(other.received.length).toBe(beforeOther); // the sidecar did not follow it
    // The agent follows it itself: judged for that destination, whose rule has no credentials.
    const followed = await viaSidecar(sidecar, other.port, '/landing', {
      headers: { authorization: 'Bearer brokered' },
    });
    expect(followed.status).toBe(200);
    expect(other.received.slice(beforeOther)).toEqual([{ path: '/landing', authorization: 'Bearer brokered' }]);
  });

  it('a denied request carries no credential anywhere', async () => {
    const before = llm.received.length;
    const denied = await viaSidecar(sidecar, llm.port, '/admin', {
      method: 'POST',
      headers: { authorization: 'Bearer brokered' },
      body: '{}',
    });
    expect(denied.status).toBe(403);
    expect(denied.body).toContain('path_not_allowed');
    expect(llm.received.length).toBe(before);
    expect(denied.body).not.toContain(SECRET_1);
  });

  it('another agent’s sidecar never receives the value', async () => {
    // Positive control: the entitled pod's stream carried it.
    expect((streamed.get('researcher-0') ?? []).some((e) => e.includes(SECRET_1))).toBe(true);
    const theirs = streamed.get('bystander-0') ?? [];
    expect(theirs.length).toBeGreaterThan(0);
    expect(theirs.some((e) => e.includes(SECRET_1) || e.includes('"credentials":['))).toBe(false);
    // Its requests to the same upstream go with its own header.
    const before = llm.received.length;
    const res = await viaSidecar(bystander, llm.port, '/v1/models', { headers: { authorization: 'Bearer mine' } });
    expect(res.status).toBe(200);
    expect(llm.received.slice(before)).toEqual([{ path: '/v1/models', authorization: 'Bearer mine' }]);
  });

  it('a rotated Secret changes what the upstream receives', async () => {
    const before = llm.received.length;
    await runOrThrow(['apply', '-f', '-'], secret(SECRET_2));
    const started = Date.now();
    const statuses: number[] = [];
    await eventually(
      async () => {
        statuses.push((await chat(sidecar)).status);
        return llm.received.at(-1)?.authorization === `Bearer ${SECRET_2}` ? true : undefined;
      },
      'the rotated value on the wire',
      10_000,
    );
    console.log(`Secret rotation → new value on the wire after ${Date.now() - started} ms (bound: 1 s)`);
    // Every request during the switch went out, with the old value or the new one: none was refused, none went
    // without, and once the new value was on the wire the old one never came back.
    expect(statuses.every((st) => st === 200)).toBe(true);
    const seen = llm.received.slice(before).map((r) => r.authorization);
    expect(seen).toHaveLength(statuses.length);
    const firstNew = seen.indexOf(`Bearer ${SECRET_2}`);
    expect(seen.slice(0, firstNew).every((a) => a === `Bearer ${SECRET_1}`)).toBe(true);
    expect(seen.slice(firstNew).every((a) => a === `Bearer ${SECRET_2}`)).toBe(true);
  });

  it('without the Secret: credential_unavailable at the sidecar, CredentialUnavailable in the policy status', async () => {
    await runOrThrow(['delete', 'secret', 'llm-api', '-n', ns]);
    const before = llm.received.length;
    const refused = await eventually(async () => {
      const r = await chat(sidecar);
      return r.status === 503 ? r : undefined;
    }, 'refused once the Secret is gone');
    expect(JSON.parse(refused.body)).toMatchObject({ reason: 'credential_unavailable' });
    expect(refused.body).toContain('llm-api/token');
    // Nothing went out without the credential.
    expect(llm.received.slice(before).every((r) => r.authorization !== 'Bearer brokered')).toBe(true);
    const condition = await eventually(async () => {
      const ap = JSON.parse(await runOrThrow(['get', 'ap', 'researcher', '-n', ns, '-o', 'json'])) as {
        status?: { conditions?: { type: string; status: string; reason: string; message: string }[] };
      };
      const degraded = ap.status?.conditions?.find((c) => c.type === 'Degraded');
      return degraded?.reason === 'CredentialUnavailable' ? degraded : undefined;
    }, 'Degraded/CredentialUnavailable');
    expect(condition.status).toBe('True');
    expect(condition.message).toContain(`${ns}/llm-api`);
  });

  it('a Secret without the label: the status says so, and the sidecar still refuses', async () => {
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: 'llm-api', namespace: ns },
        stringData: { token: SECRET_2 },
      }),
    );
    // No watch event for an unlabelled Secret: the reconciler looks again while a named Secret is missing.
    const condition = await eventually(
      async () => {
        const ap = JSON.parse(await runOrThrow(['get', 'ap', 'researcher', '-n', ns, '-o', 'json'])) as {
          status?: { conditions?: { type: string; reason: string; message: string }[] };
        };
        const degraded = ap.status?.conditions?.find((c) => c.type === 'Degraded');
        return degraded?.message.includes('lacks the label agentfence.io/credential=true') ? degraded : undefined;
      },
      'Degraded naming the missing label',
      30_000,
    );
    expect(condition.reason).toBe('CredentialUnavailable');
    expect(condition.message).toContain(`${ns}/llm-api`);
    const refused = await chat(sidecar);
    expect(refused.status).toBe(503);
    expect(refused.body).toContain('credential_unavailable');
  });

  it('no output of the run contains a secret value', async () => {
    const status = await (await fetch(`${sidecar.adminUrl}/status`)).text();
    expect(status).toContain('researcher'); // the endpoint answered
    const all = [
      ...outputs,
      status,
      await (await fetch(`${sidecar.adminUrl}/metrics`)).text(),
      await (await fetch(`${bystander.adminUrl}/status`)).text(),
      await controllerRegistry.metrics(),
      await runOrThrow(['get', 'events', '-n', ns, '-o', 'json']),
      await runOrThrow(['get', 'ap,ae', '-n', ns, '-o', 'json']),
    ];
    expect(outputs.length).toBeGreaterThan(20); // logs, audit lines and bodies were captured
    for (const value of [SECRET_1, SECRET_2]) expect(all.filter((text) => text.includes(value))).toEqual([]);
  });
});
