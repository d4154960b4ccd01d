/**
 * The canonical request of an HTTP request the proxy received (absolute form, origin form inside an inspected
 * tunnel, or an upgrade), or the refusal that answers it: everything the pipeline judges and the forwarder
 * sends is derived here, from the parsed request line and headers, and nowhere else.
 */
import type { IncomingMessage } from 'node:http';
import {
  canonicalAuthority,
  canonicalPath,
  canonicalQuery,
  framingOf,
  parseAbsoluteHttp,
  queryOverridesMethod,
  requestHead,
} from './canonical.ts';
import type { AuditFacts } from './core.ts';
import { normalizeHost } from './match.ts';
import type { CanonicalRequest } from './pipeline.ts';

/** The destination a tunnel was opened to: requests inside an inspected tunnel are for it. */
export interface TunnelTarget {
  host: string;
  port: number;
  /** The tunnel's TLS was terminated by the sidecar: requests go on over verified TLS to the upstream. */
  tls?: boolean;
}

const BODYLESS = new Set(['HEAD', 'TRACE']);

function formOf(req: IncomingMessage): { form?: 'urlencoded' | 'multipart' | 'json' } {
  const type = (req.headers['content-type'] ?? '').trim().toLowerCase();
  if (type.startsWith('application/x-www-form-urlencoded')) return { form: 'urlencoded' };
  if (type.startsWith('multipart/form-data')) return { form: 'multipart' };
  // Laravel reads `_method` from a JSON body too (its input bag is the JSON object for JSON requests).
  if (/^(application\/([\w.-]+\+)?|text\/)json\b/.test(type)) return { form: 'json' };
  return {};
}

/**
 * What makes the body's bytes read as something else upstream: a content coding other than identity, or a
 * charset other than UTF-8/ASCII (a UTF-7 key `na+AG0-e` is `name` to a server that honours it). A body
 * judged as it stands (MCP, forms) with either is refused: what was judged would not be what is read.
 */
function codingOf(req: IncomingMessage): { coding?: string } {
  const encoding = (req.headers['content-encoding'] ?? '').trim().toLowerCase();
  if (encoding !== '' && encoding !== 'identity') return { coding: `content-encoding ${encoding}` };
  const type = req.headers['content-type'];
  if (type === undefined || !type.includes('=')) return {};
  const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(type)?.[1]?.toLowerCase();
  if (charset === undefined || charset === 'utf-8' || charset === 'utf8' || charset === 'us-ascii') return {};
  return { coding: `charset ${charset}` };
}

export type Canonicalized =
  | { ok: true; request: CanonicalRequest; headers: Record<string, string> }
  | { ok: false; facts: AuditFacts; status: number; reason: string; missing: string };

/**
 * The canonical request, or the refusal that answers it.
 */
export function canonicalRequest(
  req: IncomingMessage,
  tunnel: TunnelTarget | undefined,
  kind: 'http' | 'upgrade',
): Canonicalized {
  const method = req.method ?? 'GET';
  const url = req.url ?? '';
  let target = parseAbsoluteHttp(url);
  if (tunnel && url.startsWith('/')) {
    const q = url.indexOf('?');
    target = {
      host: tunnel.host,
      port: tunnel.port,
      path: q < 0 ? url : url.slice(0, q),
      query: q < 0 ? '' : url.slice(q),
    };
  }
  const unknown = { method, host: tunnel?.host ?? '', port: tunnel?.port ?? 0, path: '' };
  if (!target) {
    return {
      ok: false,
      facts: unknown,
      status: 400,
      reason: 'not_a_proxy_request',
      missing: url.startsWith('https://')
        ? 'use CONNECT for https:// destinations (set HTTPS_PROXY)'
        : 'this is a forward proxy: send absolute-form requests (http://host/path), e.g. by setting HTTP_PROXY',
    };
  }
  const host = normalizeHost(target.host);
  if (!host || (tunnel && (host !== tunnel.host || target.port !== tunnel.port))) {
    return {
      ok: false,
      facts: unknown,
      status: 400,
      reason: 'malformed_target',
      missing: tunnel
        ? `inside a tunnel to ${tunnel.host}:${tunnel.port} every request must be for that destination`
        : 'the request target has an invalid host',
    };
  }
  const path = canonicalPath(target.path);
  const query = typeof path === 'string' ? canonicalQuery(target.query) : '';
  const facts = {
    method,
    host,
    port: target.port,
    path: typeof path === 'string' ? path : target.path.slice(0, 256),
  };
  if (typeof path !== 'string' || typeof query !== 'string') {
    const err = typeof path !== 'string' ? path : (query as Exclude<typeof query, string>);
    return { ok: false, facts, status: 400, reason: err.error, missing: `the path was refused: ${err.detail}` };
  }
  const authority = canonicalAuthority(host, target.port, tunnel?.tls ? 443 : 80);
  const head = requestHead(req.rawHeaders, authority);
  if ('error' in head) return { ok: false, facts, status: 400, reason: head.error, missing: head.detail };
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
    // Other codings would be lost on re-framing (the proxy forwards the de-chunked body, chunked anew).
    return {
      ok: false,
      facts,
      status: 400,
      reason: 'unsupported_transfer_encoding',
      missing: `Transfer-Encoding ${te} is not forwarded; only chunked`,
    };
  }
  const framing = framingOf(req.headers);
  const hasBody = framing.kind === 'chunked' || (framing.kind === 'length' && framing.length > 0);
  if (hasBody && (BODYLESS.has(method) || kind === 'upgrade')) {
    return {
      ok: false,
      facts,
      status: 400,
      reason: 'body_not_allowed',
      missing: `a ${method} request carries no body`,
    };
  }
  const overrides = queryOverridesMethod(query) ? [...head.overrides, '?'] : head.overrides;
  return {
    ok: true,
    request: {
      kind,
      method,
      host,
      port: target.port,
      path,
      query,
      authority,
      overrides,
      framing,
      ...(tunnel?.tls ? { tls: true } : {}),
      ...formOf(req),
      ...codingOf(req),
    },
    headers: head.headers,
  };
}
