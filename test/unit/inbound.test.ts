/**
 * The inbound gate's pure pieces: the decision (401 without a valid credential, 403 with one but no grant, the
 * http profile, live pods only), the per-caller rate limiter, the `--inbound` format, the webhook's gate
 * assignment (names move, probes follow, idempotent), and what the compiler makes of gates (L3 opens gates only,
 * callers resolved to SPIFFE IDs and live pod uids, peers with the callee's identity, a Service targeting an
 * app port by number reported).
 */
import { createHmac } from 'node:crypto';
import { Writable } from 'node:stream';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createUserVerifier } from '../../lib/verify/user-token.ts';
import { describe, expect, it } from 'vitest';
import { createAuditSink, type AuditRecord } from '../../sidecar/audit.ts';
import type { AgentEntitlement, EntitlementIngressRule } from '../../lib/api/types.generated.ts';
import { formatGates, gatesOfPod, injectedBeforeGates, parseGates } from '../../lib/inbound/gates.ts';
import { compile } from '../../operator/compiler/index.ts';
import type { PodInput } from '../../operator/compiler/types.ts';
import { InboundPolicy, RateLimiter, claimHolds, parseWindow, type Caller } from '../../sidecar/inbound-policy.ts';
import { inject, type Pod } from '../../webhook/inject.ts';
import { NOW, backendPod, namespace, policy, service } from '../support/compiler-fixtures.ts';
import { TEST_INJECTOR } from '../support/identity-server.ts';

const A = 'spiffe://cluster.local/ns/team/agent/a';
const C = 'spiffe://cluster.local/ns/team/agent/c';
const ISSUER = 'https://idp.example';

function entitlement(ingress: EntitlementIngressRule[]): AgentEntitlement {
  return {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: 'b-0', namespace: 'team' },
    spec: {
      podName: 'b-0',
      podUID: 'u-b',
      agent: 'b',
      spiffeID: 'spiffe://cluster.local/ns/team/agent/b',
      revision: 'r1',
      ingress,
    },
  };
}

const rules: EntitlementIngressRule[] = [
  {
    policy: 'a',
    rule: 'to-b',
    mode: 'Enforce',
    ports: [{ port: 8080, protocol: 'TCP' }],
    agents: [{ spiffeID: A, pods: ['u-a0'] }],
    http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/' }] }],
  },
  {
    policy: 'b',
    rule: 'support',
    mode: 'Enforce',
    ports: [{ port: 8080, protocol: 'TCP' }],
    users: { issuer: ISSUER, audiences: ['agents'], claims: [{ name: 'groups', value: 'support' }] },
  },
  { policy: 'b', rule: 'lan', mode: 'Enforce', ports: [{ port: 9090, protocol: 'TCP' }], cidrs: ['10.0.0.0/8'] },
  {
    policy: 'b',
    rule: 'old',
    mode: 'Enforce',
    ports: [{ port: 7070, protocol: 'TCP' }],
    agents: [{ spiffeID: A, pods: ['u-a0'] }],
    expiresAt: '2026-01-01T00:00:00Z',
  },
];
const policyB = new InboundPolicy(entitlement(rules));
const at = (appPort: number, path = '/v1/x', method = 'GET', source = '192.168.1.1') => ({
  appPort,
  method,
  path,
  source,
  now: Date.parse('2026-06-01T00:00:00Z'),
});
const agent = (spiffeID: string, podUID = 'u-a0'): Caller => ({ kind: 'agent', spiffeID, podUID });
const user = (claims: Record<string, unknown>, audiences = ['agents']): Caller => ({
  kind: 'user',
  issuer: ISSUER,
  sub: 'alice',
  audiences,
  claims,
});

