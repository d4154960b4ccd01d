/**
 * The inbound gate end to end on the real API server: the controller (reconciler, webhook rendering, identity,
 * distribution), agent pods created through the API server as the webhook injects them, and two sidecars in
 * controller mode with real pod-bound tokens. Agent A → A's sidecar (egress check, token for B's SPIFFE ID,
 * dialled to B's gate) → B's sidecar (verifies A) → B's app, which sees `agentfence-caller`. Then every bad input
 * at B's gate: each refused with its status and reason, never reaching the app, each audited; and revocation.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { once } from 'node:events';
import { connect, type AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKeyPair, SignJWT, decodeProtectedHeader } from 'jose';
import { createHmac } from 'node:crypto';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { createRegistry } from '../../lib/prom-text.ts';
import { silentLogger } from '../../lib/log.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import { startLocalController, type LocalController } from '../../localcluster/controller.ts';
import { startSidecar, type RunningSidecar } from '../../sidecar/runtime.ts';
import type { AuditRecord } from '../../sidecar/audit.ts';
import { inject } from '../../webhook/inject.ts';
import type { Pod } from '../../lib/kube/pod.ts';
import { gatesOfPod } from '../../lib/inbound/gates.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';
import { kubeRequest } from '../support/kube-request.ts';
import { injectedPod, serviceAccountToken } from '../support/identity-server.ts';
import { startOidcIssuer, type TestOidcIssuer } from '../support/oidc-issuer.ts';

let client: KubeClient;
let started: LocalController;
let ns: string;
let dir: string;
let oidc: TestOidcIssuer;
let stranger: TestOidcIssuer;
let app: Server;
let appPort: number;
const seen: { path: string; headers: IncomingHttpHeaders; body: string }[] = [];
const audits: AuditRecord[] = [];
const sidecars: RunningSidecar[] = [];
let sidecarA: RunningSidecar;
let gateB: { host: string; port: number };
const octet = 10 + Math.floor(Math.random() * 200);
const IP_B = `127.0.0.${octet}`;
const IP_C = `127.0.0.${octet + 1}`;
const spiffe = (agent: string): string => `spiffe://cluster.local/ns/${ns}/agent/${agent}`;

function podWithPort(name: string, agent: string, port: number): Pod {
  const pod: Pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent } },
    spec: {
      serviceAccountName: agent,
      containers: [{ name: 'app', image: 'registry.example/agent:1', ports: [{ name: 'http', containerPort: port }] }],
    },
  };
  const out = inject(pod, started.injector);
  if (!out.allowed) throw new Error(out.message);
  out.pod.spec.automountServiceAccountToken = false;
  return out.pod;
}

async function createPod(pod: Pod, ip?: string): Promise<{ metadata: { name: string; uid: string } }> {
  await runOrThrow(['create', 'serviceaccount', pod.spec.serviceAccountName ?? 'default', '-n', ns]).catch(
    () => undefined,
  );
  const res = await kubeRequest('POST', `/api/v1/namespaces/${ns}/pods`, pod);
  if (res.status !== 201) throw new Error(`create pod: ${res.status} ${JSON.stringify(res.body)}`);
  const created = res.body as { metadata: { name: string; uid: string } };
  if (ip) {
    const patched = await kubeRequest('PATCH', `/api/v1/namespaces/${ns}/pods/${created.metadata.name}/status`, {
      status: { podIP: ip, podIPs: [{ ip }] },
    });
    if (patched.status !== 200) throw new Error(`pod status: ${patched.status}`);
  }
  return created;
}

async function startAgentSidecar(
  pod: { metadata: { name: string; uid: string } },
  sa: string,
  inbound?: { host: string; gates: { gate: number; port: number }[] },
): Promise<RunningSidecar> {
  const podDir = await mkdtemp(join(dir, `${pod.metadata.name}-`));
  await writeFile(join(podDir, 'token'), await serviceAccountToken(ns, sa, pod));
  await writeFile(join(podDir, 'ca.crt'), started.caPem);
  const sidecar = await startSidecar(
    {
      listen: { host: '127.0.0.1', port: 0 },
      adminListen: { host: '127.0.0.1', port: 0 },
      mode: {
        kind: 'controller',
        controllerUrl: started.issuerUrl,
        tokenFile: join(podDir, 'token'),
        caFile: join(podDir, 'ca.crt'),
      },
      ...(inbound ? { inbound } : {}),
      maxStalenessMs: 5000,
      pod: { name: pod.metadata.name, namespace: ns },
    },
    silentLogger,
    {
      audit: { write: (r) => audits.push(r), dropped: () => 0, flush: () => undefined },
      registry: createRegistry({ defaultMetrics: false }),
      userFetch: oidc.fetch,
    },
  );
  sidecars.push(sidecar);
  return sidecar;
}

/** A raw request: through a proxy (absolute form) or straight to a gate (origin form). */
function send(
  to: { host: string; port: number },
  target: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; headers: string; body: string }> {
  const method = options.method ?? 'GET';
  const hostHeader = target.startsWith('http://') ? new URL(target).host : `${to.host}:${to.port}`;
  const extra = Object.entries(options.headers ?? {})
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  const body = options.body ?? '';
  return new Promise((resolve, reject) => {
    const s = connect(to.port, to.host, () =>
      s.write(
        `${method} ${target} HTTP/1.1\r\nhost: ${hostHeader}\r\n${extra}${body ? `content-length: ${Buffer.byteLength(body)}\r\n` : ''}connection: close\r\n\r\n${body}`,
      ),
    );
    let out = '';
    s.on('data', (c: Buffer) => (out += c.toString()));
    s.on('end', () => {
      const split = out.indexOf('\r\n\r\n');
      resolve({
        status: Number(/^HTTP\/1\.1 (\d{3})/.exec(out)?.[1] ?? 0),
        headers: out.slice(0, split),
        body: out.slice(split + 4),
      });
    });
    s.on('error', reject);
  });
}

