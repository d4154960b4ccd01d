/**
 * Refusals, in one shape for every path: a JSON body naming what was missing, and the reason code as the
 * status line's reason phrase too (`HTTP/1.1 403 no_rule_for_destination`), which clients that print only the
 * status line (Python, Go, curl -v) show. Written on a ServerResponse or, for CONNECT and upgrades, raw.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

export interface Refusal {
  status: number;
  reason: string;
  missing: string;
  request: { method: string; host: string; port: number; path?: string };
  agent: string;
  revision: string;
  retryAfterSeconds?: number;
  /** 401: the WWW-Authenticate challenge. */
  authenticate?: string;
}

const ERRORS: Record<number, string> = {
  401: 'unauthorized',
  403: 'forbidden',
  411: 'length_required',
  413: 'payload_too_large',
  429: 'too_many_requests',
};

function payload(r: Refusal): string {
  return JSON.stringify({
    error: ERRORS[r.status] ?? (r.status >= 500 ? 'unavailable' : 'bad_request'),
    reason: r.reason,
    request: r.request,
    missing: r.missing,
    agent: r.agent,
    revision: r.revision,
    mode: 'Enforce',
  });
}

/** A refusal on a ServerResponse; `close` when a request body was left unread (the connection cannot be reused). */
export function sendRefusal(res: ServerResponse, r: Refusal, close: boolean): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const text = payload(r);
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  };
  if (r.retryAfterSeconds) headers['retry-after'] = r.retryAfterSeconds;
  if (r.authenticate) headers['www-authenticate'] = r.authenticate;
  if (close) headers.connection = 'close';
  res.writeHead(r.status, r.reason, headers).end(text);
}

/** A refusal written raw on a socket that left the HTTP server (CONNECT, upgrade), then closed. */
export function writeRawRefusal(socket: Duplex, r: Refusal): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const text = payload(r);
  socket.end(
    `HTTP/1.1 ${r.status} ${r.reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n${r.retryAfterSeconds ? `retry-after: ${r.retryAfterSeconds}\r\n` : ''}connection: close\r\n\r\n${text}`,
  );
}