describe('the gate decision', () => {
  it('admits a granted agent on the rule’s port, method and path', () => {
    expect(policyB.decide(at(8080), agent(A))).toMatchObject({ allow: true, rule: { rule: 'to-b' } });
  });
  it('answers 401 without a credential, or with an invalid one', () => {
    expect(policyB.decide(at(8080), { kind: 'none' })).toMatchObject({
      allow: false,
      status: 401,
      reason: 'missing_credential',
    });
    expect(policyB.decide(at(8080), { kind: 'invalid', reason: 'expired', detail: 'x' })).toMatchObject({
      status: 401,
      reason: 'expired',
    });
    expect(
      policyB.decide(at(8080), { kind: 'none', reason: 'issuer_not_accepted', detail: 'the issuer is not listed' }),
    ).toMatchObject({ status: 401, reason: 'issuer_not_accepted' });
  });
  it('answers 403 to a verified caller without a grant, a deleted pod, a method or path outside the profile', () => {
    expect(policyB.decide(at(8080), agent(C))).toMatchObject({ status: 403, reason: 'caller_not_allowed' });
    expect(policyB.decide(at(8080), agent(A, 'u-gone'))).toMatchObject({ status: 403, reason: 'caller_pod_not_live' });
    expect(policyB.decide(at(8080, '/v1/x', 'POST'), agent(A))).toMatchObject({
      status: 403,
      reason: 'method_not_allowed',
    });
    expect(policyB.decide(at(8080, '/admin'), agent(A))).toMatchObject({ status: 403, reason: 'path_not_allowed' });
    // Another port: the grant is for 8080 only; an expired grant opens nothing.
    expect(policyB.decide(at(9999), agent(A))).toMatchObject({ status: 403, reason: 'caller_not_allowed' });
    expect(policyB.decide(at(7070), agent(A))).toMatchObject({ status: 403, reason: 'caller_not_allowed' });
  });
  it('admits users with the required claim and audience, and says which claim is missing', () => {
    expect(policyB.decide(at(8080), user({ groups: ['staff', 'support'] }))).toMatchObject({ allow: true });
    expect(policyB.decide(at(8080), user({ groups: 'support' }))).toMatchObject({ allow: true });
    expect(policyB.decide(at(8080), user({ groups: ['sales'] }))).toMatchObject({
      status: 403,
      reason: 'missing_claim',
      missing: expect.stringContaining('groups=support') as unknown,
    });
    expect(policyB.decide(at(8080), user({ groups: ['support'] }, ['billing']))).toMatchObject({
      status: 403,
      reason: 'user_not_allowed',
    });
  });
  it('admits by source address only where a rule lists the range', () => {
    expect(policyB.decide(at(9090, '/', 'GET', '10.1.2.3'), { kind: 'none' })).toMatchObject({ allow: true });
    expect(policyB.decide(at(9090, '/', 'GET', '::ffff:10.1.2.3'), { kind: 'none' })).toMatchObject({ allow: true });
    expect(policyB.decide(at(9090, '/', 'GET', '11.1.2.3'), { kind: 'none' })).toMatchObject({ status: 401 });
    expect(policyB.decide(at(8080, '/', 'GET', '10.1.2.3'), { kind: 'none' })).toMatchObject({ status: 401 });
  });
  it('without rules nothing is admitted (deny by default)', () => {
    const empty = new InboundPolicy(entitlement([]));
    expect(empty.decide(at(8080), agent(A))).toMatchObject({ allow: false, status: 403 });
    expect(empty.decide(at(8080), { kind: 'none' })).toMatchObject({ allow: false, status: 401 });
  });
  it('lists the user issuers with their JWKS URIs', () => {
    expect([...policyB.issuers]).toEqual([[ISSUER, `${ISSUER}/.well-known/jwks.json`]]);
  });
  it('reads claims as strings or arrays only', () => {
    expect(claimHolds({ email_verified: true }, 'email_verified', 'true')).toBe(true);
    expect(claimHolds({ groups: { support: true } }, 'groups', 'support')).toBe(false);
    expect(claimHolds({}, 'groups', 'support')).toBe(false);
  });
});