const proxyOf = (s: RunningSidecar) => ({ host: '127.0.0.1', port: Number(new URL(s.proxyUrl).port) });

/** The controller's token exchange, as a sidecar does it: SA token → identity → a token for `audience`. */
async function agentToken(pod: { metadata: { name: string; uid: string } }, sa: string, audience: string) {
  const f = fetchWithCA(started.caPem);
  const post = async (path: string, bearer: string, body: unknown) => {
    const res = await f(`${started.issuerUrl}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: res.status, json: (await res.json()) as { token?: string } };
  };
  // A new pod's entitlement is compiled a moment after it is created (until then: 503 entitlement_pending).
  const saToken = await serviceAccountToken(ns, sa, pod);
  const identity = await eventually(
    async () => (await post('/v1/identity', saToken, {})).json.token,
    `identity of ${pod.metadata.name}`,
  );
  return eventually(async () => (await post('/v1/token', identity, { audience })).json.token, `token for ${audience}`);
}

function policies(withCaller: boolean): string {
  const callee = {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: 'callee', namespace: ns },
    spec: {
      agentSelector: { matchLabels: { 'agentfence.io/agent': 'callee' } },
      ingress: [
        {
          name: 'support-users',
          from: {
            users: { issuer: oidc.issuer, audiences: ['agents-api'], claims: [{ name: 'groups', value: 'support' }] },
          },
          ports: [{ port: appPort }],
          http: [{ methods: ['GET', 'POST'] }],
          maxBodyBytes: 64,
          rateLimit: { requests: 3, per: '1m' },
          identityHeaders: ['x-user-id'],
        },
      ],
    },
  };
  const caller = {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name: 'caller', namespace: ns },
    spec: {
      agentSelector: { matchLabels: { 'agentfence.io/agent': 'caller' } },
      egress: [
        {
          name: 'to-callee',
          to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'callee' } } } },
          ports: [{ port: appPort }],
        },
        {
          name: 'to-other',
          to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'other' } } } },
          ports: [{ port: appPort }],
        },
      ],
    },
  };
  return [callee, ...(withCaller ? [caller] : [])].map((d) => JSON.stringify(d)).join('\n');
}

let callerPod: { metadata: { name: string; uid: string } };

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = await createNamespace('af-inbound-system');
  ns = await createNamespace('inbound');
  dir = await mkdtemp(join(tmpdir(), 'agentfence-inbound-'));
  oidc = await startOidcIssuer();
  stranger = await startOidcIssuer();
  started = await startLocalController({ client, namespace: system, podName: 'inbound-0', heartbeatMs: 500 });
  app = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ path: req.url ?? '', headers: req.headers, body });
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          caller: req.headers['agentfence-caller'] ?? null,
          user: req.headers['agentfence-user'] ?? null,
        }),
      );
    });
  });
  app.listen(0, '127.0.0.1');
  await once(app, 'listening');
  appPort = (app.address() as AddressInfo).port;

  for (const doc of policies(true).split('\n')) await runOrThrow(['apply', '-f', '-'], doc);
  callerPod = await createPod(
    injectedPod(ns, 'caller-0', { agent: 'caller', serviceAccount: 'caller', injector: started.injector }),
  );
  const calleeSpec = podWithPort('callee-0', 'callee', appPort);
  const gates = gatesOfPod(calleeSpec.spec);
  expect(gates).toEqual([{ gate: 15006, port: appPort }]);
  const calleePod = await createPod(calleeSpec, IP_B);
  await createPod(podWithPort('other-0', 'other', appPort), IP_C);

  sidecarA = await startAgentSidecar(callerPod, 'caller');
  const sidecarB = await startAgentSidecar(calleePod, 'callee', { host: IP_B, gates });
  gateB = { host: IP_B, port: sidecarB.gatePorts[0] ?? 0 };
  for (const s of [sidecarA, sidecarB]) {
    await eventually(
      async () => ((await fetch(`${s.adminUrl}/readyz`)).status === 200 ? true : undefined),
      'sidecar ready',
      30_000,
    );
  }
}, 120_000);

afterAll(async () => {
  for (const s of sidecars) await s.stop();
  await started.operator.stop();
  app.closeAllConnections();
  app.close();
  await oidc.close();
  await stranger.close();
  client.close();
  await rm(dir, { recursive: true, force: true });
});

/** Runs `call` and checks that the app saw nothing and the gate audited the refusal with `reason`. */
async function refusedAtGate(
  call: () => Promise<{ status: number; headers: string; body: string }>,
  status: number,
  reasons: string[],
): Promise<{ status: number; headers: string; body: string }> {
  const before = seen.length;
  const auditsBefore = audits.length;
  const res = await call();
  expect(res.status, res.body).toBe(status);
  const body = JSON.parse(res.body) as { reason: string; missing: string };
  expect(reasons).toContain(body.reason);
  expect(body.missing.length).toBeGreaterThan(10);
  expect(seen.length).toBe(before);
  await eventually(
    () =>
      audits
        .slice(auditsBefore)
        .find((a) => a.direction === 'inbound' && a.reason === body.reason && a.decision === 'deny')
        ? true
        : undefined,
    `inbound audit line for ${body.reason}`,
  );
  return res;
}

describe('agent to agent through both sidecars', () => {
  it("A's call reaches B's app through B's gate, which sets the verified caller; a forged caller is replaced", async () => {
    const url = `http://${IP_B}:${appPort}/v1/hello`;
    const res = await eventually(async () => {
      const r = await send(proxyOf(sidecarA), url);
      return r.status === 200 ? r : undefined;
    }, 'A → B allowed');
    expect(JSON.parse(res.body)).toEqual({ caller: spiffe('caller'), user: null });
    const forged = await send(proxyOf(sidecarA), url, {
      headers: {
        'agentfence-caller': spiffe('admin'),
        'agentfence-identity': 'forged',
        'agentfence-user': 'root',
        'x-user-id': 'admin', // named by the callee's policy as identity-bearing
        'x-trace-id': 't-1', // an ordinary header: passes
      },
    });
    expect(forged.status).toBe(200);
    const last = seen.at(-1);
    expect(last?.headers['agentfence-caller']).toBe(spiffe('caller'));
    expect(last?.headers['agentfence-user']).toBeUndefined();
    expect(last?.headers['agentfence-identity']).toBeUndefined();
    expect(last?.headers['x-user-id']).toBeUndefined();
    expect(last?.headers['x-trace-id']).toBe('t-1');
    expect(audits.find((a) => a.direction === 'inbound' && a.decision === 'allow')).toMatchObject({
      agent: spiffe('callee'),
      caller: spiffe('caller'),
      port: appPort,
      path: '/v1/hello',
      rule: 'to-callee',
      policy: 'caller',
      status: 200,
    });
  });

  it('strips identity headers in every spelling an app stack folds onto them: underscores, case, duplicates', async () => {
    const token = await agentToken(callerPod, 'caller', spiffe('callee'));
    const before = seen.length;
    const res = await send(gateB, '/v1/variants', {
      headers: {
        'agentfence-identity': token,
        agentfence_caller: spiffe('admin'),
        AgentFence_Caller: spiffe('root'), // a second line of the same underscore name
        'AGENTFENCE-CALLER': spiffe('admin'), // the real name, in capitals
        Agentfence_User: 'root',
        'agentfence_user-issuer': 'https://idp.evil',
        agentfence_identity: 'forged',
        x_user_id: 'admin', // named by the callee's policy as x-user-id
        'X-User_Id': 'root',
        X_USER_ID: 'admin',
        x_trace_id: 't-2', // an ordinary header with underscores: passes
      },
    });
    expect(res.status, res.body).toBe(200);
    expect(seen.length).toBe(before + 1);
    const headers = seen.at(-1)?.headers ?? {};
    const identity = new Set(['agentfence-caller', 'agentfence-user', 'agentfence-user-issuer', 'agentfence-identity']);
    const claimed = Object.keys(headers).filter((k) => {
      const folded = k.replaceAll('_', '-');
      return identity.has(folded) || folded === 'x-user-id';
    });
    expect(claimed).toEqual(['agentfence-caller']);
    expect(headers['agentfence-caller']).toBe(spiffe('caller'));
    expect(headers.x_trace_id).toBe('t-2');
  });

  it('refuses a WebSocket upgrade to another agent at the caller’s sidecar, with the reason, audited', async () => {
    const before = seen.length;
    const auditsBefore = audits.length;
    const { host, port } = proxyOf(sidecarA);
    const raw = await new Promise<string>((resolve, reject) => {
      const s = connect(port, host, () =>
        s.write(
          `GET http://${IP_B}:${appPort}/v1/ws HTTP/1.1\r\nhost: ${IP_B}:${appPort}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
        ),
      );
      let out = '';
      s.on('data', (c: Buffer) => (out += c.toString()));
      s.on('end', () => resolve(out));
      s.on('close', () => resolve(out));
      s.on('error', reject);
    });
    expect(Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1])).toBe(501);
    const body = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as { reason: string };
    expect(body.reason).toBe('upgrade_to_agent_not_supported');
    expect(seen.length).toBe(before);
    await eventually(
      () =>
        audits
          .slice(auditsBefore)
          .find((a) => a.direction !== 'inbound' && a.reason === 'upgrade_to_agent_not_supported')
          ? true
          : undefined,
      'egress audit line for the refused upgrade',
    );
  });

  it('refuses callers without a valid agent token, whatever headers they send', async () => {
    await refusedAtGate(() => send(gateB, '/v1/hello'), 401, ['missing_credential']);
    const res = await refusedAtGate(
      () => send(gateB, '/v1/hello', { headers: { 'agentfence-caller': spiffe('caller'), 'x-user-id': 'admin' } }),
      401,
      ['missing_credential'],
    );
    expect(res.headers).toMatch(/www-authenticate: Bearer/i);
    // A token minted for agent C, replayed at B.
    const forC = await agentToken(callerPod, 'caller', spiffe('other'));
    await refusedAtGate(() => send(gateB, '/', { headers: { 'agentfence-identity': forC } }), 401, ['wrong_audience']);
    // A real token for B, its header swapped to alg none (signature dropped).
    const forB = await agentToken(callerPod, 'caller', spiffe('callee'));
    const [, payload] = forB.split('.');
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${payload}.`;
    await refusedAtGate(() => send(gateB, '/', { headers: { 'agentfence-identity': none } }), 401, [
      'algorithm_not_allowed',
      'malformed_token',
    ]);
    // HS256 keyed with the controller's public key (the classic key-confusion forgery).
    const jwks = (await (await fetchWithCA(started.caPem)(`${started.issuerUrl}/.well-known/jwks.json`)).json()) as {
      keys: Record<string, unknown>[];
    };
    const kid = decodeProtectedHeader(forB).kid ?? '';
    const head = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid })).toString('base64url');
    const mac = createHmac('sha256', JSON.stringify(jwks.keys[0])).update(`${head}.${payload}`).digest('base64url');
    await refusedAtGate(
      () => send(gateB, '/', { headers: { 'agentfence-identity': `${head}.${payload}.${mac}` } }),
      401,
      ['algorithm_not_allowed'],
    );
    // Our own key under an unknown kid: the gate refetches the JWKS, finds no such key, refuses.
    const { privateKey } = await generateKeyPair('ES256');
    const claims = JSON.parse(Buffer.from(payload ?? '', 'base64url').toString()) as Record<string, unknown>;
    const unknownKid = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid: 'not-ours', typ: 'JWT' })
      .sign(privateKey);
    await refusedAtGate(() => send(gateB, '/', { headers: { 'agentfence-identity': unknownKid } }), 401, [
      'unknown_key',
    ]);
    // The same forged token under the controller's real kid: the signature does not verify.
    const realKid = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid, typ: 'JWT' }).sign(privateKey);
    await refusedAtGate(() => send(gateB, '/', { headers: { 'agentfence-identity': realKid } }), 401, [
      'bad_signature',
    ]);
    // And the real token still works straight at the gate (the refusals above were about the tokens).
    const ok = await send(gateB, '/direct', { headers: { 'agentfence-identity': forB } });
    expect(ok.status).toBe(200);
    expect(seen.at(-1)?.headers['agentfence-caller']).toBe(spiffe('caller'));
  });

  it("refuses the token of a deleted pod once the callee's grant drops it", async () => {
    const second = await createPod(
      injectedPod(ns, 'caller-1', { agent: 'caller', serviceAccount: 'caller', injector: started.injector }),
    );
    const token = await agentToken(second, 'caller', spiffe('callee'));
    await eventually(
      async () =>
        (await send(gateB, '/from-1', { headers: { 'agentfence-identity': token } })).status === 200 ? true : undefined,
      'caller-1 admitted while it lives',
    );
    const deletedAt = performance.now();
    await runOrThrow(['delete', 'pod', 'caller-1', '-n', ns, '--wait=false']);
    await eventually(
      async () =>
        (await send(gateB, '/from-1', { headers: { 'agentfence-identity': token } })).status === 403 ? true : undefined,
      'caller-1 refused after deletion',
    );
    console.log(`pod deleted → its token refused at the gate after ${Math.round(performance.now() - deletedAt)} ms`);
    await refusedAtGate(() => send(gateB, '/from-1', { headers: { 'agentfence-identity': token } }), 403, [
      'caller_pod_not_live',
    ]);
  });
});

