/**
 * Local HTTPS upstreams for the interception tests, with their own test CA (what a rule's `caBundle` names):
 * a good one (for a name and 127.0.0.1), and the bad ones — self-signed, expired, wrong name. Each records the
 * requests it received, so a test can prove that nothing reached an upstream that did not verify.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import {
  createCertificateAuthority,
  issueCertificate,
  privateKeyPem,
  type CertificateAuthority,
} from '../../lib/tls/pki.ts';

export interface HttpsUpstream {
  port: number;
  received: { method: string; url: string; host: string; headers: Record<string, string | string[] | undefined> }[];
  /** TLS connections accepted so far (to see the sidecar's pool reuse them). */
  connections(): number;
  /** Releases the held second half of the SSE stream opened with `?id=<id>`. */
  release(id: string): void;
  close(): Promise<void>;
}

/**
 * Routes: `/sse?id=X` sends one event, holds until release(X), then sends a second and ends; everything else
 * answers 200 JSON with a custom header, echoing method, path and the identity headers it saw.
 */
export async function httpsUpstream(cert: { certPem: string; keyPem: string }): Promise<HttpsUpstream> {
  const received: HttpsUpstream['received'] = [];
  const held = new Map<string, () => void>();
  const early = new Set<string>();
  const server: Server = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    received.push({ method: req.method ?? '', url: req.url ?? '', host: req.headers.host ?? '', headers: req.headers });
    req.resume();
    const url = new URL(req.url ?? '/', 'https://x');
    if (url.pathname === '/v1/sse') {
      const id = url.searchParams.get('id') ?? '';
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
      res.write('data: one\n\n');
      const rest = (): void => {
        res.end('data: two\n\n');
      };
      if (early.delete(id)) rest();
      else held.set(id, rest);
      return;
    }
    const body = JSON.stringify({ method: req.method, path: req.url, host: req.headers.host });
    res.writeHead(200, {
      'content-type': 'application/json',
      'x-upstream': 'verified',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
  });
  let connections = 0;
  server.on('secureConnection', () => connections++);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    received,
    connections: () => connections,
    release(id) {
      const rest = held.get(id);
      if (rest) {
        held.delete(id);
        rest();
      } else early.add(id);
    },
    async close() {
      for (const rest of held.values()) rest();
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
}

export interface TestPki {
  ca: CertificateAuthority;
  good: { certPem: string; keyPem: string };
  wrongName: { certPem: string; keyPem: string };
  expired: { certPem: string; keyPem: string };
  selfSigned: { certPem: string; keyPem: string };
}

/** The upstreams' own CA and the certificates of each upstream (good for `names`; the bad ones). */
export async function testPki(names: string[]): Promise<TestPki> {
  const ca = await createCertificateAuthority('upstream test CA', 1);
  const server = (dnsNames: string[], days = 1) =>
    issueCertificate(ca, {
      commonName: dnsNames[0] ?? 'x',
      dnsNames,
      ipAddresses: ['127.0.0.1'],
      usage: 'server',
      validityDays: days,
    });
  const good = await server(names);
  const wrongName = await issueCertificate(ca, {
    commonName: 'elsewhere.test',
    dnsNames: ['elsewhere.test'],
    usage: 'server',
    validityDays: 1,
  });
  // notAfter a day in the past (notBefore is a minute ago: a certificate no verifier accepts as current).
  const expired = await server(names, -1);
  const self = await createCertificateAuthority(names[0] ?? 'self', 1);
  const keys = self.keys;
  const selfCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: new x509.Name([{ CN: [names[0] ?? 'self'] }]),
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' },
    keys,
    extensions: [new x509.SubjectAlternativeNameExtension(names.map((value) => ({ type: 'dns' as const, value })))],
  });
  return {
    ca,
    good,
    wrongName,
    expired,
    selfSigned: { certPem: selfCert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey) },
  };
}