describe('rate limits', () => {
  it('allows the burst, then answers with the wait, per key, and refills over the window', () => {
    const limiter = new RateLimiter();
    const limit = { requests: 2, perMs: 60_000 };
    expect([limiter.take('a', limit, 0), limiter.take('a', limit, 0), limiter.take('a', limit, 0)]).toEqual([0, 0, 30]);
    expect(limiter.take('b', limit, 0)).toBe(0);
    expect(limiter.take('a', limit, 30_000)).toBe(0);
  });
  it('parses windows and fails closed on an unreadable one', () => {
    expect(parseWindow('1s')).toBe(1000);
    expect(parseWindow('5m')).toBe(300_000);
    expect(parseWindow('1h')).toBe(3_600_000);
    expect(parseWindow('1d')).toBeUndefined();
    const p = new InboundPolicy(
      entitlement([{ ...rules[0], rateLimit: { requests: 5, per: 'soon' } } as EntitlementIngressRule]),
    );
    expect(new RateLimiter().take('k', p.rules[0]?.rateLimit ?? { requests: 1, perMs: 1 }, 0)).toBeGreaterThan(0);
  });
});

describe('gates', () => {
  it('round-trips the --inbound value and refuses bad entries with the reason', () => {
    expect(
      parseGates(
        formatGates([
          { gate: 15006, port: 8080 },
          { gate: 15007, port: 9090 },
        ]),
      ),
    ).toEqual([
      { gate: 15006, port: 8080 },
      { gate: 15007, port: 9090 },
    ]);
    expect(parseGates('')).toEqual([]);
    for (const bad of ['8080', '15006:0', '16000:80', '15006:15007', '15006:80,15006:81', '15006:80,15007:80'])
      expect(parseGates(bad), bad).toHaveProperty('error');
  });

  const pod = (): Pod => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: 'b-0',
      namespace: 'team',
      labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'b' },
    },
    spec: {
      containers: [
        {
          name: 'app',
          ports: [
            { name: 'http', containerPort: 8080 },
            { containerPort: 9090 },
            { name: 'dns', containerPort: 53, protocol: 'UDP' },
          ],
          livenessProbe: { tcpSocket: { port: 'http' } },
        },
      ],
    },
  });

  it('moves a named TCP port onto its gate and rewrites the probe that named it; UDP stays', () => {
    const out = inject(pod(), TEST_INJECTOR);
    if (!out.allowed) throw new Error(out.message);
    const app = out.pod.spec.containers[0];
    expect(app?.ports).toEqual([
      { containerPort: 8080 },
      { containerPort: 9090 },
      { name: 'dns', containerPort: 53, protocol: 'UDP' },
    ]);
    expect(app?.livenessProbe).toEqual({ tcpSocket: { port: 8080 } });
    const sidecar = out.pod.spec.initContainers?.[0];
    expect(sidecar?.ports?.slice(0, 2)).toEqual([
      { name: 'http', containerPort: 15006, protocol: 'TCP' },
      { containerPort: 15007, protocol: 'TCP' },
    ]);
    expect(gatesOfPod(out.pod.spec)).toEqual([
      { gate: 15006, port: 8080 },
      { gate: 15007, port: 9090 },
    ]);
    // Rendering the injected pod again changes nothing (reinvocation, the token exchange's fence check).
    const again = inject(out.pod, TEST_INJECTOR);
    expect(again.allowed && again.pod).toEqual(out.pod);
  });

  it('refuses an app port on a gate port, naming the reserved range', () => {
    const p = pod();
    p.spec.containers[0]?.ports?.push({ containerPort: 15010 });
    const out = inject(p, TEST_INJECTOR);
    expect(out).toMatchObject({ allowed: false, reason: 'PortConflict' });
    expect(!out.allowed && out.message).toContain('15006');
  });
});

