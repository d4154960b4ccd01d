/**
 * Byte tunnels: a CONNECT to a destination whose rule needs no L7 check, and an allowed protocol upgrade
 * (WebSocket) after the upstream's 101. Both sides are piped at the socket level; either side's error, end or
 * idle timeout closes both; the tunnel's audit line is written once, at close, with the bytes counted.
 */
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { ignore, type AuditFacts, type Core, type Timing, type Tunnel } from './core.ts';
import type { CompiledRule } from './match.ts';
import { writeRawRefusal, type Refusal } from './respond.ts';

export interface TunnelGrant {
  decision: 'allow' | 'would_deny';
  reason: string;
  rule: CompiledRule | undefined;
  revision: string;
}

/** Pipes client and upstream together until either ends; registers the tunnel for revocation. */
export function splice(
  core: Core,
  kind: 'http' | 'connect',
  client: Duplex,
  upstream: Duplex,
  facts: AuditFacts,
  grant: TunnelGrant,
  t: Timing,
  status: number,
  bytes: { in: number; out: number },
): Tunnel {
  let closed = false;
  const tunnel: Tunnel = {
    host: facts.host,
    port: facts.port,
    client,
    carries: kind === 'connect' ? 'blind' : 'upgrade',
    close(reason) {
      if (closed) return;
      closed = true;
      client.destroy();
      upstream.destroy();
      core.untrack(tunnel);
      core.audit(
        facts,
        { decision: grant.decision, reason, status, bytesIn: bytes.in, bytesOut: bytes.out },
        grant.rule,
        grant.revision,
        t,
      );
      core.observe(kind, t);
    },
  };
  client.on('error', ignore);
  upstream.on('error', ignore);
  client.on('data', (c: Buffer) => (bytes.in += c.length));
  upstream.on('data', (c: Buffer) => (bytes.out += c.length));
  client.pipe(upstream);
  upstream.pipe(client);
  // Idle tunnels are closed: a stuck peer must not hold a socket and its buffers for ever.
  const idle = (): void => tunnel.close('idle_timeout');
  (client as Duplex & { setTimeout?: (ms: number, cb: () => void) => void }).setTimeout?.(core.idleMs, idle);
  (upstream as Duplex & { setTimeout?: (ms: number, cb: () => void) => void }).setTimeout?.(core.idleMs, idle);
  client.on('close', () => tunnel.close(grant.reason));
  upstream.on('close', () => tunnel.close(grant.reason));
  core.track(tunnel, grant.rule);
  return tunnel;
}

/** A blind CONNECT tunnel to the checked address. */
export function blindTunnel(
  core: Core,
  client: Duplex,
  head: Buffer,
  address: string,
  facts: AuditFacts,
  grant: TunnelGrant,
  t: Timing,
  refusal: (status: number, reason: string, missing: string) => Refusal,
): void {
  const upstream = connect({ host: address, port: facts.port, noDelay: true });
  let established = false;
  upstream.on('error', () => {
    core.upstreamError();
    if (established) return;
    upstream.destroy();
    core.count(grant.decision, 'upstream_error');
    writeRawRefusal(client, refusal(502, 'upstream_error', `cannot connect to ${facts.host}:${facts.port}`));
    core.audit(
      facts,
      { decision: grant.decision, reason: 'upstream_error', status: 502 },
      grant.rule,
      grant.revision,
      t,
    );
  });
  // A client that goes away while the upstream connects takes the connection attempt with it.
  const early = (): void => {
    if (!established) upstream.destroy();
  };
  client.once('close', early);
  upstream.setTimeout(core.idleMs, () => upstream.destroy());
  upstream.once('connect', () => {
    established = true;
    client.off('close', early);
    if (client.destroyed) {
      upstream.destroy();
      return;
    }
    core.count(grant.decision, grant.reason);
    client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length > 0) upstream.write(head);
    splice(core, 'connect', client, upstream, facts, grant, t, 200, { in: head.length, out: 0 });
  });
}

/** A TLS fatal alert (handshake_failure): what a TLS client inside a refused inspected tunnel receives. */
export const TLS_HANDSHAKE_FAILURE = Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]);

/** What the first byte of a tunnel says it carries. */
export function sniff(first: number): 'tls' | 'http' | 'other' {
  if (first === 0x16) return 'tls';
  // An HTTP/1.x request starts with a method token; every registered method is upper-case letters.
  if (first >= 65 && first <= 90) return 'http';
  return 'other';
}
