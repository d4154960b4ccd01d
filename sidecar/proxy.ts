/**
 * The egress fence: an explicit forward proxy for plain HTTP (absolute-form requests) and CONNECT tunnels.
 * Deny by default. For every request: decide on the destination (and for plain HTTP method, path and MCP tool),
 * resolve and check the address, then connect to exactly that address through a keep-alive pool. Denials answer
 * 403 with a JSON body naming what was missing and never touch the destination. One audit line per decision.
 *
 * Data-path care (PERFORMANCE.md): matchers are compiled once per snapshot; upstream connections are pooled per
 * address; CONNECT is piped at the socket level; audit writes are batched and never block.
 */
import { randomUUID } from 'node:crypto';
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { connect, type Socket } from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Registry } from 'prom-client';
import { AGENT_TOKEN_HEADER } from '../lib/identity/claims.ts';
import type { Logger } from '../lib/log.ts';
import { counter, gauge, histogram } from '../lib/metrics.ts';
import { resolveChecked, systemResolver, type Resolver } from './addresses.ts';
import type { AuditRecord, AuditSink } from './audit.ts';
import { normalizeHost, normalizePath, refusedMcpTool, type CompiledRule, type Matcher } from './match.ts';

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
  audit: AuditSink;
  logger: Logger;
  registry: Registry;
  resolver?: Resolver;
  now?: () => number;
  /** Largest MCP request body inspected; larger ones are refused (default 1 MiB). */
  maxMcpBodyBytes?: number;
}

const HOP_BY_HOP = new Set([
  'connection',
  'proxy-connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
  AGENT_TOKEN_HEADER,
]);

/** No rule, no snapshot: an empty rule for the address check of would-deny (audit) traffic. */
const NO_RULE: CompiledRule = { policy: '', rule: '', mode: 'Audit', cidrs: [], ports: [] };

interface Tunnel {
  host: string;
  port: number;
  client: Duplex;
  upstream: Socket;
}

