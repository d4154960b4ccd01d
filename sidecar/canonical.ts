/**
 * The canonical request: the one form of a request that the policy judges and that the upstream receives.
 * Nothing the client sent is forwarded beside it: the authority is the one that was checked, the path is the
 * normalized path that was matched, and the framing is the proxy's own.
 *
 * Path rules (RFC 3986 normalization, refusing what upstream parsers disagree about):
 *  - percent-encoded unreserved characters are decoded (`%7E` → `~`, `%41` → `A`);
 *  - other percent-encodings are kept encoded, hex upper-cased (`%2f`-style reserved characters are not
 *    decoded, so `%3F`, `%23`, `%20`, `%C3%A9` reach the upstream as encoded);
 *  - raw bytes that may not appear in a path (non-ASCII, `"`, `<`, `{`…) are percent-encoded;
 *  - empty segments collapse and plain `.`/`..` segments are resolved;
 *  - refused as `ambiguous_path`: `%2F` and `%5C` (an encoded separator), a raw `\`, `%25` followed by two
 *    hex digits (double encoding), encoded control characters and NUL, a dot segment written with an encoded
 *    dot (`%2e`, `.%2E`), a dot segment carrying parameters (`..;x` or `..%3Bx`, which Java servers treat as
 *    `..`), and encoded bytes that are not UTF-8 (overlong `%C0%AE` is a `.` to lenient decoders);
 *  - a fragment (`#`) anywhere in the target is refused as `malformed_target` (never turned into a query).
 */
import { AGENT_TOKEN_HEADER } from '../lib/identity/claims.ts';

export type TargetError = { error: 'ambiguous_path' | 'malformed_target'; detail: string };

const HEX = '0123456789ABCDEF';
/** Characters allowed raw in a path segment (pchar minus `%`): unreserved, sub-delims, `:` and `@`. */
const PCHAR = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@")
  PCHAR[c.charCodeAt(0)] = 1;
const UNRESERVED = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1;

function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 65 && code <= 70) return code - 55;
  if (code >= 97 && code <= 102) return code - 87;
  return -1;
}

const pct = (byte: number): string => `%${HEX[byte >> 4] ?? '0'}${HEX[byte & 15] ?? '0'}`;

/** The byte encoded at text[i] (`%XX`), or -1. */
function encodedByte(text: string, i: number): number {
  if (text.charCodeAt(i) !== 37) return -1;
  const hi = hexValue(text.charCodeAt(i + 1));
  const lo = hexValue(text.charCodeAt(i + 2));
  return hi < 0 || lo < 0 ? -1 : (hi << 4) | lo;
}

const ambiguous = (detail: string): TargetError => ({ error: 'ambiguous_path', detail });

/**
 * The common case, checked in one pass without building anything: only raw path characters, no encoding,
 * no empty segment, no segment starting with a dot (so no dot segment). Such a path is its own canonical form.
 */
function isPlainCanonical(raw: string): boolean {
  if (raw.charCodeAt(0) !== 47) return false;
  let prev = 47;
  for (let i = 1; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if (code === 47) {
      if (prev === 47) return false;
    } else if (code >= 128 || !PCHAR[code] || (code === 46 && prev === 47)) return false;
    prev = code;
  }
  return true;
}

/**
 * The canonical path of a request path (no query). `raw` holds one character per byte (Node decodes the
 * request line as latin1).
 */
