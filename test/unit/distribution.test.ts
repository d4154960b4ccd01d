import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EntitlementHub, type PodKey } from '../../operator/distribution/hub.ts';
import { createDistributionRouter } from '../../operator/distribution/http.ts';
import { generateSigningKey, publicJwks, type KeySet } from '../../operator/identity/keys.ts';
import { TokenIssuer } from '../../operator/identity/issuer.ts';
import { createAgentVerifier } from '../../lib/verify/index.ts';
import { silentLogger } from '../../lib/log.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';

const ISSUER = 'https://controller';
let keys: KeySet;
let issuer: TokenIssuer;
let server: Server;
let base: string;
const hub = new EntitlementHub(100);
const acks: { pod: PodKey; revision: string }[] = [];

const entitlement = (pod: string, uid: string, revision: string): AgentEntitlement => ({
  apiVersion: 'agentfence.io/v1alpha1',
  kind: 'AgentEntitlement',
  metadata: { name: pod, namespace: 'ns' },
  spec: {
    podName: pod,
    podUID: uid,
    agent: 'a',
    spiffeID: 'spiffe://cluster.local/ns/ns/agent/a',
    revision,
    egress: [],
  },
});

const token = async (pod: string, uid: string, ttlSeconds = 300): Promise<string> =>
  (
    await issuer.issue({
      namespace: 'ns',
      agent: 'a',
      podName: pod,
      podUID: uid,
      serviceAccountName: 'sa',
      revision: '',
      audience: ISSUER,
      ttlSeconds,
    })
  ).token;

/** Reads SSE events from a streaming response. */
type StreamEvent = { event: string; data: Record<string, unknown> } | 'closed';

function events(res: Response): {
  next: (timeoutMs?: number) => Promise<StreamEvent>;
  /** The next event that is not a heartbeat: heartbeats come every 100 ms here and may fall between any two. */
  change: () => Promise<StreamEvent>;
} {
  const reader: ReadableStreamDefaultReader<Uint8Array> | undefined = res.body?.getReader();
  if (!reader) throw new Error('no body');
  let buffer = '';
  const decoder = new TextDecoder();
  const stream = {
    async next(timeoutMs = 2000): Promise<StreamEvent> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const idx = buffer.indexOf('\n\n');
        if (idx >= 0) {
          const block = buffer.slice(0, idx);
          buffer = buffer.slice(idx + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? '';
          const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? '{}') as Record<string, unknown>;
          return { event, data };
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new Error('no event in time');
        const chunk = await Promise.race([
          reader.read(),
          new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no event in time')), remaining)),
        ]);
        if (chunk.done) return 'closed';
        buffer += decoder.decode(chunk.value satisfies Uint8Array, { stream: true });
      }
    },
    async change(): Promise<StreamEvent> {
      for (;;) {
        const e = await stream.next();
        if (e === 'closed' || e.event !== 'heartbeat') return e;
      }
    },
  };
  return stream;
}

beforeAll(async () => {
  keys = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [] };
  issuer = new TokenIssuer({ issuer: ISSUER, trustDomain: 'cluster.local', keys: () => keys });
  const app = express();
  app.use(express.json());
  app.use(
    createDistributionRouter({
      hub,
      verifier: createAgentVerifier({ issuer: ISSUER, audience: ISSUER, jwks: publicJwks(keys) }),
      onAck: (pod, revision) => {
        acks.push({ pod, revision });
        return Promise.resolve();
      },
      logger: silentLogger,
    }),
  );
  hub.start();
  server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => {
  hub.stop();
  server.closeAllConnections();
  server.close();
});

