/**
 * The controller's one TLS server: admission webhook, identity (token exchange, JWKS) and entitlement
 * distribution. The certificate comes from a source that can change under it (cert-manager renewing files, or
 * our own rotation); new connections get the new certificate without a restart.
 */
import { createServer, type Server } from 'node:https';
import { readFile } from 'node:fs/promises';
import { watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { RequestListener } from 'node:http';
import type { Logger } from '../../lib/log.ts';

export interface ServingCertificate {
  certPem: string;
  keyPem: string;
  /** The CA bundle clients (sidecars) need to verify certPem. */
  caPem: string;
}

export interface ServingCertSource {
  current(): ServingCertificate;
  /** Called whenever the certificate changed; returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
  stop(): void;
}

/** tls.crt / tls.key in a directory (a mounted Secret, as cert-manager writes it); re-read when it changes. */
export async function certificatesFromDir(dir: string, logger: Logger, pollMs = 30_000): Promise<ServingCertSource> {
  const read = async (): Promise<ServingCertificate> => {
    const certPem = await readFile(join(dir, 'tls.crt'), 'utf8');
    // cert-manager writes the issuing CA as ca.crt; without it, the chain in tls.crt is what clients trust.
    const caPem = await readFile(join(dir, 'ca.crt'), 'utf8').catch(() => certPem);
    return { certPem, keyPem: await readFile(join(dir, 'tls.key'), 'utf8'), caPem };
  };
  let cert = await read();
  const listeners = new Set<() => void>();
  const reload = (): void => {
    read()
      .then((next) => {
        if (next.certPem === cert.certPem && next.keyPem === cert.keyPem && next.caPem === cert.caPem) return;
        cert = next;
        logger.info('serving certificate reloaded', { dir });
        for (const l of listeners) l();
      })
      .catch((err: unknown) => {
        logger.warn('serving certificate reload failed; keeping the current one', { dir, err });
      });
  };
  // Kubernetes swaps the mounted files through a symlink, which fs.watch on the directory sees; the poll is
  // the safety net for filesystems where it does not.
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, reload);
  } catch {
    watcher = undefined;
  }
  const timer = setInterval(reload, pollMs);
  timer.unref();
  return {
    current: () => cert,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    stop() {
      clearInterval(timer);
      watcher?.close();
    },
  };
}

/** A fixed certificate (tests, the local demo); `replace` swaps it like a rotation would. */
export function staticCertificates(
  initial: ServingCertificate,
): ServingCertSource & { replace(next: ServingCertificate): void } {
  let cert = initial;
  const listeners = new Set<() => void>();
  return {
    current: () => cert,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    replace(next) {
      cert = next;
      for (const l of listeners) l();
    },
    stop: () => undefined,
  };
}

export interface ServingServer {
  url: string;
  port: number;
  server: Server;
  close(): Promise<void>;
}

export async function startServingServer(options: {
  host: string;
  port: number;
  certs: ServingCertSource;
  handler: RequestListener;
  logger: Logger;
}): Promise<ServingServer> {
  const { certs } = options;
  const server = createServer({ ...toTls(certs.current()), minVersion: 'TLSv1.2' }, options.handler);
  const unsubscribe = certs.onChange(() => {
    server.setSecureContext(toTls(certs.current()));
  });
  // Admission requests must be answered well inside the webhook timeout; idle sidecar streams are long-lived.
  server.headersTimeout = 10_000;
  server.requestTimeout = 0;
  server.keepAliveTimeout = 65_000;
  server.listen(options.port, options.host);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `https://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`,
    port,
    server,
    async close() {
      unsubscribe();
      server.close();
      server.closeAllConnections();
      await once(server, 'close').catch(() => undefined);
    },
  };
}

function toTls(cert: ServingCertificate): { cert: string; key: string } {
  return { cert: cert.certPem, key: cert.keyPem };
}