export class FenceProxy {
  readonly server: Server;
  readonly #o: ProxyOptions;
  readonly #pools = new Map<string, Agent>();
  readonly #tunnels = new Set<Tunnel>();
  readonly #resolver: Resolver;
  readonly #now: () => number;
  readonly #requests;
  readonly #duration;
  readonly #upstreamErrors;
  readonly #tunnelsOpen;
  readonly #decisionCounters = new Map<string, { inc(): void }>();
  readonly #httpDuration: { observe(v: number): void };
  readonly #connectDuration: { observe(v: number): void };

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
    this.#duration = histogram(r, {
      name: 'agentfence_sidecar_request_duration_seconds',
      help: 'Time from request to response end (plain HTTP) or tunnel close (CONNECT), by kind.',
      labelNames: ['kind'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    });
    this.#httpDuration = this.#duration.labels({ kind: 'http' });
    this.#connectDuration = this.#duration.labels({ kind: 'connect' });
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
    this.server = createServer({
      maxHeaderSize: 16 * 1024,
      headersTimeout: 10_000,
      requestTimeout: 300_000,
      keepAliveTimeout: 30_000,
      requireHostHeader: false,
    });
    this.server.on('request', (req, res) => {
      this.#onRequest(req, res).catch((err: unknown) => this.#fail(res, err));
    });
    this.server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#onConnect(req, socket, head).catch((err: unknown) => {
        options.logger.error('tunnel failed', { err });
        socket.destroy();
      });
    });
    // Malformed request lines, oversized headers, smuggling attempts, slow clients: answer and close this
    // connection only; everything else keeps working.
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      const code = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
      const text = code === 431 ? 'Request Header Fields Too Large' : code === 408 ? 'Request Timeout' : 'Bad Request';
      const body = JSON.stringify({ error: 'bad_request', message: `${text}: ${err.code ?? 'malformed request'}` });
      if (socket.writable) {
        socket.end(
          `HTTP/1.1 ${code} ${text}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
        );
      } else socket.destroy();
    });
  }

  async listen(): Promise<{ url: string; port: number }> {
    this.server.listen(this.#o.port, this.#o.host);
    await once(this.server, 'listening');
    const { port } = this.server.address() as AddressInfo;
    return { url: `http://${this.#o.host}:${port}`, port };
  }

  async close(): Promise<void> {
    for (const t of this.#tunnels) {
      t.client.destroy();
      t.upstream.destroy();
    }
    this.server.close();
    this.server.closeAllConnections();
    for (const pool of this.#pools.values()) pool.destroy();
    await once(this.server, 'close').catch(() => undefined);
  }

  /**
   * A new snapshot is in force: tunnels it no longer entitles are closed at once, and idle keep-alive client
   * connections are closed so that no connection outlives the grant it was opened under. Requests in flight
   * finish; every new request is decided under the new snapshot.
   */
  revoke(): void {
    const matcher = this.#o.matcher();
    const now = this.#now();
    let closed = 0;
    for (const t of this.#tunnels) {
      if (matcher?.decideConnect(t, now).allow) continue;
      t.client.destroy();
      t.upstream.destroy();
      closed++;
    }
    // Upstream pools are kept: they hold connections to addresses, and every request is decided anew anyway.
    this.server.closeIdleConnections();
    if (closed > 0) this.#o.logger.info('tunnels closed after revocation', { closed });
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

  #record(
    partial: Partial<AuditRecord> & Pick<AuditRecord, 'decision' | 'reason' | 'method' | 'host' | 'port' | 'path'>,
    started: number,
    id: string,
    rule: CompiledRule | undefined,
    revision: string,
  ): void {
    const agent = this.#o.agent();
    this.#o.audit.write({
      time: new Date(started).toISOString(),
      requestId: id,
      agent: agent.sub,
      pod: agent.pod,
      namespace: agent.namespace,
      policy: rule?.policy ?? '',
      rule: rule?.rule ?? '',
      revision,
      mode: rule?.mode ?? (this.#o.matcher()?.auditOnly ? 'Audit' : 'Enforce'),
      status: 0,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: Math.round((performance.now() - started) * 1000) / 1000,
      ...partial,
    });
  }

  async #onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const startedAt = Date.now();
    const id = randomUUID();
    const target = parseAbsoluteHttp(req.url ?? '');
    const method = req.method ?? 'GET';
    if (!target) {
      this.#count('deny', 'not_a_proxy_request');
      sendJson(res, 400, {
        error: 'bad_request',
        message: req.url?.startsWith('https://')
          ? 'use CONNECT for https:// destinations (set HTTPS_PROXY)'
          : 'this is a forward proxy: send absolute-form requests (http://host/path), e.g. by setting HTTP_PROXY',
      });
      return;
    }
    const path = normalizePath(target.path);
    const host = normalizeHost(target.host);
    if (!host || !path) {
      this.#count('deny', 'malformed_target');
      sendJson(res, 400, { error: 'bad_request', message: 'the request target has an invalid host or path' });
      return;
    }
    if (req.headers.upgrade) {
      this.#count('deny', 'upgrade_not_supported');
      sendJson(res, 501, { error: 'not_implemented', message: 'protocol upgrades are not proxied; use CONNECT' });
      return;
    }
    const matcher = this.#o.matcher();
    const revision = matcher?.revision ?? '';
    const facts = { method, host, port: target.port, path };
    const audit = (p: Partial<AuditRecord> & Pick<AuditRecord, 'decision' | 'reason'>, rule?: CompiledRule): void =>
      this.#record({ ...facts, ...p, time: new Date(startedAt).toISOString() }, started, id, rule, revision);

    const deny = (status: number, reason: string, missing: string, rule?: CompiledRule): void => {
      this.#count('deny', reason);
      const agent = this.#o.agent();
      sendJson(res, status, {
        error: status === 403 ? 'forbidden' : 'unavailable',
        reason,
        request: { method, host, port: target.port, path },
        missing,
        agent: agent.sub,
        revision,
        mode: 'Enforce',
      });
      audit({ decision: 'deny', reason, status }, rule);
      this.#httpDuration.observe((performance.now() - started) / 1000);
    };

    if (!matcher) {
      deny(
        403,
        'no_entitlements',
        'no current entitlement snapshot from the controller: everything is denied until one arrives',
      );
      return;
    }
    let decision = matcher.decideHttp(facts, this.#now());
    let body: Buffer | undefined;
    if (decision.allow && decision.needsMcpCheck) {
      const limit = this.#o.maxMcpBodyBytes ?? 1024 * 1024;
      body = await readBody(req, limit);
      if (!body) {
        deny(
          413,
          'mcp_body_too_large',
          `MCP requests larger than ${limit} bytes are not inspected and therefore refused`,
          decision.rule,
        );
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        parsed = undefined;
      }
      const refused =
        parsed === undefined
          ? '(invalid JSON)'
          : decision.rule.mcp
            ? refusedMcpTool(parsed, decision.rule.mcp.tools)
            : undefined;
      if (refused !== undefined) {
        decision = {
          allow: false,
          reason: 'mcp_tool_not_allowed',
          missing: `tool ${refused} is not in the allowed list of rule ${decision.rule.rule}`,
          rule: decision.rule,
        };
      }
    }
    let wouldDeny: { reason: string } | undefined;
    if (!decision.allow) {
      if (!matcher.auditOnly) {
        deny(403, decision.reason, decision.missing, decision.rule);
        return;
      }
      wouldDeny = { reason: decision.reason };
    }
    const rule = decision.allow ? decision.rule : (decision.rule ?? NO_RULE);
    const resolved = await resolveChecked(host, rule, this.#resolver);
    if (!resolved.ok) {
      // Internal and metadata addresses stay closed even in Audit mode.
      deny(resolved.reason === 'dns_failure' ? 502 : 403, resolved.reason, resolved.detail, decision.rule);
      return;
    }

    const headers = forwardHeaders(req.rawHeaders);
    if (!headers.host) headers.host = target.port === 80 ? host : `${host}:${target.port}`;
    if (decision.allow && rule.audience && this.#o.tokenFor) {
      let token: string;
      try {
        token = await this.#o.tokenFor(rule.audience);
      } catch {
        deny(
          503,
          'identity_unavailable',
          'the agent identity for this destination is not available; nothing was sent',
          rule,
        );
        return;
      }
      if (headers.authorization) headers[AGENT_TOKEN_HEADER] = token;
      else headers.authorization = `Bearer ${token}`;
    }

    const decisionLabel = wouldDeny ? 'would_deny' : 'allow';
    const reasonLabel = wouldDeny?.reason ?? 'allowed';
    this.#count(decisionLabel, reasonLabel);
    let bytesIn = body?.length ?? 0;
    let bytesOut = 0;
    const upstream = httpRequest({
      host: resolved.address,
      port: target.port,
      method,
      path: path + target.query,
      headers,
      agent: this.#pool(resolved.address, target.port),
      setHost: false,
    });
    upstream.on('response', (up) => {
      res.writeHead(up.statusCode ?? 502, up.statusMessage, endToEnd(up.rawHeaders));
      // Count bytes without a per-chunk listener when the length is declared (the common case).
      const declared = Number(up.headers['content-length']);
      if (Number.isFinite(declared)) bytesOut = declared;
      else up.on('data', (chunk: Buffer) => (bytesOut += chunk.length));
      up.pipe(res);
      up.on('end', () => {
        audit(
          { decision: decisionLabel, reason: reasonLabel, status: up.statusCode ?? 0, bytesIn, bytesOut },
          rule === NO_RULE ? undefined : rule,
        );
        this.#httpDuration.observe((performance.now() - started) / 1000);
      });
    });
    upstream.on('error', (err) => {
      this.#upstreamErrors.inc();
      if (!res.headersSent)
        sendJson(res, 502, { error: 'bad_gateway', message: `upstream ${host}:${target.port} failed: ${err.message}` });
      else res.destroy();
      audit({ decision: decisionLabel, reason: 'upstream_error', status: 502, bytesIn, bytesOut }, rule);
    });
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    if (body) upstream.end(body);
    else {
      const declared = Number(req.headers['content-length'] ?? 0);
      if (Number.isFinite(declared) && !req.headers['transfer-encoding']) bytesIn = declared;
      else req.on('data', (chunk: Buffer) => (bytesIn += chunk.length));
      req.pipe(upstream);
    }
  }

  async #onConnect(req: IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    const started = performance.now();
    const id = randomUUID();
    const [rawHost, rawPort] = splitAuthority(req.url ?? '');
    const host = rawHost ? normalizeHost(rawHost) : undefined;
    const port = Number(rawPort);
    const reject = (status: number, reason: string, missing: string, rule?: CompiledRule, revision = ''): void => {
      this.#count('deny', reason);
      const agent = this.#o.agent();
      const body = JSON.stringify({
        error: status === 403 ? 'forbidden' : 'bad_request',
        reason,
        request: { method: 'CONNECT', host: host ?? rawHost, port },
        missing,
        agent: agent.sub,
        revision,
        mode: 'Enforce',
      });
      client.end(
        `HTTP/1.1 ${status} ${status === 403 ? 'Forbidden' : status === 502 ? 'Bad Gateway' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
      if (host)
        this.#record(
          { decision: 'deny', reason, method: 'CONNECT', host, port, path: '', status },
          started,
          id,
          rule,
          revision,
        );
    };
    if (!host || !Number.isInteger(port) || port < 1 || port > 65535) {
      reject(400, 'malformed_target', 'CONNECT needs host:port');
      return;
    }
    const matcher = this.#o.matcher();
    if (!matcher) {
      reject(
        403,
        'no_entitlements',
        'no current entitlement snapshot from the controller: everything is denied until one arrives',
      );
      return;
    }
    const decision = matcher.decideConnect({ host, port }, this.#now());
    let wouldDeny: string | undefined;
    if (!decision.allow) {
      if (!matcher.auditOnly) {
        reject(403, decision.reason, decision.missing, decision.rule, matcher.revision);
        return;
      }
      wouldDeny = decision.reason;
    }
    const rule = decision.allow ? decision.rule : (decision.rule ?? NO_RULE);
    const resolved = await resolveChecked(host, rule, this.#resolver);
    if (!resolved.ok) {
      reject(
        resolved.reason === 'dns_failure' ? 502 : 403,
        resolved.reason,
        resolved.detail,
        decision.rule,
        matcher.revision,
      );
      return;
    }
    const upstream = connect({ host: resolved.address, port, noDelay: true });
    const tunnel: Tunnel = { host, port, client, upstream };
    let bytesIn = head.length;
    let bytesOut = 0;
    let established = false;
    const finish = (reason: string, status: number): void => {
      if (!this.#tunnels.delete(tunnel)) return;
      this.#tunnelsOpen.dec();
      this.#record(
        {
          decision: wouldDeny ? 'would_deny' : 'allow',
          reason,
          method: 'CONNECT',
          host,
          port,
          path: '',
          status,
          bytesIn,
          bytesOut,
        },
        started,
        id,
        rule === NO_RULE ? undefined : rule,
        matcher.revision,
      );
      this.#connectDuration.observe((performance.now() - started) / 1000);
    };
    this.#tunnels.add(tunnel);
    this.#tunnelsOpen.inc();
    this.#count(wouldDeny ? 'would_deny' : 'allow', wouldDeny ?? 'allowed');
    upstream.once('connect', () => {
      established = true;
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) upstream.write(head);
      client.on('data', (c: Buffer) => (bytesIn += c.length));
      upstream.on('data', (c: Buffer) => (bytesOut += c.length));
      client.pipe(upstream);
      upstream.pipe(client);
    });
    upstream.on('error', () => {
      this.#upstreamErrors.inc();
      if (!established) {
        this.#tunnels.delete(tunnel);
        this.#tunnelsOpen.dec();
        reject(502, 'upstream_error', `cannot connect to ${host}:${port}`, rule, matcher.revision);
      } else client.destroy();
    });
    client.on('error', () => upstream.destroy());
    upstream.on('close', () => {
      client.destroy();
      finish(wouldDeny ?? 'allowed', 200);
    });
    client.on('close', () => {
      upstream.destroy();
      finish(wouldDeny ?? 'allowed', 200);
    });
  }

  #fail(res: ServerResponse, err: unknown): void {
    this.#o.logger.error('request failed', { err });
    if (!res.headersSent)
      sendJson(res, 500, { error: 'internal', message: 'the sidecar failed to handle this request' });
    else res.destroy();
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

/** `http://host[:port]/path?query` → parts; undefined for anything else (origin-form, https, garbage). */
export function parseAbsoluteHttp(
  url: string,
): { host: string; port: number; path: string; query: string } | undefined {
  if (!url.startsWith('http://')) return undefined;
  const slash = url.indexOf('/', 7);
  const authority = slash < 0 ? url.slice(7) : url.slice(7, slash);
  if (authority.includes('@')) return undefined; // no userinfo in proxy targets
  const rest = slash < 0 ? '/' : url.slice(slash);
  const q = rest.indexOf('?');
  const [host, portText] = splitAuthority(authority);
  const port = portText === undefined ? 80 : Number(portText);
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host, port, path: q < 0 ? rest : rest.slice(0, q), query: q < 0 ? '' : rest.slice(q) };
}

function splitAuthority(authority: string): [string | undefined, string | undefined] {
  if (authority.startsWith('[')) {
    const end = authority.indexOf(']');
    if (end < 0) return [undefined, undefined];
    const port = authority.slice(end + 1);
    return [authority.slice(0, end + 1), port.startsWith(':') ? port.slice(1) : port === '' ? undefined : ''];
  }
  const colon = authority.lastIndexOf(':');
  return colon < 0 ? [authority, undefined] : [authority.slice(0, colon), authority.slice(colon + 1)];
}

/**
 * rawHeaders without hop-by-hop headers, proxy credentials, our identity header, and whatever the Connection
 * header names. The common Connection values (keep-alive, close) name nothing new, so no set is built then.
 */
function endToEnd(raw: string[]): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]?.toLowerCase() !== 'connection') continue;
    for (const token of (raw[i + 1] ?? '').split(',')) {
      const t = token.trim().toLowerCase();
      if (t && !HOP_BY_HOP.has(t)) (named ??= new Set()).add(t);
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] ?? '').toLowerCase();
    if (!HOP_BY_HOP.has(name) && !named?.has(name)) out.push(name, raw[i + 1] ?? '');
  }
  return out;
}

/** Request headers for upstream, as an object (repeated headers joined as HTTP allows; cookies with '; '). */
function forwardHeaders(raw: string[]): Record<string, string> {
  const kept = endToEnd(raw);
  const out: Record<string, string> = {};
  for (let i = 0; i < kept.length; i += 2) {
    const name = kept[i] ?? '';
    const value = kept[i + 1] ?? '';
    const prior = out[name];
    out[name] = prior === undefined ? value : name === 'cookie' ? `${prior}; ${value}` : `${prior}, ${value}`;
  }
  return out;
}

/** Reads a request body up to `limit` bytes; undefined when it is larger. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limit) {
      req.resume();
      resolve(undefined);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        req.destroy();
        resolve(undefined);
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
