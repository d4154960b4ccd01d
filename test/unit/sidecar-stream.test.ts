/**
 * The sidecar's controller stream client (sidecar/entitlements.ts) against a scripted TLS controller: lost
 * acknowledgements are retried until recorded, a newer revision supersedes a pending one, and a heartbeat that
 * names another revision than the last snapshot makes the client reconnect for a fresh snapshot.
 * The same client against real controller processes: test/integration/controller-faults.test.ts.
 */
import { createServer, type Server } from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../lib/log.ts';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';
import { controllerEntitlements, type StreamEvent } from '../../sidecar/entitlements.ts';

const entitlement = (revision: string) => ({
  apiVersion: 'agentfence.io/v1alpha1',
  kind: 'AgentEntitlement',
  metadata: { name: 'p', namespace: 'ns' },
  spec: {
    podName: 'p',
    podUID: 'u',
    agent: 'a',
    spiffeID: 'spiffe://cluster.local/ns/ns/agent/a',
    revision,
    egress: [],
  },
});

let server: Server | undefined;
afterEach(() => {
  server?.closeAllConnections();
  server?.close();
});

async function controller(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ url: string; caPem: string }> {
  const ca = await createCertificateAuthority('stream-test-ca', 1);
  const cert = await issueCertificate(ca, {
    commonName: 'c',
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
    validityDays: 1,
  });
  server = createServer({ cert: cert.certPem, key: cert.keyPem }, handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, caPem: ca.certPem };
}

async function until(probe: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('controller stream client', () => {
  it('retries a lost acknowledgement until the controller records it; the newest revision wins', async () => {
    const attempts: string[] = [];
    const recorded: string[] = [];
    const c = await controller((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        const { revision } = JSON.parse(body || '{}') as { revision: string };
        attempts.push(revision);
        // The first two attempts are lost on the wire (what "socket hang up" looks like), then one 503.
        if (attempts.length <= 2) return req.socket.destroy();
        if (attempts.length === 3) return res.writeHead(503).end();
        recorded.push(revision);
        res.writeHead(204).end();
      });
    });
    const source = controllerEntitlements({
      controllerUrl: c.url,
      caPem: c.caPem,
      token: () => 'identity-token',
      logger: silentLogger,
      onSnapshot: () => undefined,
      onHeartbeat: () => undefined,
      ackRetry: { minMs: 10, maxMs: 50 },
    });
    const done = source.ack('sha256:01');
    expect(source.state().unacknowledged).toBe('sha256:01');
    await until(() => attempts.length >= 2, 'two attempts');
    void source.ack('sha256:02'); // a newer revision while the first is still being retried
    await done;
    expect(recorded).toEqual(['sha256:02']);
    expect(source.state().unacknowledged).toBeUndefined();
    source.stop();
  });

  it('reconnects for a fresh snapshot when a heartbeat names another revision than the last snapshot', async () => {
    let streams = 0;
    const c = await controller((req, res) => {
      if (req.url !== '/v1/entitlements/stream') return res.writeHead(404).end();
      streams++;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const revision = `sha256:0${streams}`;
      res.write(
        `event: snapshot\ndata: ${JSON.stringify({ revision, entitlement: entitlement(revision), heartbeatMs: 100 })}\n\n`,
      );
      // The first stream then claims the sidecar holds something else; the second one is consistent.
      const beat = streams === 1 ? 'sha256:ff' : revision;
      const timer = setInterval(
        () => res.write(`event: heartbeat\ndata: ${JSON.stringify({ revision: beat, heartbeatMs: 100 })}\n\n`),
        50,
      );
      res.on('close', () => clearInterval(timer));
    });
    const snapshots: string[] = [];
    const heartbeats: string[] = [];
    const events: StreamEvent[] = [];
    const source = controllerEntitlements({
      controllerUrl: c.url,
      caPem: c.caPem,
      token: () => 'identity-token',
      logger: silentLogger,
      onSnapshot: (e) => snapshots.push(e.spec.revision),
      onHeartbeat: (r) => heartbeats.push(r),
      onStreamEvent: (e) => events.push(e),
    });
    await source.start();
    await until(() => heartbeats.length >= 2, 'heartbeats on the second stream');
    source.stop();
    expect(snapshots.slice(0, 2)).toEqual(['sha256:01', 'sha256:02']);
    expect(events.slice(0, 3)).toEqual(['connected', 'revision_mismatch', 'connected']);
    expect(new Set(heartbeats)).toEqual(new Set(['sha256:02'])); // never the inconsistent one
  });

  it('treats a silent stream as stale after twice the announced heartbeat, and reconnects', async () => {
    let streams = 0;
    const c = await controller((_req, res) => {
      streams++;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        `event: snapshot\ndata: ${JSON.stringify({ revision: 'sha256:01', entitlement: entitlement('sha256:01'), heartbeatMs: 50 })}\n\n`,
      );
      // ...and then nothing: a replica that stopped (SIGSTOP) but whose socket stays open.
    });
    const events: StreamEvent[] = [];
    const source = controllerEntitlements({
      controllerUrl: c.url,
      caPem: c.caPem,
      token: () => 'identity-token',
      logger: silentLogger,
      onSnapshot: () => undefined,
      onHeartbeat: () => undefined,
      onStreamEvent: (e) => events.push(e),
      staleStreamMs: 60_000, // the announced 50 ms heartbeat sets the bound: 2 × 50 ms + 1 s
    });
    await source.start();
    // The server counts the second connection before the client has read its response: wait for the client's
    // own third event, or the check races the reconnect (it did, on a loaded machine).
    await until(() => streams >= 2 && events.length >= 3, 'a second connection, seen by the client', 10_000);
    source.stop();
    expect(events.slice(0, 3)).toEqual(['connected', 'stale', 'connected']);
  });
});
