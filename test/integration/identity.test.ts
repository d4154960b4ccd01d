/**
 * The token exchange against the real API server: real pod-bound service-account tokens from the TokenRequest
 * API, reviewed by the real TokenReview API, served over TLS, verified through the served JWKS.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAgentVerifier } from '../../lib/verify/index.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import { cluster, createNamespace, runOrThrow } from '../support/cluster.ts';
import {
  createAgentPod,
  serviceAccountToken,
  startTestIssuer,
  type AgentPodOptions,
  type CreatedPod,
  type TestIssuer,
} from '../support/identity-server.ts';

let ns: string;
let issuer: TestIssuer;
let base: string;
let caPem: string;
let issuerUrl: string;

const createPod = (name: string, opts: AgentPodOptions = {}): Promise<CreatedPod> => createAgentPod(ns, name, opts);
const tokenFor = (pod: CreatedPod | undefined, audiences?: string[]): Promise<string> =>
  serviceAccountToken(ns, 'support-agent', pod, audiences);

async function exchange(token: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetchWithCA(caPem)(`${base}/v1/identity`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

beforeAll(async () => {
  ns = await createNamespace('identity');
  await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', ns]);
  issuer = await startTestIssuer();
  base = issuer.url;
  issuerUrl = issuer.url;
  caPem = issuer.caPem;
});

afterAll(() => {
  issuer.close();
});

describe('POST /v1/identity against the real API server', () => {
  it('exchanges a pod-bound projected token for an agent token that verifies through the served JWKS', async () => {
    const pod = await createPod('agent-ok');
    const res = await exchange(await tokenFor(pod));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      spiffeID: `spiffe://cluster.local/ns/${ns}/agent/support-agent`,
      revision: 'sha256:feed',
      refreshAfterSeconds: 60,
    });
    expect(Number(res.body.expiresAt) - Number(res.body.issuedAt)).toBe(120); // the entitlement's tokenTTL

    const verifier = createAgentVerifier({
      issuer: issuerUrl,
      audience: issuerUrl,
      trustDomain: 'cluster.local',
      fetch: fetchWithCA(caPem),
    });
    const identity = await verifier.verify(String(res.body.token));
    expect(identity).toMatchObject({
      namespace: ns,
      agent: 'support-agent',
      serviceAccount: 'support-agent',
      pod: { name: 'agent-ok', uid: pod.metadata.uid },
    });

    // An audience-specific token, authenticated by the identity token, only for an entitled audience.
    const post = (aud: string) =>
      fetchWithCA(caPem)(`${base}/v1/token`, {
        method: 'POST',
        headers: { authorization: `Bearer ${String(res.body.token)}`, 'content-type': 'application/json' },
        body: JSON.stringify({ audience: aud }),
      });
    const forOrders = await post('orders-api');
    expect(forOrders.status).toBe(200);
    const ordersToken = ((await forOrders.json()) as { token: string }).token;
    const ordersVerifier = createAgentVerifier({
      issuer: issuerUrl,
      audience: 'orders-api',
      fetch: fetchWithCA(caPem),
    });
    await expect(ordersVerifier.verify(ordersToken)).resolves.toMatchObject({
      agent: 'support-agent',
      audience: 'orders-api',
    });
    const notEntitled = await post('billing-api');
    expect(notEntitled.status).toBe(403);
    expect(await notEntitled.json()).toMatchObject({ error: 'audience_not_entitled' });
  });

  it('refuses a token not bound to a pod (kubectl create token)', async () => {
    await createPod('agent-unbound');
    const res = await exchange(await tokenFor(undefined));
    expect(res.status).toBe(403);
    expect(res.body.error).toBe('not_pod_bound');
  });

  it("refuses a token for the API server's audience", async () => {
    const pod = await createPod('agent-apiaud');
    const res = await exchange(await tokenFor(pod, [cluster().server]));
    expect(res.status).toBe(401);
    expect(res.body.error).toBe('wrong_audience');
  });

  it('refuses the token of a pod that was recreated with the same name (uid mismatch)', async () => {
    const first = await createPod('agent-recreated');
    const token = await tokenFor(first);
    await runOrThrow(['delete', 'pod', 'agent-recreated', '-n', ns, '--grace-period=0', '--force', '--wait=true']);
    const second = await createPod('agent-recreated');
    expect(second.metadata.uid).not.toBe(first.metadata.uid);
    const res = await exchange(token);
    expect(res.status).toBeGreaterThanOrEqual(401);
    expect(res.body.error).toBe('pod_uid_mismatch');
  });

  it('refuses a terminating pod', async () => {
    const pod = await createPod('agent-terminating', { finalizer: true });
    const token = await tokenFor(pod);
    await runOrThrow(['delete', 'pod', 'agent-terminating', '-n', ns, '--wait=false']);
    const res = await exchange(token);
    expect(res.status).toBe(403);
    expect(res.body.error).toBe('pod_terminating');
    await runOrThrow([
      'patch',
      'pod',
      'agent-terminating',
      '-n',
      ns,
      '--type=merge',
      '-p',
      '{"metadata":{"finalizers":null}}',
    ]);
  });

  it('refuses a pod without injection', async () => {
    const pod = await createPod('agent-plain', { injected: false });
    const res = await exchange(await tokenFor(pod));
    expect(res.status).toBe(403);
    expect(res.body.error).toBe('pod_not_injected');
  });

  it('refuses a request without a token and a garbage token, with JSON reasons', async () => {
    const none = await fetchWithCA(caPem)(`${base}/v1/identity`, { method: 'POST' });
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ error: 'missing_token' });
    const garbage = await exchange('not-a-token');
    expect(garbage.status).toBe(401);
    expect(garbage.body.error).toBe('token_invalid');
    expect(JSON.stringify(garbage.body)).not.toContain('not-a-token');
  });

  it('serves OpenID discovery and a JWKS without private key material', async () => {
    const discovery = (await (await fetchWithCA(caPem)(`${base}/.well-known/openid-configuration`)).json()) as {
      issuer: string;
      jwks_uri: string;
    };
    expect(discovery.issuer).toBe(issuerUrl);
    expect(discovery.jwks_uri).toBe(`${issuerUrl}/.well-known/jwks.json`);
    const jwks = await (await fetchWithCA(caPem)(discovery.jwks_uri)).text();
    expect(jwks).toContain(issuer.keys.current.kid);
    expect(jwks).not.toContain('"d"');
  });
});