describe('entitlement stream', () => {
  it('streams full snapshots of the caller’s own pod on change, heartbeats, and an empty snapshot on removal', async () => {
    const controller = new AbortController();
    const res = await fetch(`${base}/v1/entitlements/stream`, {
      headers: { authorization: `Bearer ${await token('p1', 'uid-1')}` },
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const stream = events(res);
    expect(await stream.change()).toMatchObject({ event: 'snapshot', data: { revision: '' } }); // nothing compiled yet: no grants

    hub.upsert(entitlement('p1', 'uid-1', 'sha256:01'));
    expect(await stream.change()).toMatchObject({
      event: 'snapshot',
      data: { revision: 'sha256:01', entitlement: { spec: { podName: 'p1' } } },
    });

    hub.upsert(entitlement('p1', 'uid-1', 'sha256:01')); // same revision: no event
    hub.upsert(entitlement('p2', 'uid-2', 'sha256:99')); // another pod: no event
    expect(await stream.next()).toMatchObject({ event: 'heartbeat', data: { revision: 'sha256:01' } });

    hub.upsert(entitlement('p1', 'uid-OLD', 'sha256:02')); // an earlier pod of the same name: counts as none
    expect(await stream.change()).toMatchObject({ event: 'snapshot', data: { revision: '' } });

    hub.upsert(entitlement('p1', 'uid-1', 'sha256:03'));
    expect(await stream.change()).toMatchObject({ data: { revision: 'sha256:03' } });
    hub.remove('ns', 'p1');
    expect(await stream.change()).toMatchObject({
      event: 'snapshot',
      data: { revision: '', entitlement: { spec: { egress: [] } } },
    });
    controller.abort();
  });

  it('ends the stream when the token that opened it expires', async () => {
    const res = await fetch(`${base}/v1/entitlements/stream`, {
      headers: { authorization: `Bearer ${await token('p3', 'uid-3', 1)}` },
    });
    const stream = events(res);
    await stream.next();
    let last = await stream.next(2500);
    while (last !== 'closed') last = await stream.next(2500);
    expect(last).toBe('closed');
  });

  it('answers 503 until the entitlement cache has synced, instead of an empty snapshot that revokes everything', async () => {
    let synced = false;
    const app = express();
    app.use(express.json());
    app.use(
      createDistributionRouter({
        hub,
        verifier: createAgentVerifier({ issuer: ISSUER, audience: ISSUER, jwks: publicJwks(keys) }),
        onAck: () => Promise.resolve(),
        ready: () => synced,
        logger: silentLogger,
      }),
    );
    const gated = app.listen(0, '127.0.0.1');
    await once(gated, 'listening');
    const url = `http://127.0.0.1:${(gated.address() as AddressInfo).port}`;
    try {
      const auth = { authorization: `Bearer ${await token('p9', 'uid-9')}` };
      const early = await fetch(`${url}/v1/entitlements/stream`, { headers: auth });
      expect(early.status).toBe(503);
      expect(early.headers.get('retry-after')).toBe('1');
      expect(await early.json()).toMatchObject({ error: 'entitlements_unavailable' });
      const ack = await fetch(`${url}/v1/entitlements/ack`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ revision: '' }),
      });
      expect(ack.status).toBe(503);
      synced = true;
      const controller = new AbortController();
      const ready = await fetch(`${url}/v1/entitlements/stream`, { headers: auth, signal: controller.signal });
      expect(ready.status).toBe(200);
      expect(await events(ready).next()).toMatchObject({ event: 'snapshot' });
      controller.abort();
    } finally {
      gated.closeAllConnections();
      gated.close();
    }
  });

  it('refuses a missing or foreign token', async () => {
    expect((await fetch(`${base}/v1/entitlements/stream`)).status).toBe(401);
    const other = new TokenIssuer({ issuer: 'https://other', trustDomain: 'cluster.local', keys: () => keys });
    const foreign = (
      await other.issue({
        namespace: 'ns',
        agent: 'a',
        podName: 'p',
        podUID: 'u',
        serviceAccountName: 'sa',
        revision: '',
        audience: ISSUER,
        ttlSeconds: 60,
      })
    ).token;
    const res = await fetch(`${base}/v1/entitlements/stream`, { headers: { authorization: `Bearer ${foreign}` } });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ reason: 'wrong_issuer' });
  });

  it('records acks for the pod named by the token, and refuses malformed revisions', async () => {
    const post = async (body: unknown) =>
      fetch(`${base}/v1/entitlements/ack`, {
        method: 'POST',
        headers: { authorization: `Bearer ${await token('p9', 'uid-9')}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    expect((await post({ revision: 'sha256:abc' })).status).toBe(204);
    expect(acks.at(-1)).toEqual({ pod: { namespace: 'ns', podName: 'p9', podUID: 'uid-9' }, revision: 'sha256:abc' });
    expect((await post({ revision: 'nope' })).status).toBe(400);
    expect((await post({})).status).toBe(400);
  });
});
