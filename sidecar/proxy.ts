/**
 * The egress fence: an explicit forward proxy for plain HTTP (absolute-form requests), CONNECT tunnels and
 * protocol upgrades. Deny by default. Every request is brought to its canonical form (canonical.ts), judged by
 * the one admission pipeline (pipeline.ts), and — only if admitted — that canonical form is what is forwarded
 * (forward.ts, tunnel.ts). Denials answer with the reason (refusals never touch the destination). One audit
 * line per decision. No network event ends the process: every socket and stream has its errors handled.
 *
 * A CONNECT to a destination whose rules need L7 checks is inspected: its first bytes are looked at; plain
 * HTTP/1.x is parsed by an inner HTTP server and every request in the tunnel is judged like a plain one; TLS
 * is terminated with a leaf from the pod CA (intercept.ts, pod-ca.ts) and the decrypted stream goes to that
 * same inner server, its requests forwarded over verified TLS (forward.ts). Without a pod CA, TLS is refused.
 *
 * Data-path care (PERFORMANCE.md): matchers are compiled once per snapshot; upstream connections are pooled per
 * address; tunnels are piped at the socket level; audit writes are batched and never block.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Agent as HttpsAgent } from 'node:https';
import { once } from 'node:events';
import { Socket, type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { AGENT_TOKEN_HEADER } from '../lib/identity/claims.ts';
import type { Logger } from '../lib/log.ts';
import { counter, gauge, histogram, type Registry } from '../lib/prom-text.ts';
import { systemResolver, type Resolver } from './addresses.ts';
import type { AuditSink } from './audit.ts';
import { canonicalAuthority, splitAuthority } from './canonical.ts';
import { ignore, startTiming, type AuditFacts, type Core, type Timing, type Tunnel } from './core.ts';
import { forwardHttp } from './forward.ts';
import { forwardUpgrade } from './upgrade.ts';
import { canonicalRequest, type TunnelTarget } from './request.ts';
import { normalizeHost, type CompiledRule, type Matcher } from './match.ts';
import type { EntitlementCredentials } from '../lib/api/types.generated.ts';
import { admit, type Admission, type BodyReader, type CanonicalRequest, type PipelineContext } from './pipeline.ts';
import { sendRefusal, writeRawRefusal, type Refusal } from './respond.ts';
import { TLS_HANDSHAKE_FAILURE, blindTunnel, sniff } from './tunnel.ts';
import { terminateTls } from './intercept.ts';
import { publicRoots, type PodCA } from './pod-ca.ts';

// node:http through process.getBuiltinModule, not an ESM import: the ESM facade of node:http reads every export,
// and WebSocket, CloseEvent and MessageEvent are lazy getters that load undici (~13 MB resident in every sidecar).
const { Agent, createServer } = process.getBuiltinModule('node:http');
type Agent = InstanceType<typeof Agent>;

export interface AgentView {
  sub: string;
  pod: string;
  namespace: string;
}

export interface ProxyOptions {
  host: string;
  port: number;
  /** The current policy; undefined when there is no fresh snapshot (everything is denied). */
  matcher: () => Matcher | undefined;
  agent: () => AgentView;
  /** Agent tokens for destination audiences (controller mode). */
  tokenFor?: (audience: string) => Promise<string>;
  /** The header a rule's brokered credential sets; undefined when its value is not here (the request is refused). */
  credentialFor?: (credentials: EntitlementCredentials) => { name: string; value: string } | undefined;
  audit: AuditSink;
  logger: Logger;
  registry: Registry;
  resolver?: Resolver;
  now?: () => number;
  /** Largest MCP request body inspected; larger ones are refused (default 1 MiB). */
  maxMcpBodyBytes?: number;
  /** All request bodies buffered for inspection at once; past it, 503 + Retry-After (default 8 MiB). */
  maxBufferedBodyBytes?: number;
  /** A tunnel (CONNECT, upgrade) with no bytes either way for this long is closed (default 10 min). */
  tunnelIdleMs?: number;
  /** The pod CA: TLS inside inspected tunnels is terminated with its leaves. Absent: such TLS is refused. */
  interception?: PodCA;
  /** A client that has not finished its TLS handshake inside an inspected tunnel by then is dropped (10 s). */
  tlsHandshakeTimeoutMs?: number;
}