describe('the compiler and gates', () => {
  const injected = (
    name: string,
    agent: string,
    ip: string,
    ports: { name?: string; containerPort: number }[],
  ): PodInput => {
    const out = inject(
      {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: 'team', labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent } },
        spec: { containers: [{ name: 'app', ports }] },
      },
      TEST_INJECTOR,
    );
    if (!out.allowed) throw new Error(out.message);
    return {
      metadata: { ...out.pod.metadata, uid: `u-${name}` },
      spec: out.pod.spec as PodInput['spec'],
      status: { podIP: ip },
    };
  };
  const input = {
    namespaces: [namespace('team')],
    pods: [
      injected('a-0', 'a', '10.0.0.1', []),
      injected('a-1', 'a', '10.0.0.2', []),
      injected('b-0', 'b', '10.0.0.3', [{ name: 'http', containerPort: 8080 }]),
      backendPod('team', 'web-0', { app: 'web' }, [], '10.0.0.9'),
    ],
    services: [
      service('team', 'b', {
        selector: { 'agentfence.io/agent': 'b' },
        clusterIP: '10.96.0.3',
        ports: [{ port: 80, targetPort: 'http' }],
      }),
      service('team', 'b-by-number', {
        selector: { 'agentfence.io/agent': 'b' },
        clusterIP: '10.96.0.4',
        ports: [{ port: 80, targetPort: 8080 }],
      }),
    ],
    policies: [
      policy('team', 'a', {
        egress: [
          {
            name: 'to-b',
            to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'b' } } } },
            ports: [{ port: 8080 }],
          },
          { name: 'b-svc', to: { services: [{ name: 'b' }] }, ports: [{ port: 80 }] },
          { name: 'b-num', to: { services: [{ name: 'b-by-number' }] }, ports: [{ port: 80 }] },
        ],
      }),
      policy('team', 'b', {
        ingress: [
          { name: 'web', from: { pods: { podSelector: { matchLabels: { app: 'web' } } } }, ports: [{ port: 8080 }] },
          {
            name: 'people',
            from: { users: { issuer: ISSUER, audiences: ['agents'] } },
            ports: [{ port: 8080 }],
            maxBodyBytes: 1024,
            rateLimit: { requests: 10, per: '1s' },
            identityHeaders: ['x-user-id', 'x-user-id', 'x-tenant'],
          },
        ],
      }),
    ],
  };
  const out = compile(input, { now: NOW });
  const ent = (pod: string) => out.entitlements.find((e) => e.metadata.name === pod)?.spec;

  it("gives the caller's rule the callee's identity and gate, and lets the issuer mint only that audience", () => {
    const toB = ent('a-0')?.egress?.find((r) => r.rule === 'to-b');
    expect(toB?.peers).toEqual([
      { cidr: '10.0.0.3/32', spiffeID: 'spiffe://cluster.local/ns/team/agent/b', gates: [{ port: 8080, gate: 15006 }] },
    ]);
    const svc = ent('a-0')?.egress?.find((r) => r.rule === 'b-svc');
    expect(svc?.peers).toEqual([{ cidr: '10.96.0.3/32', spiffeID: 'spiffe://cluster.local/ns/team/agent/b' }]);
  });

  it("gives the callee inbound grants: the caller's live pods, the web pod's address, the users rule with limits", () => {
    const ingress = ent('b-0')?.ingress ?? [];
    expect(ingress.find((r) => r.rule === 'to-b')).toEqual({
      policy: 'a',
      rule: 'to-b',
      mode: 'Enforce',
      ports: [{ port: 8080, protocol: 'TCP' }],
      agents: [{ spiffeID: 'spiffe://cluster.local/ns/team/agent/a', pods: ['u-a-0', 'u-a-1'] }],
    });
    expect(ingress.find((r) => r.rule === 'b-svc')?.ports).toEqual([{ port: 8080, protocol: 'TCP' }]);
    expect(ingress.find((r) => r.rule === 'web')?.cidrs).toEqual(['10.0.0.9/32']);
    expect(ingress.find((r) => r.rule === 'people')).toMatchObject({
      users: { issuer: ISSUER, audiences: ['agents'] },
      maxBodyBytes: 1024,
      rateLimit: { requests: 10, per: '1s' },
      identityHeaders: ['x-tenant', 'x-user-id'],
    });
    // The gate strips them from every request, whichever rule admits it.
    const gatePolicy = new InboundPolicy(out.entitlements.find((e) => e.metadata.name === 'b-0'));
    expect([...gatePolicy.identityHeaders].sort()).toEqual(['x-tenant', 'x-user-id']);
  });

  it('opens the gate, never the app port, at L3; reports a Service that targets the app port by number', () => {
    const text = JSON.stringify(out.networkPolicies.filter((np) => np.metadata.namespace === 'team'));
    expect(text).toContain('"port":15006');
    expect(text).not.toContain('"port":8080');
    const report = out.reports.find((r) => r.name === 'a');
    expect(report?.problems.find((p) => p.reason === 'ServiceBypassesGate')?.message).toMatch(
      /Service team\/b-by-number targets .* by number .*targetPort to that name/,
    );
    // The callee's own policy says so too: it is the owner of the Service who has to change it.
    const own = out.reports.find((r) => r.name === 'b')?.problems.filter((p) => p.reason === 'ServiceBypassesGate');
    expect(own?.map((p) => p.message)).toEqual([
      expect.stringMatching(/^Service team\/b-by-number targets .*\(80→8080\)/),
    ]);
  });

  it('moves the revision when a caller pod goes (its tokens stop being accepted)', () => {
    const fewer = compile({ ...input, pods: input.pods.filter((p) => p.metadata.name !== 'a-1') }, { now: NOW });
    const before = ent('b-0')?.revision;
    const after = fewer.entitlements.find((e) => e.metadata.name === 'b-0')?.spec.revision;
    expect(after).not.toBe(before);
  });
});

