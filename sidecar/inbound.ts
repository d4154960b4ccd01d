/**
 * The inbound gate: one listener per app port (lib/inbound/gates.ts), in front of the app on 127.0.0.1. Every
 * request is brought to its canonical form (request.ts, the same as egress), its identity headers are stripped,
 * the caller is authenticated from a token only — an agent's (agentfence-identity, or a bearer token of the
 * Agentfence issuer) for this pod's SPIFFE ID, or a user's bearer token of an issuer a rule lists — and judged by
 * the inbound grants (inbound-policy.ts); then size and rate limits. Only then is it forwarded (forward.ts),
 * with the verified identity set as `agentfence-caller` (agents) or `agentfence-user` + `agentfence-user-issuer`
 * (users). Refusals: 401 without a valid credential, 403 with one but no grant, 413, 429 + Retry-After — the app
 * never sees them. One audit line per decision with `direction: "inbound"`.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { decodeJwt } from 'jose';
import { AGENT_TOKEN_HEADER } from '../lib/identity/claims.ts';
import type { Gate } from '../lib/inbound/gates.ts';
import type { Logger } from '../lib/log.ts';
import { counter, histogram, type Registry } from '../lib/prom-text.ts';
import type { AgentVerifier } from '../lib/verify/index.ts';
import { createUserVerifier, type UserVerifier } from '../lib/verify/user-token.ts';
import type { AuditSink } from './audit.ts';
import { ignore, startTiming, type AuditFacts, type Core, type Timing } from './core.ts';
import { forwardHttp } from './forward.ts';
import { InboundPolicy, RateLimiter, type Caller, type InboundDecision, type InboundRule } from './inbound-policy.ts';
import type { CompiledRule } from './match.ts';
import { canonicalRequest } from './request.ts';
import { sendRefusal } from './respond.ts';

// node:http through process.getBuiltinModule, not an ESM import (see proxy.ts: the ESM facade loads undici).
const { Agent: HttpAgent, createServer } = process.getBuiltinModule('node:http');

/** Headers that claim an identity: stripped from every inbound request, set only from a verified token. */
export const IDENTITY_HEADERS = ['agentfence-caller', 'agentfence-user', 'agentfence-user-issuer', AGENT_TOKEN_HEADER];

/** Chunked bodies on a rule with maxBodyBytes are read before forwarding, up to this much (else 411). */
const MAX_BUFFERED_BODY = 1024 * 1024;
const APP_HOST = '127.0.0.1';

/** A header name as WSGI, CGI and some proxies see it: case and `_` versus `-` do not tell names apart. */
const headerKey = (name: string): string => name.toLowerCase().replaceAll('_', '-');

/**
 * Removes every header that names one of `names` in any spelling an app stack may fold onto it
 * (`agentfence_caller`, `X_User_Id`): stripping the exact name alone would let the variant through as the identity.
 */
export function stripIdentityHeaders(headers: Record<string, string>, names: readonly string[]): void {
  const claimed = new Set(names.map(headerKey));
  for (const name of Object.keys(headers)) if (claimed.has(headerKey(name))) Reflect.deleteProperty(headers, name);
}

export interface GateOptions {
  host: string;
  gates: readonly Gate[];
  /** Listen ports instead of the gates' own (tests run several pods on one host); same order as gates. */
  listenPorts?: readonly number[];
  /** Where the app listens (default 127.0.0.1; tests may run the app elsewhere). */
  appHost?: string;
  policy: () => InboundPolicy | undefined;
  self: () => { sub: string; pod: string; namespace: string };
  /** Verifies agent tokens for this pod's audience; undefined until the identity (issuer, SPIFFE ID) is known. */
  agentVerifier: () => { issuer: string; verifier: AgentVerifier } | undefined;
  /** A fetch for user issuers' JWKS (default: the global fetch, system trust). */
  userFetch?: typeof fetch;
  audit: AuditSink;
  logger: Logger;
  registry: Registry;
  now?: () => number;
}

type Verified = { caller: Caller; until: number };

export class InboundGate {
  readonly servers: Server[] = [];
  readonly #o: GateOptions;
  readonly #now: () => number;
  readonly #pool = new HttpAgent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64, scheduling: 'lifo' });
  readonly #limiter = new RateLimiter();
  /** Verified tokens until they expire: verification is done once per token, not per request. */
  readonly #verified = new Map<string, Verified>();
  readonly #users = new Map<string, { jwksUri: string; verifier: UserVerifier }>();
  readonly #requests;
  readonly #duration;
  readonly #counters = new Map<string, { inc(): void }>();
  readonly #core: Omit<Core, 'audit'>;