/** Tunnel endings that are refusals (status 403 in the tunnel's audit line), not the tunnel's own end. */
const TUNNEL_REFUSALS = new Set([
  'l7_rule_needs_plain_http',
  'tls_client_rejected',
  'tls_sni_mismatch',
  'tls_alpn_unsupported',
  'tls_handshake_timeout',
  'tls_handshake_failed',
]);

type Denied = Extract<Admission, { allow: false }>;

const MAX_TIMER_MS = 2 ** 31 - 1;

export class FenceProxy {
  readonly server: Server;
  /** Parses plain HTTP inside inspected CONNECT tunnels; never listens itself. */
  readonly #inner: Server;
  readonly #o: ProxyOptions;
  readonly #pools = new Map<string, Agent>();
  readonly #tlsPools = new Map<string, HttpsAgent>();
  readonly #trustKeys = new Map<string, string>();
  /** Upstream trust for the public roots, built once (a fresh `ca` per pool would copy them each time). */
  #publicRoots: string[] | undefined;
  /** Open tunnels and the rule each was opened (or last re-judged) under. */
  readonly #tunnels = new Map<Tunnel, CompiledRule | undefined>();
  readonly #targets = new WeakMap<object, TunnelTarget>();
  /** Requests in flight per client socket: a parse error there must not write a second response. */
  readonly #inFlight = new WeakMap<object, number>();
  /** Connections whose parser failed while a request was in flight: closed once its response is done. */
  readonly #closeWhenIdle = new WeakSet<object>();
  readonly #resolver: Resolver;
  readonly #now: () => number;
  readonly #core: Core;
  readonly #requests;
  readonly #tunnelsOpen;
  readonly #upstreamErrors;
  readonly #decisionCounters = new Map<string, { inc(): void }>();
  readonly #durations: Record<'http' | 'connect', { observe(v: number): void }>;
  #buffered = 0;