describe('people and client apps (from.users)', () => {
  it('admits a verified user of the listed issuer with the required claim, and sets agentfence-user', async () => {
    const token = await oidc.sign({ sub: 'alice', aud: 'agents-api', groups: ['support', 'staff'] });
    const res = await send(gateB, '/tickets', {
      headers: { authorization: `Bearer ${token}`, 'agentfence-user': 'root' },
    });
    expect(res.status, res.body).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ caller: null, user: 'alice' });
    expect(seen.at(-1)?.headers['agentfence-user-issuer']).toBe(oidc.issuer);
    expect(seen.at(-1)?.headers.authorization).toBeUndefined();
  });

  it('refuses an unlisted issuer, a missing claim, a wrong audience, an expired token, an oversized body, a burst', async () => {
    const foreign = await stranger.sign({ sub: 'alice', aud: 'agents-api', groups: ['support'] });
    await refusedAtGate(() => send(gateB, '/', { headers: { authorization: `Bearer ${foreign}` } }), 401, [
      'issuer_not_accepted',
    ]);
    // Same issuer URL in iss, another issuer's key: the signature fails against the listed issuer's JWKS.
    const impostor = await stranger.sign({ iss: oidc.issuer, sub: 'alice', aud: 'agents-api', groups: ['support'] });
    await refusedAtGate(() => send(gateB, '/', { headers: { authorization: `Bearer ${impostor}` } }), 401, [
      'unknown_key',
      'bad_signature',
    ]);
    const noClaim = await oidc.sign({ sub: 'carol', aud: 'agents-api', groups: ['sales'] });
    await refusedAtGate(() => send(gateB, '/', { headers: { authorization: `Bearer ${noClaim}` } }), 403, [
      'missing_claim',
    ]);
    const otherAud = await oidc.sign({ sub: 'carol', aud: 'billing', groups: ['support'] });
    await refusedAtGate(() => send(gateB, '/', { headers: { authorization: `Bearer ${otherAud}` } }), 403, [
      'user_not_allowed',
    ]);
    const expired = await oidc.sign(
      { sub: 'dave', aud: 'agents-api', groups: ['support'] },
      { expiresIn: Math.floor(Date.now() / 1000) - 120 },
    );
    await refusedAtGate(() => send(gateB, '/', { headers: { authorization: `Bearer ${expired}` } }), 401, ['expired']);
    const erin = await oidc.sign({ sub: 'erin', aud: 'agents-api', groups: ['support'] });
    await refusedAtGate(
      () =>
        send(gateB, '/upload', { method: 'POST', headers: { authorization: `Bearer ${erin}` }, body: 'x'.repeat(65) }),
      413,
      ['body_too_large'],
    );
    const small = await send(gateB, '/upload', {
      method: 'POST',
      headers: { authorization: `Bearer ${erin}` },
      body: 'x'.repeat(64),
    });
    expect(small.status).toBe(200);
    expect(seen.at(-1)?.body).toBe('x'.repeat(64));
    // A method outside the rule's http profile.
    await refusedAtGate(
      () => send(gateB, '/', { method: 'DELETE', headers: { authorization: `Bearer ${erin}` } }),
      403,
      ['method_not_allowed'],
    );
    // Burst: 3 per minute per user; frank's fourth is refused with Retry-After, and the app saw only three.
    const frank = await oidc.sign({ sub: 'frank', aud: 'agents-api', groups: ['support'] });
    const before = seen.length;
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++)
      statuses.push((await send(gateB, '/', { headers: { authorization: `Bearer ${frank}` } })).status);
    expect(statuses).toEqual([200, 200, 200]);
    const limited = await refusedAtGate(
      () => send(gateB, '/', { headers: { authorization: `Bearer ${frank}` } }),
      429,
      ['rate_limited'],
    );
    expect(limited.headers).toMatch(/retry-after: \d+/i);
    expect(seen.length).toBe(before + 3);
    // Another user has a budget of their own.
    const grace = await oidc.sign({ sub: 'grace', aud: 'agents-api', groups: ['support'] });
    expect((await send(gateB, '/', { headers: { authorization: `Bearer ${grace}` } })).status).toBe(200);
  });
});