describe('pre-gate is decided per pod, from what was injected', () => {
  const render = (name: string, ports: number[], gates = true): PodInput => {
    const out = inject(
      {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: 'team', labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'c' } },
        spec: { containers: [{ name: 'app', ports: ports.map((containerPort) => ({ containerPort })) }] },
      },
      TEST_INJECTOR,
      { gates },
    );
    if (!out.allowed) throw new Error(out.message);
    return {
      metadata: { ...out.pod.metadata, uid: `u-${name}` },
      spec: out.pod.spec as PodInput['spec'],
      status: { podIP: '10.0.1.1' },
    };
  };

  it('marks a port-less pod as gated (empty --inbound, the label); a pre-gate render has neither', () => {
    const portless = render('c-0', []);
    expect(JSON.stringify(portless.spec?.initContainers?.[0])).toContain('"--inbound="');
    expect(portless.metadata.labels?.['agentfence.io/inbound-gated']).toBe('true');
    expect(injectedBeforeGates(portless.spec)).toBe(false);
    const old = render('c-1', [8080], false);
    expect(JSON.stringify(old.spec?.initContainers?.[0])).not.toContain('--inbound');
    expect(old.metadata.labels?.['agentfence.io/inbound-gated']).toBeUndefined();
    expect(injectedBeforeGates(old.spec)).toBe(true);
  });

  it('never opens a number a Service targets on a gated pod that no gate serves (a port the pod never declared)', () => {
    const out = compile(
      {
        namespaces: [namespace('team')],
        pods: [render('c-0', []), injectedCaller()],
        services: [
          service('team', 'c-undeclared', {
            selector: { 'agentfence.io/agent': 'c' },
            clusterIP: '10.96.0.9',
            ports: [{ port: 80, targetPort: 9000 }],
          }),
        ],
        policies: [
          policy('team', 'a', {
            egress: [{ name: 'c', to: { services: [{ name: 'c-undeclared' }] }, ports: [{ port: 80 }] }],
          }),
          policy('team', 'c', { ingress: [{ name: 'lan', from: { cidrs: ['0.0.0.0/0'] }, ports: [{ port: 9000 }] }] }),
        ],
      },
      { now: NOW },
    );
    expect(JSON.stringify(out.networkPolicies)).not.toContain('"port":9000');
    for (const name of ['a', 'c']) {
      expect(out.reports.find((r) => r.name === name)?.problems.map((p) => p.reason)).toContain('ServiceBypassesGate');
    }
  });
});

