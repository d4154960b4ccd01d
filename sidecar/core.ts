/**
 * What the proxy's parts share: timing of one request, the audit facts that describe it, and the services
 * (audit, counters, pools, tunnel registry) the forwarder and the tunnels use.
 */
import { randomUUID } from 'node:crypto';
import type { Agent } from 'node:http';
import type { Agent as HttpsAgent } from 'node:https';
import type { Duplex } from 'node:stream';
import type { AuditRecord } from './audit.ts';
import type { CompiledRule } from './match.ts';

export interface Timing {
  id: string;
  /** Wall clock (ms since the epoch) when the request arrived: the audit line's time. */
  at: number;
  /** Monotonic start, for durations. */
  started: number;
}

export const startTiming = (): Timing => ({ id: randomUUID(), at: Date.now(), started: performance.now() });

/** The request an audit line describes: exactly what was (or would have been) forwarded. */
export type AuditFacts = Pick<AuditRecord, 'method' | 'host' | 'port' | 'path' | 'tls' | 'credential'>;

export type AuditOutcome = Pick<AuditRecord, 'decision' | 'reason' | 'status'> &
  Partial<Pick<AuditRecord, 'bytesIn' | 'bytesOut'>>;

export interface Tunnel {
  host: string;
  port: number;
  client: Duplex;
  /**
   * What passes through: bytes no one judges (a blind CONNECT, an upgraded connection) or requests judged one by
   * one (an inspected CONNECT). A new snapshot re-judges a tunnel by it (proxy.ts, #stillEntitled).
   */
  carries: 'blind' | 'upgrade' | 'inspected';
  /** Closes both sides and writes the tunnel's audit line with this reason (once). */
  close(reason: string): void;
  expiry?: NodeJS.Timeout;
}

export interface Core {
  audit(facts: AuditFacts, outcome: AuditOutcome, rule: CompiledRule | undefined, revision: string, t: Timing): void;
  count(decision: string, reason: string): void;
  observe(kind: 'http' | 'connect', t: Timing): void;
  upstreamError(): void;
  pool(address: string, port: number): Agent;
  /**
   * The pool for TLS to an upstream of an intercepted tunnel: keyed by address, port, verified name and trust
   * (keep-alive and TLS session reuse within it). `ca`: the rule's bundle, or undefined for the public roots.
   */
  tlsPool(address: string, port: number, servername: string, ca: string | undefined): HttpsAgent;
  /** Registers an open tunnel (revocation, expiry, close on shutdown). */
  track(tunnel: Tunnel, rule: CompiledRule | undefined): void;
  untrack(tunnel: Tunnel): void;
  idleMs: number;
}

/** Swallows a socket or stream error: every stream the proxy touches gets a listener, so none can crash it. */
export const ignore = (): void => undefined;
