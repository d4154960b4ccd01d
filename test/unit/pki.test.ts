import { X509Certificate, createPrivateKey } from 'node:crypto';
import { createServer, connect } from 'node:tls';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';

describe('tiny CA', () => {
  it('issues a server certificate that a TLS client trusting only the CA accepts for 127.0.0.1', async () => {
    const ca = await createCertificateAuthority('test-ca', 1);
    const leaf = await issueCertificate(ca, {
      commonName: 'srv',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1'],
      usage: 'server',
      validityDays: 1,
    });
    const cert = new X509Certificate(leaf.certPem);
    expect(cert.checkIssued(new X509Certificate(ca.certPem))).toBe(true);
    expect(cert.verify(new X509Certificate(ca.certPem).publicKey)).toBe(true);
    expect(cert.subjectAltName).toContain('IP Address:127.0.0.1');
    expect(createPrivateKey(leaf.keyPem).asymmetricKeyType).toBe('ec');

    const server = createServer({ cert: leaf.certPem, key: leaf.keyPem }, (s) => s.end('hello'));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    try {
      const received = await new Promise<string>((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port, ca: ca.certPem }, () => {
          let data = '';
          socket.on('data', (d: Buffer) => (data += d.toString()));
          socket.on('end', () => resolve(data));
        });
        socket.on('error', reject);
      });
      expect(received).toBe('hello');
      // A client trusting a different CA must refuse the same server.
      const other = await createCertificateAuthority('other', 1);
      await expect(
        new Promise((resolve, reject) => {
          const socket = connect({ host: '127.0.0.1', port, ca: other.certPem }, () => resolve('connected'));
          socket.on('error', reject);
        }),
      ).rejects.toThrow();
    } finally {
      server.close();
    }
  });

  it('puts organizations in the subject for client certificates (Kubernetes reads O as groups)', async () => {
    const ca = await createCertificateAuthority('clients', 1);
    const admin = await issueCertificate(ca, {
      commonName: 'admin',
      organizations: ['system:masters'],
      usage: 'client',
      validityDays: 1,
    });
    const cert = new X509Certificate(admin.certPem);
    expect(cert.subject).toContain('CN=admin');
    expect(cert.subject).toContain('O=system:masters');
    expect(cert.keyUsage).toContain('1.3.6.1.5.5.7.3.2');
  });
});