/** An agent pod `a` as injected, without ports. */
function injectedCaller(): PodInput {
  const out = inject(
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: 'a-0',
        namespace: 'team',
        labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'a' },
      },
      spec: { containers: [{ name: 'app' }] },
    },
    TEST_INJECTOR,
  );
  if (!out.allowed) throw new Error(out.message);
  return {
    metadata: { ...out.pod.metadata, uid: 'u-a-0' },
    spec: out.pod.spec as PodInput['spec'],
    status: { podIP: '10.0.1.2' },
  };
}

describe('the audit sink under backpressure', () => {
  it('waits for one drain at a time instead of stacking a listener per flush', () => {
    const out = new Writable({ highWaterMark: 1, write: (_chunk, _enc, done) => setTimeout(done, 1000) });
    const sink = createAuditSink(out);
    for (let i = 0; i < 20; i++) {
      sink.write({ requestId: String(i) } as AuditRecord);
      sink.flush();
    }
    expect(out.listenerCount('drain')).toBe(1);
    out.destroy();
  });
});

describe('user tokens', () => {
  const ISS = 'https://idp.test';
  async function setup() {
    const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    let fetches = 0;
    const fetchKeys = (() => {
      fetches++;
      return Promise.resolve(new Response(JSON.stringify({ keys: [jwk] }), { status: 200 }));
    }) as typeof fetch;
    const verifier = createUserVerifier({ issuer: ISS, jwksUri: `${ISS}/keys`, fetch: fetchKeys });
    const sign = (claims: Record<string, unknown>, header: Record<string, unknown> = {}) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: 'k1', ...header })
        .setIssuer(typeof claims.iss === 'string' ? claims.iss : ISS)
        .setSubject('alice')
        .setExpirationTime('5m')
        .sign(privateKey);
    return { jwk, verifier, sign, fetches: () => fetches };
  }
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');

  it('accepts the issuer’s RS256 token and reads audiences and claims; the key set is fetched once', async () => {
    const { verifier, sign, fetches } = await setup();
    const u = await verifier.verify(await sign({ aud: ['a', 'b'], groups: ['support'] }));
    expect(u).toMatchObject({ issuer: ISS, sub: 'alice', audiences: ['a', 'b'] });
    expect(u.claims.groups).toEqual(['support']);
    await verifier.verify(await sign({ aud: 'a' }));
    expect(fetches()).toBe(1);
  });

  it('refuses alg none, HS256 keyed with the public key, another issuer, a missing exp, a foreign key', async () => {
    const { jwk, verifier, sign } = await setup();
    const payload = b64({ iss: ISS, sub: 'alice', aud: 'a', exp: Math.floor(Date.now() / 1000) + 300 });
    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`;
    await expect(verifier.verify(none)).rejects.toMatchObject({ code: 'algorithm_not_allowed' });
    const head = b64({ alg: 'HS256', typ: 'JWT', kid: 'k1' });
    const mac = createHmac('sha256', JSON.stringify(jwk)).update(`${head}.${payload}`).digest('base64url');
    await expect(verifier.verify(`${head}.${payload}.${mac}`)).rejects.toMatchObject({
      code: 'algorithm_not_allowed',
    });
    await expect(verifier.verify(await sign({ aud: 'a', iss: 'https://evil.test' }))).rejects.toMatchObject({
      code: 'wrong_issuer',
    });
    const other = await generateKeyPair('RS256');
    const forged = await new SignJWT({ aud: 'a' })
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .setIssuer(ISS)
      .setSubject('alice')
      .setExpirationTime('5m')
      .sign(other.privateKey);
    await expect(verifier.verify(forged)).rejects.toMatchObject({ code: 'bad_signature' });
    const noExp = await new SignJWT({ aud: 'a' })
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .setIssuer(ISS)
      .setSubject('alice')
      .sign(other.privateKey);
    await expect(verifier.verify(noExp)).rejects.toMatchObject({
      code: expect.stringMatching(/missing_claim|bad_signature/) as unknown,
    });
    await expect(verifier.verify('not-a-jwt')).rejects.toMatchObject({ code: 'malformed_token' });
  });
});