export function canonicalPath(raw: string): string | TargetError {
  if (isPlainCanonical(raw)) return raw;
  if (raw.charCodeAt(0) !== 47) return { error: 'malformed_target', detail: 'the path must start with /' };
  const out: string[] = [];
  let segment = '';
  let encodedDot = false;
  const close = (): TargetError | undefined => {
    // Parameters start at `;`, written raw or encoded (servers that decode before splitting them off read
    // `..%3B` as `..;`).
    const cut = segment.search(/;|%3B/);
    const bare = cut < 0 ? segment : segment.slice(0, cut);
    if (bare === '.' || bare === '..') {
      if (encodedDot) return ambiguous(`a dot segment written with an encoded dot (${segment})`);
      if (bare !== segment) return ambiguous(`a dot segment with parameters (${segment})`);
      if (bare === '..') out.pop();
    } else if (segment !== '') out.push(segment);
    segment = '';
    encodedDot = false;
    return undefined;
  };
  for (let i = 1; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if (code === 47) {
      const err = close();
      if (err) return err;
    } else if (code === 37) {
      const byte = encodedByte(raw, i);
      if (byte < 0) return ambiguous('a % that is not followed by two hex digits');
      i += 2;
      if (byte < 128 && UNRESERVED[byte]) {
        if (byte === 46) encodedDot = true;
        segment += String.fromCharCode(byte);
      } else if (byte === 47 || byte === 92) return ambiguous('an encoded path separator (%2F or %5C)');
      else if (byte < 32 || byte === 127) return ambiguous('an encoded control character or NUL');
      else if (byte === 37 && encodedByte(`%${raw.slice(i + 1, i + 3)}`, 0) >= 0)
        return ambiguous('a double percent-encoding (%25 followed by hex digits)');
      else segment += pct(byte);
    } else if (code === 92) return ambiguous('a backslash, which some servers read as /');
    else if (code === 35) return { error: 'malformed_target', detail: 'a fragment (#) in the request target' };
    else if (code < 128 && PCHAR[code]) segment += String.fromCharCode(code);
    else if (code < 32 || code === 127 || code > 255)
      return { error: 'malformed_target', detail: 'a control character in the path' };
    else segment += pct(code);
  }
  const trailing = raw.length > 1 && raw.charCodeAt(raw.length - 1) === 47;
  const err = close();
  if (err) return err;
  const path = `/${out.join('/')}${trailing && out.length > 0 ? '/' : ''}`;
  // Decoding unreserved characters can complete a double encoding (%25%32%65 → %252e): refused too.
  if (path.includes('%25') && /%25[0-9A-Fa-f]{2}/.test(path)) {
    return ambiguous('a double percent-encoding (%25 followed by hex digits)');
  }
  if (/%[89A-F]/.test(path) && !isUtf8(path)) {
    return ambiguous(
      'percent-encoded bytes that are not UTF-8 (overlong forms such as %C0%AE read as . on some servers)',
    );
  }
  return path;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Whether the bytes a canonical path encodes (non-ASCII always percent-encoded there) are valid UTF-8. */
function isUtf8(path: string): boolean {
  const bytes: number[] = [];
  for (let i = 0; i < path.length; i++) {
    const byte = encodedByte(path, i);
    if (byte >= 0) {
      bytes.push(byte);
      i += 2;
    } else bytes.push(path.charCodeAt(i));
  }
  try {
    UTF8.decode(Uint8Array.from(bytes));
    return true;
  } catch {
    return false;
  }
}

/**
 * The canonical query (with its leading `?`, or ''): percent-encodings upper-cased, a stray `%` and bytes
 * that may not appear raw encoded. A fragment (`#`) never belongs in a request target and is refused.
 */
export function canonicalQuery(raw: string): string | TargetError {
  if (raw === '') return '';
  let out = '?';
  for (let i = 1; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if (code === 37) {
      const byte = encodedByte(raw, i);
      if (byte < 0) out += '%25';
      else {
        out += pct(byte);
        i += 2;
      }
    } else if (code === 35) return { error: 'malformed_target', detail: 'a fragment (#) in the request target' };
    else if ((code < 128 && PCHAR[code]) || code === 47 || code === 63) out += String.fromCharCode(code);
    else if (code < 32 || code === 127 || code > 255)
      return { error: 'malformed_target', detail: 'a control character in the query' };
    else out += pct(code);
  }
  return out;
}

/**
 * Whether a canonical query carries a `_method` parameter (a method override some frameworks honour). Keys are
 * compared decoded (`%5F%6Dethod` is `_method` to PHP and Rack), pairs split at `&` and `;` (older Rack).
 */
export function queryOverridesMethod(query: string): boolean {
  // Cheap exit for the common query: no `method` and no encoding that could spell it.
  if (!/method|%/i.test(query)) return false;
  for (const pair of query.slice(1).split(/[&;]/)) {
    const raw = pair.split('=', 1)[0] ?? '';
    if (!raw.includes('%') && !/method/i.test(raw)) continue;
    let key: string;
    try {
      key = decodeURIComponent(raw.replace(/\+/g, ' '));
    } catch {
      // Not decodable as UTF-8: what a server makes of it cannot be told.
      if (/%5f|_/i.test(raw)) return true;
      continue;
    }
    if (key.trim().toLowerCase() === '_method') return true;
  }
  return false;
}

/** The authority as the upstream must see it in `Host`: IPv6 literals in brackets, the port unless default. */
export function canonicalAuthority(host: string, port: number, defaultPort = 80): string {
  const h = host.includes(':') ? `[${host}]` : host;
  return port === defaultPort ? h : `${h}:${port}`;
}

/** `http://host[:port]/path?query` → parts; undefined for anything else (origin-form, https, garbage). */
export function parseAbsoluteHttp(
  url: string,
): { host: string; port: number; path: string; query: string } | undefined {
  if (!/^http:\/\//i.test(url)) return undefined;
  const rest0 = url.slice(7);
  const end = rest0.search(/[/?#]/);
  const authority = end < 0 ? rest0 : rest0.slice(0, end);
  if (authority.includes('@')) return undefined; // no userinfo in proxy targets
  let rest = end < 0 ? '/' : rest0.slice(end);
  if (rest.startsWith('?') || rest.startsWith('#')) rest = `/${rest}`;
  // Split at `?` only: a `#` before it stays in the path (and is refused there, like one in the query).
  const q = rest.indexOf('?');
  const [host, portText] = splitAuthority(authority);
  const port = portText === undefined ? 80 : /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host, port, path: q < 0 ? rest : rest.slice(0, q), query: q < 0 ? '' : rest.slice(q) };
}

export function splitAuthority(authority: string): [string | undefined, string | undefined] {
  if (authority.startsWith('[')) {
    const end = authority.indexOf(']');
    if (end < 0) return [undefined, undefined];
    const port = authority.slice(end + 1);
    return [authority.slice(0, end + 1), port.startsWith(':') ? port.slice(1) : port === '' ? undefined : ''];
  }
  const colon = authority.lastIndexOf(':');
  return colon < 0 ? [authority, undefined] : [authority.slice(0, colon), authority.slice(colon + 1)];
}

/** Hop-by-hop headers, proxy credentials and our identity header: never forwarded in either direction. */
export const HOP_BY_HOP = new Set([
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

/** Headers the proxy sets itself on a forwarded request: what the client sent for them is dropped. */
const REPLACED = new Set(['host', 'content-length', 'expect']);
/** Framing and routing headers that `Connection` may never nominate for removal. */
const PROTECTED = new Set(['host', 'content-length', 'transfer-encoding']);
/**
 * Headers a request carries at most once. Node's parser keeps the first copy (what the proxy judges) while a
 * joined `a, b` is what would be forwarded, and upstreams read that differently: a second copy is refused.
 */
const SINGLETON = new Set([
  'authorization',
  'content-type',
  'from',
  'if-modified-since',
  'if-unmodified-since',
  'max-forwards',
  'referer',
  'user-agent',
]);
/** Headers by which some frameworks let a request claim another method. */
export const METHOD_OVERRIDES = new Set(['x-http-method-override', 'x-http-method', 'x-method-override']);

/** The names `Connection` nominates (besides keep-alive/close), or an error when it names a protected one. */
function nominated(raw: string[]): Set<string> | string | undefined {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] ?? '';
    if (name.length !== 10 || name.toLowerCase() !== 'connection') continue;
    for (const token of (raw[i + 1] ?? '').split(',')) {
      const t = token.trim().toLowerCase();
      if (PROTECTED.has(t)) return t;
      if (t && !HOP_BY_HOP.has(t)) (named ??= new Set()).add(t);
    }
  }
  return named;
}

/** Response headers for the client: rawHeaders without hop-by-hop headers and what `Connection` names. */
export function endToEnd(raw: string[]): string[] {
  const named = nominated(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] ?? '').toLowerCase();
    if (HOP_BY_HOP.has(name)) continue;
    if (typeof named === 'string' ? name === named : named?.has(name)) continue;
    out.push(name, raw[i + 1] ?? '');
  }
  return out;
}

export type Framing = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' };

export interface RequestHead {
  /** End-to-end headers to forward (repeated ones joined as HTTP allows; cookies with '; '). */
  headers: Record<string, string>;
  /** Method-override headers present (judged by the pipeline). */
  overrides: string[];
}

/**
 * The forwarded request's headers, built from the client's: hop-by-hop and nominated headers dropped,
 * `Host`, `Content-Length`, `Transfer-Encoding` and `Expect` dropped (the proxy sets them), then the checked
 * authority as `Host`. Errors name what is refused.
 */
export interface HeadError {
  error: 'bad_connection_header' | 'duplicate_header';
  detail: string;
}

export function requestHead(raw: string[], authority: string): RequestHead | HeadError {
  const named = nominated(raw);
  if (typeof named === 'string')
    return { error: 'bad_connection_header', detail: `Connection may not nominate ${named}` };
  const headers: Record<string, string> = {};
  const overrides: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] ?? '').toLowerCase();
    if (HOP_BY_HOP.has(name) || REPLACED.has(name) || named?.has(name)) continue;
    const value = raw[i + 1] ?? '';
    if (METHOD_OVERRIDES.has(name)) overrides.push(value.trim().toUpperCase());
    const prior = headers[name];
    if (prior !== undefined && SINGLETON.has(name))
      return { error: 'duplicate_header', detail: `${name} may appear only once` };
    headers[name] = prior === undefined ? value : name === 'cookie' ? `${prior}; ${value}` : `${prior}, ${value}`;
  }
  headers.host = authority;
  return { headers, overrides };
}

/** The framing of a parsed request (Node's parser has already refused CL+TE conflicts and bad lengths). */
export function framingOf(headers: { 'transfer-encoding'?: string; 'content-length'?: string }): Framing {
  if (headers['transfer-encoding'] !== undefined) return { kind: 'chunked' };
  const cl = headers['content-length'];
  if (cl !== undefined) return { kind: 'length', length: Number(cl) };
  return { kind: 'none' };
}

/** Sets the proxy's own framing headers for a forwarded body. */
export function applyFraming(headers: Record<string, string>, framing: Framing): void {
  if (framing.kind === 'length') headers['content-length'] = String(framing.length);
  else if (framing.kind === 'chunked') headers['transfer-encoding'] = 'chunked';
}
