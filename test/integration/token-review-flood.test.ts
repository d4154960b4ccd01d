/**
 * Invalid tokens must not cost the API server a TokenReview each. Against the real API server and the real
 * controller: 5,000 presentations of one forged token, then 5,000 distinct forged tokens (a real pod-bound token
 * with its payload changed, so the signature no longer matches), then malformed ones. TokenReviews are counted by
 * the API server itself (apiserver_request_total for tokenreviews) and by the controller's own metric.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import { startLocalController, type LocalController } from '../../localcluster/controller.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';
import { kubeRequest } from '../support/kube-request.ts';
import { createAgentPod, serviceAccountToken, TEST_INJECTOR } from '../support/identity-server.ts';

let client: KubeClient;
let controller: LocalController;
let post: (token: string) => Promise<{ status: number; error?: string }>;
let realToken: string;

/** TokenReviews the API server has answered so far, by its own count. */
async function apiServerReviews(): Promise<number> {
  const res = await kubeRequest('GET', '/metrics');
  let total = 0;
  for (const line of String(res.body).split('\n')) {
    if (
      line.startsWith('apiserver_request_total{') &&
      line.includes('resource="tokenreviews"') &&
      line.includes('verb="POST"')
    )
      total += Number(line.split(' ').at(-1));
  }
  return total;
}

async function controllerMetric(outcome: string): Promise<number> {
  const text = await controller.registry.metrics();
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`agentfence_identity_token_reviews_total{outcome="${outcome}"}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

async function flood(tokens: (i: number) => string, count: number, concurrency = 50): Promise<Map<string, number>> {
  const codes = new Map<string, number>();
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const { error = 'issued' } = await post(tokens(next++));
        codes.set(error, (codes.get(error) ?? 0) + 1);
      }
    }),
  );
  return codes;
}

function forge(token: string, claims: Record<string, unknown>): string {
  const [h = '', p = '', sig = ''] = token.split('.');
  const payload = { ...(JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>), ...claims };
  return `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${sig}`;
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = await createNamespace('af-flood-system');
  const ns = await createNamespace('flood');
  await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', ns]);
  // The pods below are rendered with TEST_INJECTOR: the exchange must expect the same sidecar.
  controller = await startLocalController({
    client,
    namespace: system,
    injector: () => TEST_INJECTOR,
    reconciler: false, // identity only: no policies here
  });
  const pod = await createAgentPod(ns, 'agent-0');
  realToken = await serviceAccountToken(ns, 'support-agent', pod);
  const f = fetchWithCA(controller.caPem);
  post = async (token) => {
    const res = await f(`${controller.issuerUrl}/v1/identity`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: '{}',
    });
    const body = (await res.json()) as { error?: string };
    return { status: res.status, ...(body.error ? { error: body.error } : {}) };
  };
  await eventually(
    async () => ((await post(realToken)).status === 200 ? true : undefined),
    'controller issuing',
    30_000,
  );
});

afterAll(async () => {
  await controller.operator.stop();
  client.close();
});

describe('TokenReviews under a flood of invalid tokens', () => {
  it('reviews one forged token once, however often it is presented (5,000 times)', async () => {
    const forged = forge(realToken, { jti: 'forged-identical' });
    const before = await apiServerReviews();
    const started = Date.now();
    const codes = await flood(() => forged, 5000);
    const seconds = (Date.now() - started) / 1000;
    const reviews = (await apiServerReviews()) - before;
    console.log(
      `5,000 identical forged tokens in ${Date.now() - started} ms → ${reviews} TokenReviews; answers ${JSON.stringify(Object.fromEntries(codes))}`,
    );
    expect(codes.get('issued')).toBeUndefined();
    // One review per negative-cache period (10 s): the API server stays the authority, briefly cached.
    expect(reviews).toBeGreaterThanOrEqual(1);
    expect(reviews).toBeLessThanOrEqual(1 + Math.ceil(seconds / 10));
    expect(await controllerMetric('cached_refusal')).toBeGreaterThan(4000);
  });

  it('bounds the reviews of 5,000 distinct forged tokens by the rate limits', async () => {
    const before = await apiServerReviews();
    const started = Date.now();
    const codes = await flood((i) => forge(realToken, { jti: `forged-${i}` }), 5000);
    const seconds = (Date.now() - started) / 1000;
    const reviews = (await apiServerReviews()) - before;
    console.log(
      `5,000 distinct forged tokens in ${seconds.toFixed(1)} s → ${reviews} TokenReviews; answers ${JSON.stringify(Object.fromEntries(codes))}`,
    );
    expect(codes.get('issued')).toBeUndefined();
    // They all claim one pod: its bucket (burst 5, 1/s) bounds the reviews whatever the source.
    expect(reviews).toBeLessThanOrEqual(5 + Math.ceil(seconds) + 1);
    expect(codes.get('rate_limited')).toBeGreaterThan(4000);
  });

  it('refuses malformed tokens without any review', async () => {
    const before = await apiServerReviews();
    const [h = '', p = ''] = realToken.split('.');
    const variants = [
      'not-a-jwt',
      `${h}.${p}`,
      forge(realToken, { aud: ['https://kubernetes.default.svc'] }),
      forge(realToken, { exp: Math.floor(Date.now() / 1000) - 3600 }),
      `${Buffer.from('{"alg":"none"}').toString('base64url')}.${p}.c2ln`,
      `${h}.${p}.${'A'.repeat(9000)}`,
    ];
    const codes = await flood((i) => variants[i % variants.length] ?? '', 600, 20);
    expect(await apiServerReviews()).toBe(before);
    expect([...codes.keys()].sort()).toEqual(['token_invalid', 'wrong_audience']);
  });

  it('still issues to the real token of the pod the forgeries claimed', async () => {
    const started = Date.now();
    await eventually(
      async () => ((await post(realToken)).status === 200 ? true : undefined),
      'real token accepted',
      15_000,
    );
    console.log(`the real token was accepted ${Date.now() - started} ms after the flood`);
  });
});
