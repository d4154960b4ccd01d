import { beforeAll, describe, expect, it } from 'vitest';
import {
  ANNOTATION_INJECTED,
  IdentityExchange,
  Refusal,
  checkPod,
  subjectFromReview,
  type IdentityCluster,
  type PodIdentity,
  type TokenReviewStatus,
} from '../../operator/identity/exchange.ts';
import { TokenIssuer } from '../../operator/identity/issuer.ts';
import { generateSigningKey, publicJwks, type KeySet } from '../../operator/identity/keys.ts';
import { createAgentVerifier } from '../../lib/verify/index.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import { inject, type InjectorConfig } from '../../webhook/inject.ts';

const AUD = 'agentfence.io/operator';
const goodReview: TokenReviewStatus = {
  authenticated: true,
  audiences: [AUD],
  user: {
    username: 'system:serviceaccount:support:agent',
    groups: ['system:serviceaccounts', 'system:serviceaccounts:support', 'system:authenticated'],
    extra: { 'authentication.kubernetes.io/pod-name': ['p1'], 'authentication.kubernetes.io/pod-uid': ['uid-1'] },
  },
};
const injector: InjectorConfig = {
  version: '0.1.0',
  image: 'ghcr.io/agentfence/agentfence:0.1.0',
  controllerUrl: 'https://issuer',
  logLevel: 'info',
  maxStaleness: '60s',
  resources: { cpuRequest: '50m', memoryRequest: '48Mi', memoryLimit: '128Mi' },
};
const rendered = inject(
  {
    metadata: {
      name: 'p1',
      namespace: 'support',
      labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'support-agent' },
    },
    spec: { serviceAccountName: 'agent', containers: [{ name: 'app', image: 'registry.example/agent:1' }] },
  },
  injector,
);
if (!rendered.allowed) throw new Error(rendered.message);
/** An agent pod exactly as the webhook injects it, as the API server stores it (with a uid). */
const pod: PodIdentity = { ...rendered.pod, metadata: { ...rendered.pod.metadata, uid: 'uid-1' } };
expect(pod.metadata.annotations?.[ANNOTATION_INJECTED]).toContain('"version":"0.1.0"');
const subject = { namespace: 'support', serviceAccount: 'agent', podName: 'p1', podUID: 'uid-1' };

/** A token of the API server's shape (the signature is never checked here: the review is faked). */
function saToken(
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = { alg: 'RS256', kid: 'k' },
): string {
  const part = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const payload = { aud: [AUD], exp: 4_000_000_000, sub: 'system:serviceaccount:support:agent', ...claims };
  return `${part(header)}.${part(payload)}.c2lnbmF0dXJl`;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof Refusal) return err.code;
    throw err;
  }
  return 'accepted';
}

describe('TokenReview checks', () => {
  it('accepts a pod-bound service-account token for our audience', () => {
    expect(subjectFromReview(goodReview, AUD)).toEqual(subject);
  });
  it.each([
    ['unauthenticated', { authenticated: false }, 'token_invalid'],
    [
      'API server rejected the audience',
      { authenticated: false, error: 'token audiences ["x"] is invalid for the target audiences' },
      'wrong_audience',
    ],
    ['audience not echoed', { ...goodReview, audiences: undefined }, 'wrong_audience'],
    ['another audience echoed', { ...goodReview, audiences: ['https://kubernetes.default.svc'] }, 'wrong_audience'],
    [
      'a user, not a service account',
      { ...goodReview, user: { ...goodReview.user, username: 'alice' } },
      'not_a_service_account',
    ],
    [
      'missing serviceaccounts group',
      { ...goodReview, user: { ...goodReview.user, groups: ['system:authenticated'] } },
      'not_a_service_account',
    ],
    ['not pod bound', { ...goodReview, user: { ...goodReview.user, extra: {} } }, 'not_pod_bound'],
    [
      'two pod names',
      {
        ...goodReview,
        user: {
          ...goodReview.user,
          extra: { 'authentication.kubernetes.io/pod-name': ['a', 'b'], 'authentication.kubernetes.io/pod-uid': ['u'] },
        },
      },
      'not_pod_bound',
    ],
  ] as [string, TokenReviewStatus, string][])('refuses %s', (_, review, expected) => {
    expect(code(() => subjectFromReview(review, AUD))).toBe(expected);
  });
});

