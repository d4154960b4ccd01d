/**
 * Forwards an admitted request: the canonical request (checked authority as Host, canonical path and query,
 * the proxy's own framing, the canonical MCP body when one was judged) to the checked address through a
 * keep-alive pool, and the response back. Exactly one audit line per request, whatever ends it: the response
 * end, an upstream error, or the client going away mid-stream.
 */
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { applyFraming, endToEnd, type Framing } from './canonical.ts';
import { ignore, type Core, type Timing } from './core.ts';
import type { Admission, CanonicalRequest } from './pipeline.ts';

// node:http without its ESM facade (which loads undici): see proxy.ts.
const { request: httpRequest } = process.getBuiltinModule('node:http');

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
  const facts = {
    method: canonical.method,
    host: canonical.host,
    port: canonical.port,
    path: canonical.path,
    ...(canonical.tls ? { tls: 'inspected' as const } : {}),
    // Set at the header seam only for allowed requests; the audit line names it, never its value.
    ...(adm.decision === 'allow' && adm.rule?.credentials
      ? { credential: `${adm.rule.credentials.secret}/${adm.rule.credentials.key}` }
      : {}),
  };
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
  const options = {
    host: adm.address,
    port: dialPort,
    method: canonical.method,
    path: canonical.path + canonical.query,
    headers,
    setHost: false,
  };
  const upstream: ClientRequest = canonical.tls
    ? process.getBuiltinModule('node:https').request({
        ...options,
        // The connection goes to the checked address; Node verifies the certificate for `servername` (the checked
        // name), or for the address itself when the checked host is an IP literal (it resolves to itself). There
        // is no option to skip it: rejectUnauthorized stays true whatever the rule says. (No per-request
        // checkServerIdentity: a function per request defeats the pool's connection reuse.)
        ...(isIP(canonical.host) ? {} : { servername: canonical.host }),
        rejectUnauthorized: true,
        agent: core.tlsPool(adm.address, dialPort, canonical.host, adm.rule?.caBundle),
      })
    : httpRequest({ ...options, agent: core.pool(adm.address, dialPort) });
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
  upstream.on('error', (err: Error & { code?: string }) => {
    core.upstreamError();
    if (!res.headersSent && !res.destroyed) {
      // Nothing was sent: TLS verification fails before the first byte of the request leaves.
      const reason = canonical.tls && isCertificateError(err) ? 'upstream_certificate_invalid' : 'upstream_error';
      const text = JSON.stringify({
        error: 'bad_gateway',
        reason,
        message:
          reason === 'upstream_certificate_invalid'
            ? `the certificate of ${canonical.host}:${canonical.port} did not verify (${err.code ?? 'invalid'}): nothing was sent`
            : `upstream ${canonical.host}:${canonical.port} failed: ${err.message}`,
      });
      res
        .writeHead(502, reason, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(text),
          connection: 'close',
        })
        .end(text);
      finish(reason, 502);
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

/** OpenSSL's verification failures and Node's name check: the upstream is not who it must be. */
const CERTIFICATE_ERRORS = new Set([
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'HOSTNAME_MISMATCH',
  'IP_ADDRESS_MISMATCH',
]);

function isCertificateError(err: Error & { code?: string }): boolean {
  return err.code !== undefined && CERTIFICATE_ERRORS.has(err.code);
}
