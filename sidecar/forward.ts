/**
 * Forwards an admitted request: the canonical request (checked authority as Host, canonical path and query,
 * the proxy's own framing, the canonical MCP body when one was judged) to the checked address through a
 * keep-alive pool, and the response back. Exactly one audit line per request, whatever ends it: the response
 * end, an upstream error, or the client going away mid-stream.
 */
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { applyFraming, endToEnd, type Framing } from './canonical.ts';
import { ignore, type Core, type Timing } from './core.ts';
import type { Admission, CanonicalRequest } from './pipeline.ts';

type Allowed = Extract<Admission, { allow: true }>;

export function forwardHttp(
  core: Core,
  req: IncomingMessage,
  res: ServerResponse,
  canonical: CanonicalRequest,
  adm: Allowed,
  headers: Record<string, string>,
  t: Timing,
  expectContinue: boolean,
  /** The port to connect to when it is not the request's (an agent callee's inbound gate). */
  dialPort: number = canonical.port,
): void {
  const facts = { method: canonical.method, host: canonical.host, port: canonical.port, path: canonical.path };
  const framing: Framing = adm.body ? { kind: 'length', length: adm.body.length } : canonical.framing;
  applyFraming(headers, framing);
  let bytesIn = adm.body?.length ?? (framing.kind === 'length' ? framing.length : 0);
  let bytesOut = 0;
  let done = false;
  const finish = (reason: string, status: number): void => {
    if (done) return;
    done = true;
    core.audit(facts, { decision: adm.decision, reason, status, bytesIn, bytesOut }, adm.rule, adm.revision, t);
    core.observe('http', t);
  };
  core.count(adm.decision, adm.reason);
  const upstream = httpRequest({
    host: adm.address,
    port: dialPort,
    method: canonical.method,
    path: canonical.path + canonical.query,
    headers,
    agent: core.pool(adm.address, dialPort),
    setHost: false,
  });
  upstream.on('response', (up) => {
    up.on('error', ignore);
    const status = up.statusCode ?? 502;
    if (res.destroyed) {
      up.destroy();
      return;
    }
    res.writeHead(status, up.statusMessage, endToEnd(up.rawHeaders));
    // Count bytes without a per-chunk listener when the length is declared (the common case).
    const declared = Number(up.headers['content-length']);
    if (Number.isFinite(declared)) bytesOut = declared;
    else up.on('data', (chunk: Buffer) => (bytesOut += chunk.length));
    up.pipe(res);
    up.on('end', () => finish(adm.reason, status));
    up.on('aborted', () => {
      res.destroy();
      finish('upstream_aborted', status);
    });
    up.on('close', () => {
      if (!up.complete) {
        res.destroy();
        finish('upstream_aborted', status);
      }
    });
  });
  upstream.on('error', (err) => {
    core.upstreamError();
    if (!res.headersSent && !res.destroyed) {
      const text = JSON.stringify({
        error: 'bad_gateway',
        reason: 'upstream_error',
        message: `upstream ${canonical.host}:${canonical.port} failed: ${err.message}`,
      });
      res
        .writeHead(502, 'upstream_error', {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(text),
          connection: 'close',
        })
        .end(text);
      finish('upstream_error', 502);
    } else {
      // The response had begun: the client sees it cut short.
      res.destroy();
      finish('upstream_aborted', res.statusCode);
    }
  });
  // The agent going away (a cancelled LLM stream) ends the upstream request too, and is audited.
  res.on('close', () => {
    if (res.writableFinished) return;
    upstream.destroy();
    finish('client_aborted', res.headersSent ? res.statusCode : 0);
  });
  req.on('error', () => upstream.destroy());
  if (adm.body) upstream.end(adm.body);
  else if (framing.kind === 'none' || (framing.kind === 'length' && framing.length === 0)) upstream.end();
  else {
    if (expectContinue) res.writeContinue();
    if (framing.kind === 'chunked') req.on('data', (chunk: Buffer) => (bytesIn += chunk.length));
    req.pipe(upstream);
  }
}