  constructor(options: GateOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#requests = counter(options.registry, {
      name: 'agentfence_sidecar_inbound_requests_total',
      help: 'Inbound decisions at the gate, by decision (allow, deny) and reason.',
      labelNames: ['decision', 'reason'],
    });
    this.#duration = histogram(options.registry, {
      name: 'agentfence_sidecar_inbound_request_duration_seconds',
      help: 'Inbound requests, from arrival to response end.',
      labelNames: [],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    });
    this.#core = {
      count: (decision, reason) => this.#count(decision, reason),
      observe: (_kind, t) => this.#duration.observe((performance.now() - t.started) / 1000),
      upstreamError: () => undefined,
      pool: () => this.#pool,
      // The gate forwards to the app over plain HTTP on loopback; it never originates TLS.
      tlsPool: () => {
        throw new Error('the inbound gate forwards plain HTTP only');
      },
      track: () => undefined,
      untrack: () => undefined,
      idleMs: 600_000,
    };
    for (const gate of options.gates) {
      const server = createServer({
        maxHeaderSize: 16 * 1024,
        headersTimeout: 10_000,
        requestTimeout: 300_000,
        keepAliveTimeout: 30_000,
        connectionsCheckingInterval: 2_000,
      });
      server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#onRequest(req, res, gate.port, false));
      server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) =>
        this.#onRequest(req, res, gate.port, true),
      );
      // Upgrades and CONNECT are not gated (yet): refused rather than passed through unjudged.
      server.on('upgrade', (_req: IncomingMessage, socket) => {
        socket.on('error', ignore);
        socket.end('HTTP/1.1 501 upgrade_not_supported\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      });
      server.on('connect', (_req: IncomingMessage, socket) => {
        socket.on('error', ignore);
        socket.end('HTTP/1.1 405 connect_not_supported\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      });
      server.on('clientError', (_err, socket) => {
        socket.on('error', ignore);
        if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        else socket.destroy();
      });
      this.servers.push(server);
    }
  }

  /** Starts every gate listener; resolves with the bound ports (gate order). */
  async listen(): Promise<number[]> {
    const ports: number[] = [];
    for (const [i, server] of this.servers.entries()) {
      server.listen(this.#o.listenPorts?.[i] ?? this.#o.gates[i]?.gate ?? 0, this.#o.host);
      await once(server, 'listening');
      ports.push((server.address() as AddressInfo).port);
    }
    return ports;
  }

  async close(): Promise<void> {
    const closing = this.servers.filter((s) => s.listening).map((s) => once(s, 'close').catch(() => undefined));
    for (const s of this.servers) {
      s.close();
      s.closeAllConnections();
    }
    this.#pool.destroy();
    await Promise.all(closing);
  }

  /** A new snapshot: idle keep-alive connections close, every new request is judged under it. */
  revoke(): void {
    for (const s of this.servers) s.closeIdleConnections();
  }

  #count(decision: string, reason: string): void {
    const key = `${decision}|${reason}`;
    let c = this.#counters.get(key);
    if (!c) this.#counters.set(key, (c = this.#requests.labels({ decision, reason })));
    c.inc();
  }

  #onRequest(req: IncomingMessage, res: ServerResponse, appPort: number, expect: boolean): void {
    req.on('error', ignore);
    res.on('error', ignore);
    this.#handle(req, res, appPort, expect).catch((err: unknown) => {
      this.#o.logger.error('inbound request failed', { err });
      if (!res.headersSent && !res.destroyed) {
        this.#refuse(
          res,
          !req.complete,
          { method: req.method ?? '', host: APP_HOST, port: appPort, path: '' },
          {
            status: 500,
            reason: 'internal',
            missing: 'the sidecar failed to handle this request',
          },
        );
      } else res.destroy();
    });
  }

  #refuse(
    res: ServerResponse,
    close: boolean,
    facts: AuditFacts,
    d: { status: number; reason: string; missing: string; retryAfterSeconds?: number },
  ): void {
    sendRefusal(
      res,
      {
        status: d.status,
        reason: d.reason,
        missing: d.missing,
        request: facts,
        agent: this.#o.self().sub,
        revision: this.#o.policy()?.revision ?? '',
        ...(d.retryAfterSeconds ? { retryAfterSeconds: d.retryAfterSeconds } : {}),
        ...(d.status === 401 ? { authenticate: 'Bearer' } : {}),
      },
      close,
    );
  }

  async #handle(req: IncomingMessage, res: ServerResponse, appPort: number, expect: boolean): Promise<void> {
    const t = startTiming();
    const appHost = this.#o.appHost ?? APP_HOST;
    const c = canonicalRequest(req, { host: appHost, port: appPort }, 'http');
    const deny = (
      facts: AuditFacts,
      d: { status: number; reason: string; missing: string; retryAfterSeconds?: number },
      caller: Caller,
      rule?: InboundRule,
    ): void => {
      this.#count('deny', d.reason);
      this.#refuse(res, !req.complete, facts, d);
      this.#audit(facts, { decision: 'deny', reason: d.reason, status: d.status }, caller, rule, t);
      this.#core.observe('http', t);
    };
    if (!c.ok) {
      deny({ ...c.facts, host: appHost, port: appPort }, c, { kind: 'none' });
      return;
    }
    const { request, headers } = c;
    const facts: AuditFacts = { method: request.method, host: appHost, port: appPort, path: request.path };
    // The caller's Host goes to the app as sent (virtual hosting); the connection goes to the app's port.
    headers.host = req.headers.host ?? request.authority;
    // The identity header is hop-by-hop to the canonical request (never forwarded): read it from the request.
    const presented = req.headers[AGENT_TOKEN_HEADER];
    const caller = await this.#authenticate(headers, Array.isArray(presented) ? presented.join(',') : presented);
    const policy = this.#o.policy();
    stripIdentityHeaders(headers, [...IDENTITY_HEADERS, ...(policy?.identityHeaders ?? [])]);
    if (!policy) {
      deny(
        facts,
        {
          status: 403,
          reason: 'no_entitlements',
          missing: 'no current entitlement snapshot: every call is refused until one arrives',
        },
        caller,
      );
      return;
    }
    const decision: InboundDecision = policy.decide(
      { appPort, method: request.method, path: request.path, source: req.socket.remoteAddress ?? '', now: this.#now() },
      caller,
    );
    if (!decision.allow) {
      deny(facts, decision, caller, decision.rule);
      return;
    }
    const rule = decision.rule;
    if (rule.rateLimit) {
      const wait = this.#limiter.take(
        `${rule.policy}/${rule.rule}|${callerKey(caller, req)}`,
        rule.rateLimit,
        this.#now(),
      );
      if (wait > 0) {
        deny(
          facts,
          {
            status: 429,
            reason: 'rate_limited',
            missing: `more than ${rule.rateLimit.requests} requests per ${rule.rateLimit.perMs / 1000} s from this caller (rule ${rule.rule})`,
            retryAfterSeconds: wait,
          },
          caller,
          rule,
        );
        return;
      }
    }
    let body: Buffer | undefined;
    if (rule.maxBodyBytes !== undefined && request.framing.kind !== 'none') {
      const max = rule.maxBodyBytes;
      const tooLarge = {
        status: 413,
        reason: 'body_too_large',
        missing: `request bodies larger than ${max} bytes are refused (rule ${rule.rule})`,
      };
      if (request.framing.kind === 'length' && request.framing.length > max) {
        deny(facts, tooLarge, caller, rule);
        return;
      }
      if (request.framing.kind === 'chunked') {
        if (max > MAX_BUFFERED_BODY) {
          deny(
            facts,
            {
              status: 411,
              reason: 'length_required',
              missing: `send Content-Length: chunked bodies are read whole to check the ${max}-byte limit, which exceeds what the gate buffers`,
            },
            caller,
            rule,
          );
          return;
        }
        if (expect) res.writeContinue();
        const read = await readAtMost(req, max);
        if (read === undefined) {
          deny(facts, tooLarge, caller, rule);
          return;
        }
        body = read;
      }
    }
    if (caller.kind === 'agent') headers['agentfence-caller'] = caller.spiffeID;
    else if (caller.kind === 'user') {
      headers['agentfence-user'] = caller.sub;
      headers['agentfence-user-issuer'] = caller.issuer;
    }
    const compiled: CompiledRule = { policy: rule.policy, rule: rule.rule, mode: rule.mode, cidrs: [], ports: [] };
    const core: Core = {
      ...this.#core,
      audit: (f, outcome, r, revision, tt) => this.#audit(f, outcome, caller, rule, tt, revision, r),
    };
    forwardHttp(
      core,
      req,
      res,
      request,
      {
        allow: true,
        decision: 'allow',
        reason: 'allowed',
        rule: compiled,
        address: appHost,
        revision: policy.revision,
        inspect: false,
        ...(body ? { body } : {}),
      },
      headers,
      t,
      expect && body === undefined,
    );
  }

  /** The caller from the request's tokens; headers that carried a consumed token are removed. */
  async #authenticate(headers: Record<string, string>, identity: string | undefined): Promise<Caller> {
    const bearer = /^bearer[ \t]+([A-Za-z0-9_.~+/=-]+)$/i.exec(headers.authorization ?? '')?.[1];
    const agents = this.#o.agentVerifier();
    if (identity !== undefined) return this.#agent(identity.trim(), agents);
    if (bearer === undefined) return { kind: 'none' };
    let iss: unknown;
    try {
      iss = decodeJwt(bearer).iss;
    } catch {
      // Not a JWT: the app's own credential (an API key), passed on untouched.
      return { kind: 'none' };
    }
    if (typeof iss !== 'string') return { kind: 'none' };
    if (agents && iss === agents.issuer) {
      delete headers.authorization;
      return this.#agent(bearer, agents);
    }
    const jwksUri = this.#o.policy()?.issuers.get(iss);
    if (jwksUri === undefined) {
      return {
        kind: 'none',
        reason: 'issuer_not_accepted',
        detail: `the bearer token's issuer ${iss.slice(0, 200)} is not accepted by any ingress rule`,
      };
    }
    delete headers.authorization;
    return this.#user(iss, jwksUri, bearer);
  }

  async #agent(raw: string, agents: { verifier: AgentVerifier } | undefined): Promise<Caller> {
    // Cached per kind: a token verified as one kind of credential is never taken for the other.
    const token = `a:${raw}`;
    const cached = this.#cached(token);
    if (cached) return cached;
    if (!agents)
      return {
        kind: 'invalid',
        reason: 'identity_unavailable',
        detail: 'this sidecar has no identity yet, so it cannot verify agent tokens',
      };
    try {
      const id = await agents.verifier.verify(raw);
      return this.#remember(token, { kind: 'agent', spiffeID: id.sub, podUID: id.pod.uid }, id.expiresAt.getTime());
    } catch (err) {
      return invalid(err);
    }
  }

  async #user(issuer: string, jwksUri: string, raw: string): Promise<Caller> {
    const token = `u:${issuer}:${raw}`;
    const cached = this.#cached(token);
    if (cached) return cached;
    let entry = this.#users.get(issuer);
    if (!entry || entry.jwksUri !== jwksUri) {
      entry = {
        jwksUri,
        verifier: createUserVerifier({ issuer, jwksUri, ...(this.#o.userFetch ? { fetch: this.#o.userFetch } : {}) }),
      };
      this.#users.set(issuer, entry);
    }
    try {
      const u = await entry.verifier.verify(raw);
      return this.#remember(
        token,
        { kind: 'user', issuer, sub: u.sub, audiences: u.audiences, claims: u.claims },
        u.expiresAt,
      );
    } catch (err) {
      return invalid(err);
    }
  }

  #cached(token: string): Caller | undefined {
    const hit = this.#verified.get(token);
    if (!hit) return undefined;
    if (hit.until > this.#now()) return hit.caller;
    this.#verified.delete(token);
    return undefined;
  }

  #remember(token: string, caller: Caller, until: number): Caller {
    if (this.#verified.size >= 4096) this.#verified.delete(this.#verified.keys().next().value ?? '');
    this.#verified.set(token, { caller, until });
    return caller;
  }

  #audit(
    facts: AuditFacts,
    outcome: Parameters<Core['audit']>[1],
    caller: Caller,
    rule: InboundRule | undefined,
    t: Timing,
    revision = this.#o.policy()?.revision ?? '',
    _compiled?: CompiledRule,
  ): void {
    const self = this.#o.self();
    this.#o.audit.write({
      time: new Date(t.at).toISOString(),
      requestId: t.id,
      direction: 'inbound',
      agent: self.sub,
      pod: self.pod,
      namespace: self.namespace,
      ...callerFields(caller),
      ...facts,
      policy: rule?.policy ?? '',
      rule: rule?.rule ?? '',
      revision,
      mode: rule?.mode ?? 'Enforce',
      bytesIn: 0,
      bytesOut: 0,
      durationMs: Math.round((performance.now() - t.started) * 1000) / 1000,
      ...outcome,
    });
  }
}

function invalid(err: unknown): Caller {
  const code = err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : 'malformed_token';
  const message = err instanceof Error ? err.message : 'the token could not be verified';
  return { kind: 'invalid', reason: code, detail: `the caller's token was refused: ${message}` };
}

function callerFields(caller: Caller): { caller?: string; callerIssuer?: string } {
  if (caller.kind === 'agent') return { caller: caller.spiffeID };
  if (caller.kind === 'user') return { caller: caller.sub, callerIssuer: caller.issuer };
  return {};
}

/** The identity a rate limit counts against: the verified caller, or the source address. */
function callerKey(caller: Caller, req: IncomingMessage): string {
  if (caller.kind === 'agent') return caller.spiffeID;
  if (caller.kind === 'user') return `${caller.issuer}#${caller.sub}`;
  return `addr:${req.socket.remoteAddress ?? ''}`;
}

/** The whole body, or undefined when it exceeds max (reading stops there). */
function readAtMost(req: IncomingMessage, max: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        req.removeAllListeners('data');
        req.pause();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks, size)));
    req.on('close', () => resolve(size > max ? undefined : Buffer.concat(chunks, size)));
  });
}