  constructor(options: ProxyOptions) {
    this.#o = options;
    this.#resolver = options.resolver ?? systemResolver;
    this.#now = options.now ?? Date.now;
    const r = options.registry;
    this.#requests = counter(r, {
      name: 'agentfence_sidecar_requests_total',
      help: 'Egress decisions, by decision (allow, deny, would_deny) and reason.',
      labelNames: ['decision', 'reason'],
    });
    const duration = histogram(r, {
      name: 'agentfence_sidecar_request_duration_seconds',
      help: 'Time from request to response end (plain HTTP) or tunnel close (CONNECT, upgrade), by kind.',
      labelNames: ['kind'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    });
    this.#durations = { http: duration.labels({ kind: 'http' }), connect: duration.labels({ kind: 'connect' }) };
    this.#upstreamErrors = counter(r, {
      name: 'agentfence_sidecar_upstream_errors_total',
      help: 'Upstream connection or protocol errors.',
      labelNames: [],
    });
    this.#tunnelsOpen = gauge(r, {
      name: 'agentfence_sidecar_tunnels_open',
      help: 'Open CONNECT tunnels.',
      labelNames: [],
    });
    this.#core = {
      audit: (facts, outcome, rule, revision, t) => this.#audit(facts, outcome, rule, revision, t),
      count: (decision, reason) => this.#count(decision, reason),
      observe: (kind, t) => this.#durations[kind].observe((performance.now() - t.started) / 1000),
      upstreamError: () => this.#upstreamErrors.inc(),
      pool: (address, port) => this.#pool(address, port),
      tlsPool: (address, port, servername, ca) => this.#tlsPool(address, port, servername, ca),
      track: (tunnel, rule) => {
        this.#tunnels.set(tunnel, rule);
        this.#tunnelsOpen.inc();
        this.#armExpiry(tunnel, rule);
      },
      untrack: (tunnel) => {
        if (!this.#tunnels.delete(tunnel)) return;
        this.#tunnelsOpen.dec();
        if (tunnel.expiry) clearTimeout(tunnel.expiry);
      },
      idleMs: options.tunnelIdleMs ?? 600_000,
    };
    const serverOptions = {
      maxHeaderSize: 16 * 1024,
      headersTimeout: 10_000,
      requestTimeout: 300_000,
      keepAliveTimeout: 30_000,
      requireHostHeader: false,
      // How often the header and request timeouts are checked (Node's default, 30 s, lets a slow client
      // hold a connection up to 40 s past a 10 s header timeout).
      connectionsCheckingInterval: 2_000,
    };
    this.server = createServer(serverOptions);
    this.#inner = createServer(serverOptions);
    // Node tracks connections (headers and request timeouts, closeAllConnections) from 'listening' on; the
    // inner server never listens, so it is told it does: slow clients inside a tunnel are timed out too.
    this.#inner.emit('listening');
    for (const server of [this.server, this.#inner]) {
      const target = (req: IncomingMessage): TunnelTarget | undefined =>
        server === this.#inner ? this.#targets.get(req.socket) : undefined;
      server.on('request', (req: IncomingMessage, res: ServerResponse) =>
        this.#onRequest(req, res, target(req), false),
      );
      // Expect: 100-continue is answered only once the request is admitted (forward.ts, #readBody).
      server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) =>
        this.#onRequest(req, res, target(req), true),
      );
      server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        socket.on('error', ignore);
        // Held until admitted: nothing the client sends is read (or lost) before the decision.
        socket.pause();
        this.#onUpgrade(req, socket, head, target(req)).catch((err: unknown) => {
          options.logger.error('upgrade failed', { err });
          socket.destroy();
        });
      });
      server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.#onClientError(err, socket));
    }
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', ignore);
      socket.pause();
      this.#onConnect(req, socket, head).catch((err: unknown) => {
        options.logger.error('tunnel failed', { err });
        socket.destroy();
      });
    });
    this.#inner.on('connect', (_req: IncomingMessage, socket: Duplex) => {
      socket.on('error', ignore);
      socket.destroy();
    });
  }

  async listen(): Promise<{ url: string; port: number }> {
    this.server.listen(this.#o.port, this.#o.host);
    await once(this.server, 'listening');
    const { port } = this.server.address() as AddressInfo;
    return { url: `http://${this.#o.host}:${port}`, port };
  }

  async close(): Promise<void> {
    for (const t of [...this.#tunnels.keys()]) t.close('shutdown');
    this.server.close();
    this.server.closeAllConnections();
    this.#inner.close();
    this.#inner.closeAllConnections();
    for (const pool of this.#pools.values()) pool.destroy();
    for (const pool of this.#tlsPools.values()) pool.destroy();
    await once(this.server, 'close').catch(() => undefined);
  }

  /**
   * A new snapshot is in force: tunnels it no longer entitles are closed at once, and idle keep-alive client
   * connections are closed so that no connection outlives the grant it was opened under. Requests in flight
   * finish; every new request is decided under the new snapshot.
   */
  revoke(): void {
    let closed = 0;
    for (const t of [...this.#tunnels.keys()]) {
      if (this.#stillEntitled(t)) continue;
      t.close('revoked');
      closed++;
    }
    // Upstream pools are kept: they hold connections to addresses, and every request is decided anew anyway.
    this.server.closeIdleConnections();
    this.#inner.closeIdleConnections();
    if (closed > 0) this.#o.logger.info('tunnels closed after revocation', { closed });
  }

  /**
   * Whether the current snapshot still entitles an open tunnel, judged by what the tunnel carries. An inspected
   * tunnel stays while its destination is allowed at all: every request in it is judged anew. Bytes no one judges
   * stay only while the very rule they were allowed under (by policy and name) would still let them through
   * unjudged: a blind CONNECT whose destination now needs inspection (a profile, tls: Inspect, credentials, on
   * that rule or one beside it), or whose rule is gone or replaced, is closed; so is an upgraded connection whose
   * rule gained a profile or whose destination gained credentials (an upgrade would now be refused).
   */
  #stillEntitled(t: Tunnel): CompiledRule | false {
    const matcher = this.#o.matcher();
    if (!matcher) return false;
    const now = this.#now();
    const decision = matcher.decideConnect(t, now);
    if (!decision.allow) return false;
    if (t.carries === 'inspected') return decision.rule;
    const opened = this.#tunnels.get(t);
    const same = (r: CompiledRule): boolean =>
      opened !== undefined && r.policy === opened.policy && r.rule === opened.rule;
    const candidates = matcher.candidates(t, now);
    if (t.carries === 'blind') return decision.inspect ? false : (candidates.find(same) ?? false);
    if (candidates.some((r) => r.credentials !== undefined)) return false;
    return candidates.find((r) => same(r) && r.http === undefined && r.mcp === undefined) ?? false;
  }

  /** A tunnel opened under a rule with an expiry is re-judged when that expiry comes (static mode has no push). */
  #armExpiry(t: Tunnel, rule: CompiledRule | undefined): void {
    if (rule?.expiresAt === undefined) return;
    const wait = Math.min(Math.max(rule.expiresAt - this.#now() + 1, 0), MAX_TIMER_MS);
    t.expiry = setTimeout(() => {
      t.expiry = undefined;
      if (!this.#tunnels.has(t)) return;
      const next = this.#stillEntitled(t);
      if (next) {
        this.#tunnels.set(t, next);
        this.#armExpiry(t, next);
      } else t.close('grant_expired');
    }, wait);
    t.expiry.unref();
  }

  #count(decision: string, reason: string): void {
    const key = `${decision}|${reason}`;
    let c = this.#decisionCounters.get(key);
    if (!c) {
      c = this.#requests.labels({ decision, reason });
      this.#decisionCounters.set(key, c);
    }
    c.inc();
  }

  #pool(address: string, port: number): Agent {
    const key = `${address}|${port}`;
    let pool = this.#pools.get(key);
    if (!pool) {
      pool = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64, scheduling: 'lifo' });
      this.#pools.set(key, pool);
    }
    return pool;
  }

  #tlsPool(address: string, port: number, servername: string, ca: string | undefined): HttpsAgent {
    let trust = ca === undefined ? 'public' : this.#trustKeys.get(ca);
    if (trust === undefined && ca !== undefined) {
      // Hashed once per distinct bundle (a handful: one per rule with caBundle), not once per request.
      trust = createHash('sha256').update(ca).digest('hex');
      if (this.#trustKeys.size > 1024) this.#trustKeys.clear();
      this.#trustKeys.set(ca, trust);
    }
    const key = `${address}|${port}|${servername}|${trust}`;
    let pool = this.#tlsPools.get(key);
    if (!pool) {
      this.#publicRoots ??= publicRoots();
      // node:https and node:tls on first use (~7 MB resident): a sidecar whose rules never originate TLS does not pay.
      const { Agent: HttpsAgentClass } = process.getBuiltinModule('node:https');
      const { createSecureContext } = process.getBuiltinModule('node:tls');
      pool = new HttpsAgentClass({
        keepAlive: true,
        maxSockets: 256,
        maxFreeSockets: 64,
        scheduling: 'lifo',
        // A rule's bundle replaces the public roots; an empty one trusts nothing (fail closed). One context per
        // pool: a `ca` option would parse the roots again for every new connection.
        secureContext: createSecureContext({ ca: ca === undefined ? this.#publicRoots : ca === '' ? [] : ca }),
        rejectUnauthorized: true,
        ALPNProtocols: ['http/1.1'],
        maxCachedSessions: 100,
      });
      this.#tlsPools.set(key, pool);
    }
    return pool;
  }

  #audit(
    facts: AuditFacts,
    outcome: Parameters<Core['audit']>[1],
    rule: CompiledRule | undefined,
    revision: string,
    t: Timing,
  ): void {
    const agent = this.#o.agent();
    this.#o.audit.write({
      time: new Date(t.at).toISOString(),
      requestId: t.id,
      agent: agent.sub,
      pod: agent.pod,
      namespace: agent.namespace,
      ...facts,
      policy: rule?.policy ?? '',
      rule: rule?.rule ?? '',
      revision,
      mode: rule?.mode || (this.#o.matcher()?.auditOnly ? 'Audit' : 'Enforce'),
      bytesIn: 0,
      bytesOut: 0,
      durationMs: Math.round((performance.now() - t.started) * 1000) / 1000,
      ...outcome,
    });
  }

  /** The pipeline's inputs now: the snapshot in force, the clock, the resolver, and (plain HTTP) the body reader. */
  #pipeline(body?: { maxBytes: number; read: BodyReader }): PipelineContext {
    const context: PipelineContext = {
      matcher: this.#o.matcher(),
      now: this.#now(),
      resolver: this.#resolver,
      maxMcpBodyBytes: body?.maxBytes ?? 0,
    };
    if (body) context.body = body.read;
    return context;
  }

  #refusal(facts: AuditFacts, status: number, reason: string, missing: string, revision: string): Refusal {
    return {
      status,
      reason,
      missing,
      request: facts.method === 'CONNECT' ? { method: 'CONNECT', host: facts.host, port: facts.port } : facts,
      agent: this.#o.agent().sub,
      revision,
    };
  }

  /** Counts, answers and audits a refusal; facts without a host (unparseable target) are not audited. */
  #deny(
    to: { res: ServerResponse; close: boolean } | { socket: Duplex },
    facts: AuditFacts,
    d: Pick<Denied, 'status' | 'reason' | 'missing' | 'rule' | 'retryAfterSeconds'>,
    t: Timing,
  ): void {
    const revision = this.#o.matcher()?.revision ?? '';
    this.#count('deny', d.reason);
    const refusal = {
      ...this.#refusal(facts, d.status, d.reason, d.missing, revision),
      ...(d.retryAfterSeconds ? { retryAfterSeconds: d.retryAfterSeconds } : {}),
    };
    if ('res' in to) sendRefusal(to.res, refusal, to.close);
    else writeRawRefusal(to.socket, refusal);
    if (facts.host) this.#audit(facts, { decision: 'deny', reason: d.reason, status: d.status }, d.rule, revision, t);
    if (facts.method !== 'CONNECT') this.#core.observe('http', t);
  }

  #onRequest(req: IncomingMessage, res: ServerResponse, tunnel: TunnelTarget | undefined, expect: boolean): void {
    const socket = req.socket;
    this.#inFlight.set(socket, (this.#inFlight.get(socket) ?? 0) + 1);
    res.once('close', () => {
      const left = (this.#inFlight.get(socket) ?? 1) - 1;
      this.#inFlight.set(socket, left);
      if (left === 0 && this.#closeWhenIdle.has(socket)) socket.destroy();
    });
    req.on('error', ignore);
    res.on('error', ignore);
    this.#handle(req, res, tunnel, expect).catch((err: unknown) => {
      this.#o.logger.error('request failed', { err });
      if (!res.headersSent && !res.destroyed)
        sendRefusal(
          res,
          this.#refusal(
            { method: req.method ?? '', host: '', port: 0, path: '' },
            500,
            'internal',
            'the sidecar failed to handle this request',
            '',
          ),
          true,
        );
      else res.destroy();
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse, tunnel: TunnelTarget | undefined, expect: boolean) {
    const t = startTiming();
    const c = canonicalRequest(req, tunnel, 'http');
    const unread = (): boolean => !req.complete;
    if (!c.ok) {
      this.#deny({ res, close: unread() }, c.facts, { ...c, rule: undefined }, t);
      return;
    }
    const { request, headers } = c;
    const facts = { method: request.method, host: request.host, port: request.port, path: request.path };
    const adm = await admit(
      request,
      this.#pipeline({
        maxBytes: this.#o.maxMcpBodyBytes ?? 1024 * 1024,
        read: (limit) => this.#readBody(req, res, limit, expect),
      }),
    );
    if (!adm.allow) {
      this.#deny({ res, close: unread() }, facts, adm, t);
      return;
    }
    // Between admission and forwarding, and only here, headers are set on the canonical request: the brokered
    // credential, then the agent's identity. Plain HTTP and decrypted HTTPS both pass this point, and what is set
    // here goes out only over the connection the request was judged for (verified TLS for inspected HTTPS).
    const withoutCredential = this.#setCredential(adm, request, headers);
    if (withoutCredential) {
      this.#deny({ res, close: unread() }, facts, withoutCredential, t);
      return;
    }
    // A call to another agent carries a token for that agent's identity (its gate verifies it) and goes to
    // the gate in front of the app port; other destinations get the rule's audience, if any.
    const peer = adm.rule?.peers?.get(adm.address);
    const audience = peer?.spiffeID ?? adm.rule?.audience;
    const dialPort = peer?.gates.get(request.port) ?? request.port;
    // Only the sidecar speaks for the agent: an identity header the app wrote never reaches another agent.
    if (peer) Reflect.deleteProperty(headers, AGENT_TOKEN_HEADER);
    if (adm.decision === 'allow' && audience && this.#o.tokenFor) {
      let token: string;
      try {
        token = await this.#o.tokenFor(audience);
      } catch {
        this.#deny(
          { res, close: unread() },
          facts,
          {
            status: 503,
            reason: 'identity_unavailable',
            missing: 'the agent identity for this destination is not available; nothing was sent',
            rule: adm.rule,
          },
          t,
        );
        return;
      }
      // To an agent: always in the identity header, overwriting whatever the app sent there (the callee's gate
      // reads it first), and the app's own Authorization goes through untouched.
      if (peer || headers.authorization) headers[AGENT_TOKEN_HEADER] = token;
      else headers.authorization = `Bearer ${token}`;
    }
    forwardHttp(this.#core, req, res, request, adm, headers, t, expect, dialPort);
  }

  /**
   * Sets the brokered credential of the rule that allowed the request, replacing whatever the agent sent in that
   * header. Only for requests a rule allowed (never would_deny traffic); a value that is not here refuses the
   * request rather than sending it without (the upstream would see the agent's dummy and the agent learn nothing).
   * The credential goes out only inside TLS the sidecar terminated and verifies upstream (inspected HTTPS): plain
   * HTTP in any form (absolute-form, inside a CONNECT tunnel, a ws:// upgrade) is refused, with no opt-in.
   */
  #setCredential(
    adm: Extract<Admission, { allow: true }>,
    request: CanonicalRequest,
    headers: Record<string, string>,
  ): { status: number; reason: string; missing: string; rule: CompiledRule | undefined } | undefined {
    const c = adm.decision === 'allow' ? adm.rule?.credentials : undefined;
    if (!c) return undefined;
    if (!request.tls) {
      return {
        status: 403,
        reason: 'credential_requires_tls',
        missing: `rule ${adm.rule?.rule ?? ''} brokers a credential, which is sent only over HTTPS the sidecar inspects; use https://${request.authority} through the proxy (this ${request.kind === 'upgrade' ? 'upgrade' : 'request'} is plain HTTP); nothing was sent`,
        rule: adm.rule,
      };
    }
    const header = this.#o.credentialFor?.(c);
    if (!header) {
      return {
        status: 503,
        reason: 'credential_unavailable',
        missing: `the credential ${c.secret}/${c.key} of rule ${adm.rule?.rule ?? ''} is not available (the Secret or key is missing, the Secret lacks the label agentfence.io/credential=true, or it has not reached this sidecar yet); nothing was sent`,
        rule: adm.rule,
      };
    }
    headers[header.name] = header.value;
    return undefined;
  }

  /** Reads a body for inspection within the per-body limit and the global budget of buffered bodies. */
  #readBody(
    req: IncomingMessage,
    res: ServerResponse,
    limit: number,
    expect: boolean,
  ): Promise<Buffer | 'too_large' | 'budget'> {
    const budget = this.#o.maxBufferedBodyBytes ?? 8 * 1024 * 1024;
    const declared = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    if (declared !== undefined && declared > limit) return Promise.resolve('too_large');
    let reserved = 0;
    const reserve = (n: number): boolean => {
      if (this.#buffered + n > budget) return false;
      this.#buffered += n;
      reserved += n;
      return true;
    };
    res.once('close', () => {
      this.#buffered -= reserved;
      reserved = 0;
    });
    if (declared !== undefined && !reserve(declared)) return Promise.resolve('budget');
    if (expect) res.writeContinue();
    return new Promise((resolve) => {
      // A declared length is read straight into one buffer of that size (no chunk list, no second copy).
      const into = declared === undefined ? undefined : Buffer.allocUnsafe(declared);
      const chunks: Buffer[] = [];
      let size = 0;
      const stop = (verdict: 'too_large' | 'budget'): void => {
        req.pause();
        req.removeAllListeners('data');
        resolve(verdict);
      };
      const whole = (): Buffer => (into ? into.subarray(0, size) : Buffer.concat(chunks, size));
      req.on('data', (chunk: Buffer) => {
        if (size + chunk.length > limit) {
          stop('too_large');
          return;
        }
        if (into) chunk.copy(into, size);
        else if (reserve(chunk.length)) chunks.push(chunk);
        else {
          stop('budget');
          return;
        }
        size += chunk.length;
      });
      req.on('end', () => resolve(whole()));
      req.on('close', () => resolve(whole()));
    });
  }

  async #onUpgrade(req: IncomingMessage, client: Duplex, head: Buffer, tunnel: TunnelTarget | undefined) {
    const t = startTiming();
    const c = canonicalRequest(req, tunnel, 'upgrade');
    if (!c.ok) {
      this.#deny({ socket: client }, c.facts, { ...c, rule: undefined }, t);
      return;
    }
    const { request, headers } = c;
    const facts = { method: request.method, host: request.host, port: request.port, path: request.path };
    const adm = await admit(request, this.#pipeline());
    if (!adm.allow) {
      this.#deny({ socket: client }, facts, adm, t);
      return;
    }
    // Another agent's gate refuses upgrades, and this path would dial its app port without the caller's token:
    // refused here with the reason, before anything is sent (agent-to-agent WebSocket is not gated yet).
    if (adm.rule?.peers?.get(adm.address)) {
      const missing = 'WebSocket and other upgrades to another agent are not supported: its gate admits plain HTTP';
      this.#deny(
        { socket: client },
        facts,
        { status: 501, reason: 'upgrade_to_agent_not_supported', missing, rule: adm.rule },
        t,
      );
      return;
    }
    const withoutCredential = this.#setCredential(adm, request, headers);
    if (withoutCredential) {
      this.#deny({ socket: client }, facts, withoutCredential, t);
      return;
    }
    const refusal = (status: number, reason: string, missing: string): Refusal =>
      this.#refusal(facts, status, reason, missing, adm.revision);
    forwardUpgrade(this.#core, client, head, request, req.headers.upgrade ?? '', headers, adm, t, refusal);
  }

  async #onConnect(req: IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    const t = startTiming();
    const [rawHost, rawPort] = splitAuthority(req.url ?? '');
    const host = rawHost ? normalizeHost(rawHost) : undefined;
    const port = rawPort !== undefined && /^\d{1,5}$/.test(rawPort) ? Number(rawPort) : NaN;
    const facts = { method: 'CONNECT', host: host ?? '', port: Number.isFinite(port) ? port : 0, path: '' };
    if (!host || !Number.isInteger(port) || port < 1 || port > 65535) {
      this.#deny(
        { socket: client },
        facts,
        { status: 400, reason: 'malformed_target', missing: 'CONNECT needs host:port', rule: undefined },
        t,
      );
      return;
    }
    const request: CanonicalRequest = {
      kind: 'connect',
      method: 'CONNECT',
      host,
      port,
      path: '',
      query: '',
      authority: canonicalAuthority(host, port, 0),
      overrides: [],
      framing: { kind: 'none' },
    };
    const adm = await admit(request, this.#pipeline());
    if (!adm.allow) {
      this.#deny({ socket: client }, facts, adm, t);
      return;
    }
    const grant = { decision: adm.decision, reason: adm.reason, rule: adm.rule, revision: adm.revision };
    const refusal = (status: number, reason: string, missing: string): Refusal =>
      this.#refusal(facts, status, reason, missing, adm.revision);
    if (!adm.inspect) {
      blindTunnel(this.#core, client, head, adm.address, { ...facts, tls: 'passthrough' }, grant, t, refusal);
      return;
    }
    this.#inspect(client, head, { host, port }, facts, { ...grant, reason: 'inspected_tunnel' }, t);
  }

  /**
   * A tunnel to a destination whose rules need L7 checks: plain HTTP/1.x inside it is handed to the inner
   * HTTP server (every request judged by the pipeline); anything else is refused and audited.
   */
  #inspect(
    client: Duplex,
    head: Buffer,
    target: TunnelTarget,
    facts: AuditFacts,
    grant: { decision: 'allow' | 'would_deny'; reason: string; rule: CompiledRule | undefined; revision: string },
    t: Timing,
  ): void {
    let closed = false;
    let intercepted = false;
    /** While the TLS handshake runs, its outcome (not the socket's close) says why the tunnel ends. */
    let handshaking = false;
    const tunnel: Tunnel = {
      ...target,
      client,
      carries: 'inspected',
      close: (reason) => {
        if (closed) return;
        closed = true;
        client.destroy();
        this.#core.untrack(tunnel);
        const denied = TUNNEL_REFUSALS.has(reason);
        this.#audit(
          intercepted ? { ...facts, tls: 'inspected' } : facts,
          { decision: denied ? 'deny' : grant.decision, reason, status: denied ? 403 : 200 },
          grant.rule,
          grant.revision,
          t,
        );
        this.#core.observe('connect', t);
      },
    };
    this.#count(grant.decision, grant.reason);
    this.#core.track(tunnel, grant.rule);
    client.on('close', () => {
      if (!handshaking) tunnel.close(grant.reason);
    });
    if (client instanceof Socket) client.setTimeout(this.#core.idleMs, () => tunnel.close('idle_timeout'));
    client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    const start = (first: Buffer): void => {
      const kind = sniff(first[0] ?? 0);
      const ca = this.#o.interception;
      if (kind === 'tls' && ca) {
        intercepted = true;
        handshaking = true;
        this.#intercept(client, first, target, ca, tunnel, () => (handshaking = false));
        return;
      }
      if (kind !== 'http') {
        this.#count('deny', 'l7_rule_needs_plain_http');
        // The client already has its 200: a TLS client gets a TLS alert; the reason is in the audit line.
        if (kind === 'tls') client.write(TLS_HANDSHAKE_FAILURE);
        tunnel.close('l7_rule_needs_plain_http');
        return;
      }
      client.pause();
      client.unshift(first);
      this.#targets.set(client, target);
      this.#inner.emit('connection', client);
      client.resume();
    };
    if (head.length > 0) start(head);
    else {
      client.once('data', start);
      client.resume();
    }
  }

  /** TLS inside an inspected tunnel: terminated with the pod CA, then parsed by the inner server like plain HTTP. */
  #intercept(client: Duplex, first: Buffer, target: TunnelTarget, ca: PodCA, tunnel: Tunnel, done: () => void): void {
    terminateTls(client, first, target.host, ca, this.#o.tlsHandshakeTimeoutMs ?? 10_000).then(
      (result) => {
        done();
        if (!result.ok) {
          this.#count('deny', result.reason);
          this.#o.logger.info('tls interception refused', {
            reason: result.reason,
            detail: result.detail,
            host: target.host,
            port: target.port,
          });
          tunnel.close(result.reason);
          return;
        }
        const socket = result.socket;
        if (client.destroyed) {
          socket.destroy();
          tunnel.close('inspected_tunnel');
          return;
        }
        // The tunnel (revocation, expiry, idle) owns the raw socket; closing it ends the TLS stream too.
        socket.on('close', () => tunnel.close('inspected_tunnel'));
        this.#targets.set(socket, { ...target, tls: true });
        this.#inner.emit('connection', socket);
      },
      (err: unknown) => {
        done();
        this.#o.logger.error('tls interception failed', { err });
        tunnel.close('tls_handshake_failed');
      },
    );
  }

  #onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    socket.on('error', ignore);
    // A parse error while a request is in flight on this connection: a second response would corrupt the
    // first, so none is written.
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    // A TLS ClientHello sent to the plain-HTTP proxy port (a client configured with an https:// proxy URL):
    // answered in its own protocol, a TLS alert, rather than HTTP bytes it would read as a broken record.
    const raw = (err as NodeJS.ErrnoException & { rawPacket?: Buffer }).rawPacket;
    if (raw?.[0] === 0x16 && (this.#inFlight.get(socket) ?? 0) === 0) {
      this.#count('deny', 'tls_to_plain_proxy_port');
      socket.end(TLS_HANDSHAKE_FAILURE);
      return;
    }
    if ((this.#inFlight.get(socket) ?? 0) > 0) {
      // Whatever follows on this connection is never read; the response in flight completes, then it closes.
      this.#closeWhenIdle.add(socket);
      return;
    }
    const code = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const text = code === 431 ? 'Request Header Fields Too Large' : code === 408 ? 'Request Timeout' : 'Bad Request';
    const body = JSON.stringify({ error: 'bad_request', message: `${text}: ${err.code ?? 'malformed request'}` });
    socket.end(
      `HTTP/1.1 ${code} ${text}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  }
}