describe('pod checks', () => {
  it.each([
    ['missing pod', undefined, 'pod_not_found'],
    ['another uid', { ...pod, metadata: { ...pod.metadata, uid: 'uid-2' } }, 'pod_uid_mismatch'],
    [
      'terminating',
      { ...pod, metadata: { ...pod.metadata, deletionTimestamp: '2026-01-01T00:00:00Z' } },
      'pod_terminating',
    ],
    ['no injection annotation', { ...pod, metadata: { ...pod.metadata, annotations: {} } }, 'pod_not_injected'],
    [
      'no inject label',
      { ...pod, metadata: { ...pod.metadata, labels: { 'agentfence.io/agent': 'x' } } },
      'pod_not_injected',
    ],
    [
      'another service account',
      { ...pod, spec: { ...pod.spec, serviceAccountName: 'other' } },
      'service_account_mismatch',
    ],
    [
      'invalid agent label',
      {
        ...pod,
        metadata: { ...pod.metadata, labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'Bad_Name' } },
      },
      'invalid_agent_label',
    ],
  ] as [string, PodIdentity | undefined, string][])('refuses %s', (_, p, expected) => {
    expect(code(() => checkPod(p, subject))).toBe(expected);
  });
  it('defaults the agent name to the service account', () => {
    expect(
      checkPod({ ...pod, metadata: { ...pod.metadata, labels: { 'agentfence.io/inject': 'true' } } }, subject),
    ).toBe('agent');
  });
});

