import { beforeAll, describe, expect, it } from 'vitest';
import {
  ANNOTATION_INJECTED,
  IdentityExchange,
  Refusal,
  checkPod,
  subjectFromReview,
  type IdentityCluster,
  type PodView,
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
const pod: PodView = { ...rendered.pod, metadata: { ...rendered.pod.metadata, uid: 'uid-1' } };
expect(pod.metadata.annotations?.[ANNOTATION_INJECTED]).toContain('"version":"0.1.0"');
const subject = { namespace: 'support', serviceAccount: 'agent', podName: 'p1', podUID: 'uid-1' };

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
  ] as [string, PodView | undefined, string][])('refuses %s', (_, p, expected) => {
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

  function service(reviews: { count: number }, now: { t: number }, currentPod: () => PodView) {
    const cluster: IdentityCluster = {
      reviewToken: () => {
        reviews.count++;
        return Promise.resolve(goodReview);
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
    await svc.exchange('sa-token');
    await svc.exchange('sa-token');
    expect(reviews.count).toBe(1);
    current = { ...pod, metadata: { ...pod.metadata, uid: 'uid-2' } }; // the pod was recreated meanwhile
    await expect(svc.exchange('sa-token')).rejects.toMatchObject({ code: 'pod_uid_mismatch' });
    now.t += 31_000;
    current = pod;
    await svc.exchange('sa-token');
    expect(reviews.count).toBe(2);
  });

  it('refuses a pod whose live spec is not the injected one, with the stable code pod_not_fenced', async () => {
    let current = pod;
    const svc = service({ count: 0 }, { t: 9_000_000 }, () => current);
    await expect(svc.exchange('t')).resolves.toMatchObject({ revision: 'sha256:1' });
    const swapped = structuredClone(pod);
    const sidecar = swapped.spec?.initContainers as { name: string; image: string }[];
    sidecar[0] = { ...sidecar[0], name: 'agentfence-sidecar', image: 'registry.example/not-the-sidecar:1' };
    current = swapped;
    await expect(svc.exchange('t')).rejects.toMatchObject({ code: 'pod_not_fenced', status: 403 });
    // A labelled, annotated pod without any sidecar (label and annotation added after creation).
    current = {
      metadata: pod.metadata,
      spec: { serviceAccountName: 'agent', containers: [{ name: 'app', image: 'registry.example/agent:1' }] },
    };
    await expect(svc.exchange('t')).rejects.toMatchObject({ code: 'pod_not_fenced' });
  });

  it('rate-limits per pod and refills over time', async () => {
    const now = { t: 5_000_000 };
    const svc = service({ count: 0 }, now, () => pod);
    for (let i = 0; i < 3; i++) await svc.exchange('t');
    await expect(svc.exchange('t')).rejects.toMatchObject({ code: 'rate_limited', status: 429 });
    now.t += 1_000;
    await expect(svc.exchange('t')).resolves.toMatchObject({ revision: 'sha256:1' });
  });
});
