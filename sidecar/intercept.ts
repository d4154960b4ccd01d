/**
 * TLS interception of an inspected CONNECT tunnel: the sidecar completes the client's handshake with a leaf
 * from the pod CA for exactly the tunnel's name, and hands the decrypted stream to the same inner HTTP server
 * that parses plain HTTP inside tunnels — so every request on it goes through the one admission pipeline.
 *
 * The name is the CONNECT authority; a ClientHello whose SNI names anything else is refused (a client must
 * not borrow the tunnel of an entitled host to talk to another one). Only `http/1.1` is offered by ALPN (the
 * inner server parses HTTP/1.x): a client that also offers h2 falls back, one that offers only h2 is refused.
 * A handshake that does not finish within the deadline (a stalled client) is dropped.
 */
import { TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { normalizeHost } from './match.ts';
import type { PodCA } from './pod-ca.ts';

export type InterceptFailure =
  /** The client aborted the handshake: typically it does not trust the pod CA. */
  | 'tls_client_rejected'
  | 'tls_sni_mismatch'
  | 'tls_alpn_unsupported'
  | 'tls_handshake_timeout'
  | 'tls_handshake_failed';

export type Intercepted = { ok: true; socket: TLSSocket } | { ok: false; reason: InterceptFailure; detail: string };

/** ALPN offered to clients: the inner server speaks HTTP/1.x only. */
const ALPN = ['http/1.1'];

/**
 * Terminates TLS on `client` for `host`. The bytes already read from the tunnel (`first`, the start of the
 * ClientHello) are put back first. Resolves once the handshake is done or has failed; on failure the socket
 * is destroyed and nothing was read from the client beyond its handshake.
 */
export async function terminateTls(
  client: Duplex,
  first: Buffer,
  host: string,
  ca: PodCA,
  handshakeTimeoutMs: number,
): Promise<Intercepted> {
  client.pause();
  client.unshift(first);
  const context = await ca.context(host);
  let failure: { reason: InterceptFailure; detail: string } | undefined;
  const socket = new TLSSocket(client, {
    isServer: true,
    secureContext: context,
    ALPNProtocols: ALPN,
    requestCert: false,
    SNICallback: (servername, done) => {
      if (normalizeHost(servername) === host) {
        done(null, context);
        return;
      }
      failure = {
        reason: 'tls_sni_mismatch',
        detail: `the TLS server name ${servername.slice(0, 253)} is not the tunnel's destination ${host}`,
      };
      done(new Error(failure.detail), undefined);
    },
  });
  return new Promise<Intercepted>((resolve) => {
    let settled = false;
    // Settled once; on failure the caller closes the tunnel (and with it this socket) with the reason.
    const settle = (result: Intercepted): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (!result.ok) socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => {
      settle({
        ok: false,
        reason: 'tls_handshake_timeout',
        detail: `the client did not complete the TLS handshake within ${handshakeTimeoutMs} ms`,
      });
    }, handshakeTimeoutMs);
    timer.unref();
    const fail = (err?: Error & { code?: string }): void => {
      if (failure) {
        settle({ ok: false, ...failure });
        return;
      }
      const code = err?.code ?? '';
      const message = err?.message ?? '';
      settle(
        code === 'ERR_SSL_NO_APPLICATION_PROTOCOL' || /no.application.protocol/i.test(message)
          ? {
              ok: false,
              reason: 'tls_alpn_unsupported',
              detail: 'the client offered no ALPN protocol but h2; only http/1.1 is served',
            }
          : err === undefined || /alert|unknown.ca|bad.certificate|certificate.unknown/i.test(message)
            ? {
                ok: false,
                reason: 'tls_client_rejected',
                detail:
                  'the client refused the interception certificate or left during the handshake (does it trust the pod CA?)',
              }
            : { ok: false, reason: 'tls_handshake_failed', detail: `TLS handshake failed: ${code || message}` },
      );
    };
    socket.once('error', fail);
    // The tunnel's socket is half-open capable (its server allows it): an end before the handshake is done
    // is the client giving up, not something to wait on.
    socket.once('end', () => fail());
    socket.once('close', () => fail());
    socket.once('secure', () => {
      socket.off('error', fail);
      socket.removeAllListeners('close');
      socket.removeAllListeners('end');
      socket.on('error', () => socket.destroy());
      settle({ ok: true, socket });
    });
  });
}