describe('exchange caching and rate limiting', () => {
  let keys: KeySet;
  beforeAll(async () => {
    keys = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [] };
  });
  const entitlement = {
    spec: { podUID: 'uid-1', revision: 'sha256:1', tokenTTL: '1m', egress: [] },
  } as unknown as AgentEntitlement;

  function service(
    reviews: { count: number },
    now: { t: number },
    currentPod: () => PodIdentity,
    review: (token: string) => TokenReviewStatus = () => goodReview,
  ) {
    const cluster: IdentityCluster = {
      reviewToken: async (token) => {
        reviews.count++;
        await new Promise((r) => setImmediate(r)); // a review takes a while: concurrent requests overlap
        return review(token);
      },
      getPod: () => Promise.resolve(currentPod()),
      getEntitlement: () => Promise.resolve(entitlement),
    };
    const issuerUrl = 'https://issuer';
    return new IdentityExchange({
      cluster,
      issuer: new TokenIssuer({ issuer: issuerUrl, trustDomain: 'cluster.local', keys: () => keys }),
      selfVerifier: createAgentVerifier({ issuer: issuerUrl, audience: issuerUrl, jwks: publicJwks(keys) }),
      issuerUrl,
      trustDomain: 'cluster.local',
      injector,
      reviewCacheMs: 30_000,
      rateLimit: { burst: 3, perSecond: 1 },
      now: () => now.t,
    });
  }

  it('reviews a token once per cache period, but re-checks the live pod every time', async () => {
    const reviews = { count: 0 };
    const now = { t: 1_000_000 };
    let current = pod;
    const svc = service(reviews, now, () => current);
    await svc.exchange(saToken());
    await svc.exchange(saToken());
    expect(reviews.count).toBe(1);
    current = { ...pod, metadata: { ...pod.metadata, uid: 'uid-2' } }; // the pod was recreated meanwhile
    await expect(svc.exchange(saToken())).rejects.toMatchObject({ code: 'pod_uid_mismatch' });
    now.t += 31_000;
    current = pod;
    await svc.exchange(saToken());
    expect(reviews.count).toBe(2);
  });

  it('refuses a pod whose live spec is not the injected one, with the stable code pod_not_fenced', async () => {
    let current = pod;
    const token = saToken({ jti: 'fence' });
    const svc = service({ count: 0 }, { t: 9_000_000 }, () => current);
    await expect(svc.exchange(token)).resolves.toMatchObject({ revision: 'sha256:1' });
    const swapped = structuredClone(pod);
    const sidecar = swapped.spec?.initContainers as { name: string; image: string }[];
    sidecar[0] = { ...sidecar[0], name: 'agentfence-sidecar', image: 'registry.example/not-the-sidecar:1' };
    current = swapped;
    await expect(svc.exchange(token)).rejects.toMatchObject({ code: 'pod_not_fenced', status: 403 });
    // A labelled, annotated pod without any sidecar (label and annotation added after creation).
    current = {
      metadata: pod.metadata,
      spec: { serviceAccountName: 'agent', containers: [{ name: 'app', image: 'registry.example/agent:1' }] },
    };
    await expect(svc.exchange(token)).rejects.toMatchObject({ code: 'pod_not_fenced' });
  });

  it('rate-limits per pod and refills over time', async () => {
    const now = { t: 5_000_000 };
    const svc = service({ count: 0 }, now, () => pod);
    for (let i = 0; i < 3; i++) await svc.exchange(saToken({ jti: 't' }));
    await expect(svc.exchange(saToken({ jti: 't' }))).rejects.toMatchObject({ code: 'rate_limited', status: 429 });
    now.t += 1_000;
    await expect(svc.exchange(saToken({ jti: 't' }))).resolves.toMatchObject({ revision: 'sha256:1' });
  });

  describe('invalid tokens cost (almost) no TokenReview', () => {
    const bad: TokenReviewStatus = { authenticated: false, error: 'invalid bearer token' };
    const part = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');

    it.each([
      ['not a JWT', 'opaque-token-value', 'token_invalid'],
      ['two parts', `${part({ alg: 'RS256' })}.${part({})}`, 'token_invalid'],
      ['too long', saToken({ pad: 'x'.repeat(9000) }), 'token_invalid'],
      ['header not JSON', `bm90LWpzb24.${part({ aud: [AUD] })}.c2ln`, 'token_invalid'],
      ['alg none', saToken({}, { alg: 'none' }), 'token_invalid'],
      ['an HMAC alg', saToken({}, { alg: 'HS256' }), 'token_invalid'],
      ['another typ', saToken({}, { alg: 'RS256', typ: 'at+jwt' }), 'token_invalid'],
      ['expired by its own exp', saToken({ exp: 100 }), 'token_invalid'],
      ['another audience', saToken({ aud: ['https://kubernetes.default.svc'] }), 'wrong_audience'],
      ['another audience (string)', saToken({ aud: 'vault' }), 'wrong_audience'],
    ])('refuses %s without a review', async (_, token, expected) => {
      const reviews = { count: 0 };
      const svc = service(reviews, { t: 1_000_000 }, () => pod);
      await expect(svc.exchange(token)).rejects.toMatchObject({ code: expected });
      expect(reviews.count).toBe(0);
    });

    it('reviews one bad token once, however often and however concurrently it is presented', async () => {
      const reviews = { count: 0 };
      const now = { t: 1_000_000 };
      const svc = service(
        reviews,
        now,
        () => pod,
        () => bad,
      );
      const token = saToken({ jti: 'forged' });
      const results = await Promise.allSettled(Array.from({ length: 200 }, () => svc.exchange(token, '10.0.0.9')));
      expect(results.every((r) => r.status === 'rejected')).toBe(true);
      for (let i = 0; i < 200; i++)
        await expect(svc.exchange(token, '10.0.0.9')).rejects.toMatchObject({ code: 'token_invalid' });
      expect(reviews.count).toBe(1);
      now.t += 11_000; // the negative cache is brief: the API server stays the authority
      await expect(svc.exchange(token, '10.0.0.9')).rejects.toMatchObject({ code: 'token_invalid' });
      expect(reviews.count).toBe(2);
    });

    it('rate-limits reviews of distinct bad tokens per source, per claimed pod and overall', async () => {
      const reviews = { count: 0 };
      const now = { t: 1_000_000 };
      const svc = service(
        reviews,
        now,
        () => pod,
        () => bad,
      );
      const codes = new Map<string, number>();
      const tally = async (token: string, source: string): Promise<void> => {
        try {
          await svc.exchange(token, source);
        } catch (err) {
          const c = (err as Refusal).code;
          codes.set(c, (codes.get(c) ?? 0) + 1);
        }
      };
      for (let i = 0; i < 1000; i++) await tally(saToken({ jti: `s${i}` }), '10.0.0.1'); // one source
      expect(reviews.count).toBe(50); // its burst
      expect(codes.get('rate_limited')).toBe(950);
      reviews.count = 0;
      for (let i = 0; i < 1000; i++)
        await tally(
          saToken({ jti: `p${i}`, 'kubernetes.io': { pod: { name: 'p1', uid: 'uid-x' } } }),
          `10.1.${i >> 8}.${i & 255}`,
        );
      expect(reviews.count).toBe(5); // one claimed pod, many sources
      reviews.count = 0;
      for (let i = 0; i < 1000; i++) await tally(saToken({ jti: `g${i}` }), `10.2.${i >> 8}.${i & 255}`);
      expect(reviews.count).toBeLessThanOrEqual(200); // the global bucket
      now.t += 1_000;
      reviews.count = 0;
      await tally(saToken({ jti: 'later' }), '10.9.9.9');
      expect(reviews.count).toBe(1); // buckets refill
    });

    it('forgets a refusal after the brief negative-cache period (the review is the authority)', async () => {
      const reviews = { count: 0 };
      const now = { t: 1_000_000 };
      let verdict: TokenReviewStatus = { authenticated: false, error: 'temporarily odd' };
      const svc = service(
        reviews,
        now,
        () => pod,
        () => verdict,
      );
      const token = saToken({ jti: 'x' });
      await expect(svc.exchange(token)).rejects.toMatchObject({ code: 'token_invalid' });
      verdict = goodReview;
      now.t += 10_001;
      await expect(svc.exchange(token)).resolves.toHaveProperty(
        'spiffeID',
        'spiffe://cluster.local/ns/support/agent/support-agent',
      );
    });
  });
});