describe('Services', () => {
  it('a Service targeting the app port by number puts a condition on the policy naming it and the fix', async () => {
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'callee-by-number', namespace: ns },
        spec: { selector: { 'agentfence.io/agent': 'callee' }, ports: [{ port: 80, targetPort: appPort }] },
      }),
    );
    const condition = await eventually(async () => {
      const ap = JSON.parse(await runOrThrow(['get', 'ap', 'callee', '-n', ns, '-o', 'json'])) as {
        status?: { conditions?: { type: string; status: string; reason: string; message: string }[] };
      };
      const degraded = ap.status?.conditions?.find((c) => c.type === 'Degraded');
      return degraded?.reason === 'ServiceBypassesGate' ? degraded : undefined;
    }, 'Degraded: ServiceBypassesGate');
    expect(condition.status).toBe('True');
    expect(condition.message).toContain(`Service ${ns}/callee-by-number targets the app port`);
    expect(condition.message).toContain("set the Service's targetPort to that name");
  });
});

describe('revocation', () => {
  it("removing A's grant is enforced at both sidecars on the next request", async () => {
    const forB = await agentToken(callerPod, 'caller', spiffe('callee'));
    expect((await send(gateB, '/', { headers: { 'agentfence-identity': forB } })).status).toBe(200);
    const t0 = Date.now();
    await runOrThrow(['delete', 'agentpolicy', 'caller', '-n', ns]);
    await eventually(
      async () =>
        (await send(gateB, '/', { headers: { 'agentfence-identity': forB } })).status === 403 ? true : undefined,
      "B's gate refuses A",
      10_000,
    );
    const gateMs = Date.now() - t0;
    await eventually(
      async () => ((await send(proxyOf(sidecarA), `http://${IP_B}:${appPort}/`)).status === 403 ? true : undefined),
      "A's sidecar refuses the call",
      10_000,
    );
    const egressMs = Date.now() - t0;
    console.log(`grant deleted → refused at B's gate after ${gateMs} ms, at A's sidecar after ${egressMs} ms`);
    await refusedAtGate(() => send(gateB, '/', { headers: { 'agentfence-identity': forB } }), 403, [
      'caller_not_allowed',
    ]);
  });
});
