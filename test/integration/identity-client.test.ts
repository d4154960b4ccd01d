/**
 * End to end on the real API server: the sidecar's identity client gets a token through the real exchange, the
 * example orders API verifies it with the middleware, another agent is refused; the client re-reads the
 * projected token file, keeps its last good token through failures, and fails closed once it expires.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAgentVerifier } from '../../lib/verify/index.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import { silentLogger } from '../../lib/log.ts';
import { IdentityClient } from '../../sidecar/identity-client.ts';
import { createOrdersApi } from '../../examples/resource-server/orders-api.ts';
import { createNamespace, eventually, runOrThrow } from '../support/cluster.ts';
import { createAgentPod, serviceAccountToken, startTestIssuer, type TestIssuer } from '../support/identity-server.ts';

let ns: string;
let issuer: TestIssuer;
let dir: string;
let orders: Server;
let ordersUrl: string;

async function clientFor(agent: string, clock?: { t: number }): Promise<{ client: IdentityClient; tokenFile: string }> {
  const pod = await createAgentPod(ns, `${agent}-pod`, { agent, serviceAccount: agent, audiences: ['orders-api'] });
  const tokenFile = join(dir, `${agent}.token`);
  await writeFile(tokenFile, await serviceAccountToken(ns, agent, pod));
  const client = new IdentityClient({
    controllerUrl: issuer.url,
    tokenFile,
    fetch: fetchWithCA(issuer.caPem),
    logger: silentLogger,
    retry: { minMs: 10, maxMs: 50 },
    ...(clock ? { now: () => clock.t } : {}),
  });
  return { client, tokenFile };
}

beforeAll(async () => {
  ns = await createNamespace('idclient');
  for (const sa of ['support-agent', 'research-agent', 'clock-agent'])
    await runOrThrow(['create', 'serviceaccount', sa, '-n', ns]);
  issuer = await startTestIssuer();
  dir = await mkdtemp(join(tmpdir(), 'agentfence-idclient-'));
  const verifier = createAgentVerifier({
    issuer: issuer.url,
    audience: 'orders-api',
    trustDomain: 'cluster.local',
    fetch: fetchWithCA(issuer.caPem),
  });
  orders = createOrdersApi(verifier, [`spiffe://cluster.local/ns/${ns}/agent/support-agent`]).listen(0, '127.0.0.1');
  await once(orders, 'listening');
  ordersUrl = `http://127.0.0.1:${(orders.address() as AddressInfo).port}`;
});

afterAll(async () => {
  issuer.close();
  orders.close();
  await rm(dir, { recursive: true, force: true });
});

describe('sidecar identity client', () => {
  it('obtains an identity and an audience token that the example orders API accepts; another agent is refused', async () => {
    const support = await clientFor('support-agent');
    await support.client.start();
    try {
      expect(support.client.current()).toMatchObject({
        spiffeID: `spiffe://cluster.local/ns/${ns}/agent/support-agent`,
        revision: 'sha256:feed',
      });
      const token = await support.client.tokenFor('orders-api');
      expect(await support.client.tokenFor('orders-api')).toBe(token); // cached until half-life
      const ok = await fetch(`${ordersUrl}/v1/orders/42`, { headers: { authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toMatchObject({
        order: '42',
        servedTo: `spiffe://cluster.local/ns/${ns}/agent/support-agent`,
        pod: 'support-agent-pod',
      });
    } finally {
      support.client.stop();
    }

    const research = await clientFor('research-agent');
    await research.client.start();
    try {
      const denied = await fetch(`${ordersUrl}/v1/orders/42`, {
        headers: { authorization: `Bearer ${await research.client.tokenFor('orders-api')}` },
      });
      expect(denied.status).toBe(403);
      expect(await denied.json()).toMatchObject({ reason: 'agent_not_allowed' });
    } finally {
      research.client.stop();
    }
  });

  it('re-reads the token file on every exchange, keeps the last good token through failures, then fails closed', async () => {
    const clock = { t: Date.now() };
    const { client, tokenFile } = await clientFor('clock-agent', clock);
    await client.start();
    try {
      const first = client.current();
      expect(first).toBeDefined();
      // The kubelet rotated the file to something the API server rejects: the refresh fails, the old token stays.
      await writeFile(tokenFile, 'garbage');
      await expect(client.refresh()).rejects.toMatchObject({ code: 'token_invalid' });
      expect(client.current()?.spiffeID).toBe(first?.spiffeID);
      expect(client.lastError).toBeDefined();
      // Past expiry with no successful refresh: no identity, no audience tokens.
      clock.t = ((first?.expiresAt ?? 0) + 1) * 1000;
      expect(client.current()).toBeUndefined();
      expect(client.identityToken()).toBeUndefined();
      await expect(client.tokenFor('orders-api')).rejects.toMatchObject({ code: 'no_identity' });
      // A fresh file (new rotation) brings it back.
      clock.t = Date.now();
      const pod = JSON.parse(await runOrThrow(['get', 'pod', 'clock-agent-pod', '-n', ns, '-o', 'json'])) as {
        metadata: { name: string; uid: string };
      };
      await writeFile(tokenFile, await serviceAccountToken(ns, 'clock-agent', pod));
      await client.refresh();
      expect(client.current()).toBeDefined();
    } finally {
      client.stop();
    }
  });

  it('backs off visibly while its token is refused, and re-reads the token file on every retry', async () => {
    await runOrThrow(['create', 'serviceaccount', 'refused-agent', '-n', ns]);
    const pod = await createAgentPod(ns, 'refused-agent-pod', {
      agent: 'refused-agent',
      serviceAccount: 'refused-agent',
    });
    const tokenFile = join(dir, 'refused.token');
    // A token the controller refuses: not bound to any pod.
    await writeFile(tokenFile, await serviceAccountToken(ns, 'refused-agent', undefined));
    const codes: string[] = [];
    const client = new IdentityClient({
      controllerUrl: issuer.url,
      tokenFile,
      fetch: fetchWithCA(issuer.caPem),
      logger: silentLogger,
      retry: { minMs: 50, maxMs: 400 },
      onFailure: (code) => codes.push(code),
    });
    const started = client.start();
    try {
      await eventually(() => (codes.length >= 4 ? true : undefined), 'four refusals', 10_000);
      expect(new Set(codes)).toEqual(new Set(['not_pod_bound']));
      const health = client.health();
      expect(health).toMatchObject({ lastErrorCode: 'not_pod_bound' });
      expect(health.failures).toBeGreaterThanOrEqual(4);
      expect(health.nextRetryInSeconds).not.toBeNull();
      expect(client.current()).toBeUndefined();
      // One retry schedule, backing off: four refusals take at least 50 + 100 + 200 ms of waiting, and they are
      // not doubled by a second loop.
      const afterFour = codes.length;
      await new Promise((r) => setTimeout(r, 400));
      expect(codes.length - afterFour).toBeLessThanOrEqual(2);
      // The kubelet rotates the file: the next retry reads the new token and succeeds.
      await writeFile(tokenFile, await serviceAccountToken(ns, 'refused-agent', pod));
      await started;
      expect(client.current()?.spiffeID).toBe(`spiffe://cluster.local/ns/${ns}/agent/refused-agent`);
      expect(client.health()).toMatchObject({ failures: 0, lastErrorCode: null, nextRetryInSeconds: null });
    } finally {
      client.stop();
    }
  });
});
