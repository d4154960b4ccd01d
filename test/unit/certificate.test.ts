/**
 * The dependency-free certificate writer (lib/tls/der.ts, lib/tls/certificate.ts) and the pod CA built on it,
 * checked by parsers that share no code with it: Node's X509Certificate (OpenSSL inside), the openssl command
 * line (text dump, chain verification with X.509-strict checks) and real TLS handshakes with tls.connect.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate, createHash, webcrypto, type webcrypto as WebCrypto } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import {
  TLSSocket,
  checkServerIdentity,
  connect,
  type ConnectionOptions,
  type PeerCertificate,
  type SecureContext,
} from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import {
  KeyUsage,
  SIGNING,
  authorityKeyIdentifier,
  basicConstraints,
  certificatePem,
  ecdsaSigValue,
  encodeName,
  extendedKeyUsage,
  keyIdentifier,
  keyUsage,
  randomSerial,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
  type AltNames,
} from '../../lib/tls/certificate.ts';
import { namedBits, oid, smallInteger, time, tlv, unsignedInteger } from '../../lib/tls/der.ts';
import { PodCA } from '../../sidecar/pod-ca.ts';

const dir = mkdtempSync(join(tmpdir(), 'agentfence-cert-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
const HOUR = 3_600_000;

interface TestCA {
  keys: WebCrypto.CryptoKeyPair;
  name: Uint8Array;
  keyId: Uint8Array;
  pem: string;
  x509: X509Certificate;
}

async function makeCA(commonName = 'test CA', notAfter = new Date(Date.now() + 24 * HOUR)): Promise<TestCA> {
  const keys = await webcrypto.subtle.generateKey(SIGNING, false, ['sign', 'verify']);
  const name = encodeName({ commonName, organization: 'agentfence tests' });
  const keyId = await keyIdentifier(keys.publicKey);
  const der = await signCertificate({
    serialNumber: randomSerial(),
    issuer: name,
    subject: name,
    notBefore: new Date(Date.now() - 60_000),
    notAfter,
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    extensions: [
      basicConstraints(true, 0),
      keyUsage([KeyUsage.keyCertSign, KeyUsage.cRLSign]),
      subjectKeyIdentifier(keyId),
    ],
  });
  const pem = certificatePem(der);
  return { keys, name, keyId, pem, x509: new X509Certificate(pem) };
}

async function makeLeaf(
  ca: TestCA,
  names: AltNames,
  commonName: string,
  validity: { notBefore?: Date; notAfter?: Date } = {},
): Promise<{ pem: string; x509: X509Certificate; keyPem: string }> {
  const keys = await webcrypto.subtle.generateKey(SIGNING, true, ['sign', 'verify']);
  const der = await signCertificate({
    serialNumber: randomSerial(),
    issuer: ca.name,
    subject: encodeName({ commonName }),
    notBefore: validity.notBefore ?? new Date(Date.now() - 60_000),
    notAfter: validity.notAfter ?? new Date(Date.now() + HOUR),
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    extensions: [
      basicConstraints(false),
      keyUsage([KeyUsage.digitalSignature]),
      extendedKeyUsage(['serverAuth']),
      authorityKeyIdentifier(ca.keyId),
      subjectKeyIdentifier(await keyIdentifier(keys.publicKey)),
      subjectAltName(names),
    ],
  });
  const pem = certificatePem(der);
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${Buffer.from(pkcs8).toString('base64')}\n-----END PRIVATE KEY-----\n`;
  return { pem, x509: new X509Certificate(pem), keyPem };
}

let fileCount = 0;
function file(text: string): string {
  const path = join(dir, `f${fileCount++}.pem`);
  writeFileSync(path, text);
  return path;
}

function opensslText(pem: string): string {
  return execFileSync('openssl', ['x509', '-noout', '-text', '-in', file(pem)], { encoding: 'utf8' });
}

/** openssl verify with X.509-strict checks and the TLS server purpose; returns its exit status and output. */
function opensslVerify(caPem: string, leafPem: string, extra: string[] = []): { ok: boolean; out: string } {
  const r = spawnSync(
    'openssl',
    ['verify', '-x509_strict', '-purpose', 'sslserver', ...extra, '-CAfile', file(caPem), file(leafPem)],
    { encoding: 'utf8' },
  );
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

describe('DER writer', () => {
  it('encodes lengths in short form below 128 and minimal long form above', () => {
    expect(hex(tlv(0x04, new Uint8Array(127))).slice(0, 4)).toBe('047f');
    expect(hex(tlv(0x04, new Uint8Array(128))).slice(0, 6)).toBe('048180');
    expect(hex(tlv(0x04, new Uint8Array(300))).slice(0, 8)).toBe('0482012c');
    expect(hex(tlv(0x04, new Uint8Array(70_000))).slice(0, 10)).toBe('0483011170');
  });

  it('encodes non-negative integers minimally, with a zero octet before a set top bit', () => {
    expect(hex(unsignedInteger(Uint8Array.of(0, 0, 0x7f)))).toBe('02017f');
    expect(hex(unsignedInteger(Uint8Array.of(0x80)))).toBe('02020080');
    expect(hex(unsignedInteger(Uint8Array.of(0, 0)))).toBe('020100');
    expect(hex(smallInteger(0))).toBe('020100');
    expect(hex(smallInteger(256))).toBe('02020100');
    expect(() => smallInteger(-1)).toThrow(/non-negative/);
  });

  it('encodes object identifiers (first two arcs folded, base-128 arcs)', () => {
    expect(hex(oid('1.2.840.10045.4.3.2'))).toBe('06082a8648ce3d040302');
    expect(hex(oid('2.5.29.17'))).toBe('0603551d11');
    expect(() => oid('1.40')).toThrow(/bad OID/);
    expect(() => oid('1.2.x')).toThrow(/bad OID arc/);
  });

  it('drops trailing zero bits of named-bit strings (KeyUsage)', () => {
    expect(hex(namedBits([KeyUsage.digitalSignature]))).toBe('03020780');
    expect(hex(namedBits([KeyUsage.keyCertSign, KeyUsage.cRLSign]))).toBe('03020106');
    expect(hex(namedBits([0, 8]))).toBe('0303078080');
  });

  it('writes UTCTime through 2049 and GeneralizedTime from 2050 (and before 1950), whole seconds, UTC', () => {
    const text = (d: string): string => Buffer.from(time(new Date(d))).toString('latin1');
    expect(text('2049-12-31T23:59:59.999Z')).toBe('\x17\x0d491231235959Z');
    expect(text('2050-01-01T00:00:00Z')).toBe('\x18\x0f20500101000000Z');
    expect(text('1950-01-01T00:00:00Z')).toBe('\x17\x0d500101000000Z');
    expect(text('1949-12-31T23:59:59Z')).toBe('\x18\x0f19491231235959Z');
    expect(() => time(new Date(NaN))).toThrow(/invalid date/);
  });

  it('converts P1363 ECDSA signatures (r || s) to Ecdsa-Sig-Value with minimal positive integers', () => {
    const r = new Uint8Array(32);
    r[1] = 0x05; // leading zero octet: dropped
    const s = new Uint8Array(32).fill(0xff); // top bit set: a zero octet is added
    const der = ecdsaSigValue(new Uint8Array([...r, ...s]));
    expect(hex(der.subarray(0, 4))).toBe('30' + (2 + 31 + 2 + 33).toString(16) + '021f');
    expect(hex(der.subarray(4 + 31, 4 + 31 + 3))).toBe('022100');
    expect(() => ecdsaSigValue(new Uint8Array(63))).toThrow(/odd length/);
  });
});

describe('certificates, parsed by Node (OpenSSL) and by openssl', () => {
  it('a CA certificate: self-issued, self-verifying, CA with pathlen 0, keyCertSign', async () => {
    const ca = await makeCA();
    expect(ca.x509.ca).toBe(true);
    expect(ca.x509.subject).toBe('CN=test CA\nO=agentfence tests');
    expect(ca.x509.issuer).toBe(ca.x509.subject);
    expect(ca.x509.checkIssued(ca.x509)).toBe(true);
    expect(ca.x509.verify(ca.x509.publicKey)).toBe(true);
    expect(ca.x509.keyUsage).toBeUndefined(); // Node lists extKeyUsage there; the CA has none
    const text = opensslText(ca.pem);
    expect(text).toMatch(/Version: 3 \(0x2\)/);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(text).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    const ski = hex(ca.keyId)
      .toUpperCase()
      .replace(/(..)(?!$)/g, '$1:');
    expect(text).toContain(`Subject Key Identifier: \n                ${ski}`);
    // The key identifier is SHA-1 of the public key bits, as RFC 5280 4.2.1.2 method 1 describes.
    const spki = ca.x509.publicKey.export({ type: 'spki', format: 'der' });
    expect(hex(ca.keyId)).toBe(
      createHash('sha1')
        .update(spki.subarray(spki.length - 65))
        .digest('hex'),
    );
    // Self-signed root, checked as a chain of one under strict rules.
    expect(opensslVerify(ca.pem, ca.pem, ['-purpose', 'any']).out).toMatch(/OK/);
  });

  it('a leaf for a DNS name: issued by the CA, its signature checks, serverAuth, the SAN matches only that name', async () => {
    const ca = await makeCA();
    const leaf = await makeLeaf(ca, { dns: ['api.example.com'] }, 'api.example.com');
    expect(leaf.x509.ca).toBe(false);
    expect(leaf.x509.subject).toBe('CN=api.example.com');
    expect(leaf.x509.issuer).toBe(ca.x509.subject);
    expect(leaf.x509.checkIssued(ca.x509)).toBe(true);
    expect(leaf.x509.verify(ca.x509.publicKey)).toBe(true);
    expect(leaf.x509.verify(leaf.x509.publicKey)).toBe(false);
    expect(leaf.x509.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
    expect(leaf.x509.subjectAltName).toBe('DNS:api.example.com');
    expect(leaf.x509.checkHost('api.example.com')).toBe('api.example.com');
    expect(leaf.x509.checkHost('other.example.com')).toBeUndefined();
    const text = opensslText(leaf.pem);
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature/);
    expect(text).toMatch(/Extended Key Usage: \s+TLS Web Server Authentication/);
    expect(text).toContain(
      hex(ca.keyId)
        .toUpperCase()
        .replace(/(..)(?!$)/g, '$1:'),
    ); // authorityKeyIdentifier
    const verified = opensslVerify(ca.pem, leaf.pem, ['-verify_hostname', 'api.example.com']);
    expect(verified.out).toMatch(/: OK/);
    expect(verified.ok).toBe(true);
  });

  it('openssl refuses a leaf for another name, and a leaf under another CA', async () => {
    const ca = await makeCA();
    const leaf = await makeLeaf(ca, { dns: ['api.example.com'] }, 'api.example.com');
    const wrongName = opensslVerify(ca.pem, leaf.pem, ['-verify_hostname', 'evil.example.com']);
    expect(wrongName.ok).toBe(false);
    expect(wrongName.out).toMatch(/hostname mismatch/i);
    const other = await makeCA('another CA');
    const wrongCA = opensslVerify(other.pem, leaf.pem);
    expect(wrongCA.ok).toBe(false);
    expect(wrongCA.out).toMatch(/unable to get local issuer certificate/);
    expect(leaf.x509.checkIssued(other.x509)).toBe(false);
    expect(leaf.x509.verify(other.x509.publicKey)).toBe(false);
  });

  it('IP address SANs, IPv4 and IPv6 (compressed and with an embedded IPv4 tail)', async () => {
    const ca = await makeCA();
    const v4 = await makeLeaf(ca, { ip: ['10.1.2.3'] }, '10.1.2.3');
    expect(v4.x509.subjectAltName).toBe('IP Address:10.1.2.3');
    expect(v4.x509.checkIP('10.1.2.3')).toBe('10.1.2.3');
    expect(v4.x509.checkIP('10.1.2.4')).toBeUndefined();
    expect(opensslVerify(ca.pem, v4.pem, ['-verify_ip', '10.1.2.3']).ok).toBe(true);
    expect(opensslVerify(ca.pem, v4.pem, ['-verify_ip', '10.1.2.4']).ok).toBe(false);

    const v6 = await makeLeaf(ca, { ip: ['2001:db8::1', '::ffff:192.0.2.7'] }, '2001:db8::1');
    expect(v6.x509.subjectAltName).toBe('IP Address:2001:DB8:0:0:0:0:0:1, IP Address:0:0:0:0:0:FFFF:C000:207');
    expect(v6.x509.checkIP('2001:0db8:0:0:0:0:0:1')).toBeDefined();
    expect(v6.x509.checkIP('2001:db8::2')).toBeUndefined();
    expect(opensslVerify(ca.pem, v6.pem, ['-verify_ip', '2001:db8::1']).ok).toBe(true);
  });

  it('several SANs and names longer than the CN limit', async () => {
    const ca = await makeCA();
    const long = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.example`; // 200 characters
    const leaf = await makeLeaf(ca, { dns: [long, 'x.example', 'Mixed.Example'], ip: ['192.0.2.1'] }, 'several');
    expect(leaf.x509.subjectAltName).toBe(`DNS:${long}, DNS:x.example, DNS:Mixed.Example, IP Address:192.0.2.1`);
    expect(leaf.x509.checkHost(long)).toBe(long);
    expect(leaf.x509.checkHost('mixed.example')).toBeDefined();
    expect(leaf.x509.checkIP('192.0.2.1')).toBe('192.0.2.1');
    expect(opensslVerify(ca.pem, leaf.pem, ['-verify_hostname', long]).ok).toBe(true);
    expect(leaf.pem.length).toBeGreaterThan(900); // long-form lengths inside: the 200-character SAN alone
  });

  it('validity: whole seconds, UTCTime before 2050 and GeneralizedTime after, read back the same', async () => {
    const ca = await makeCA('long CA', new Date('2060-01-01T00:00:00Z'));
    const notBefore = new Date('2049-12-31T23:59:58.750Z');
    const notAfter = new Date('2051-06-01T12:34:56.999Z');
    const leaf = await makeLeaf(ca, { dns: ['t.example'] }, 't.example', { notBefore, notAfter });
    expect(leaf.x509.validFromDate.toISOString()).toBe('2049-12-31T23:59:58.000Z');
    expect(leaf.x509.validToDate.toISOString()).toBe('2051-06-01T12:34:56.000Z');
    expect(ca.x509.validToDate.toISOString()).toBe('2060-01-01T00:00:00.000Z');
    const dump = execFileSync('openssl', ['asn1parse', '-in', file(leaf.pem)], { encoding: 'utf8' });
    expect(dump).toMatch(/UTCTIME\s+:491231235958Z/);
    expect(dump).toMatch(/GENERALIZEDTIME\s+:20510601123456Z/);
    // Not yet valid today: openssl says so (the dates are real dates, not decoration).
    expect(opensslVerify(ca.pem, leaf.pem).out).toMatch(/not yet valid/);
  });

  it('serial numbers are positive, 16 octets and distinct', async () => {
    const ca = await makeCA();
    const serials = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const leaf = await makeLeaf(ca, { dns: ['s.example'] }, 's.example');
      expect(leaf.x509.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/);
      serials.add(leaf.x509.serialNumber);
    }
    expect(serials.size).toBe(4);
  });

  it('refuses what it cannot encode faithfully, naming the problem', async () => {
    const ca = await makeCA();
    await expect(makeLeaf(ca, { dns: ['bücher.example'] }, 'x')).rejects.toThrow(/not a DNS name: bücher/);
    await expect(makeLeaf(ca, { dns: ['a b.example'] }, 'x')).rejects.toThrow(/not a DNS name/);
    await expect(makeLeaf(ca, { dns: [`${'a'.repeat(64)}.example`] }, 'x')).rejects.toThrow(/not a DNS name/);
    await expect(makeLeaf(ca, { ip: ['10.1.2.256'] }, 'x')).rejects.toThrow(/not an IP address: 10.1.2.256/);
    await expect(makeLeaf(ca, { ip: ['fe80::1%eth0'] }, 'x')).rejects.toThrow(/not an IP address/);
    await expect(makeLeaf(ca, {}, 'x')).rejects.toThrow(/at least one name/);
    await expect(makeLeaf(ca, { dns: ['x.example'] }, 'c'.repeat(65))).rejects.toThrow(/1 to 64 characters/);
    const backwards = { notBefore: new Date(Date.now()), notAfter: new Date(Date.now() - 1000) };
    await expect(makeLeaf(ca, { dns: ['x.example'] }, 'x', backwards)).rejects.toThrow(/notAfter must follow/);
    const ed = (await webcrypto.subtle.generateKey({ name: 'Ed25519' }, false, [
      'sign',
      'verify',
    ])) as unknown as WebCrypto.CryptoKeyPair;
    await expect(
      signCertificate({
        serialNumber: randomSerial(),
        issuer: ca.name,
        subject: ca.name,
        notBefore: new Date(),
        notAfter: new Date(Date.now() + HOUR),
        publicKey: ed.publicKey,
        signingKey: ca.keys.privateKey,
        extensions: [],
      }),
    ).rejects.toThrow(/must be ECDSA P-256/);
    for (const serialNumber of [Uint8Array.of(0x80, 1), Uint8Array.of(0, 0), new Uint8Array(21).fill(1)]) {
      await expect(
        signCertificate({
          serialNumber,
          issuer: ca.name,
          subject: ca.name,
          notBefore: new Date(),
          notAfter: new Date(Date.now() + HOUR),
          publicKey: ca.keys.publicKey,
          signingKey: ca.keys.privateKey,
          extensions: [],
        }),
      ).rejects.toThrow(/serial must be positive/);
    }
  });
});

describe('the pod CA on this writer: real TLS handshakes', () => {
  /**
   * A TLS server presenting the pod CA's leaf for whatever name the client's SNI asks, or for `fixed` whatever
   * the client sends (as intercept.ts does: a TLSSocket over the accepted connection with the leaf's context).
   */
  async function serve(ca: PodCA, fixed?: string): Promise<{ server: NetServer; port: number }> {
    const server = createNetServer((raw) => {
      raw.on('error', () => raw.destroy());
      void (async () => {
        const socket = new TLSSocket(raw, {
          isServer: true,
          ...(fixed !== undefined
            ? { secureContext: await ca.context(fixed) }
            : {
                SNICallback: (servername: string, done: (err: Error | null, ctx?: SecureContext) => void) => {
                  ca.context(servername).then(
                    (ctx) => done(null, ctx),
                    (err: unknown) => done(err as Error),
                  );
                },
              }),
        });
        socket.on('error', () => socket.destroy());
        socket.on('secure', () => socket.end('hello'));
      })();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return { server, port: (server.address() as { port: number }).port };
  }

  async function handshake(
    port: number,
    options: Pick<ConnectionOptions, 'servername' | 'ca' | 'checkServerIdentity'>,
  ): Promise<{ ok: true; peer: X509Certificate } | { ok: false; code: string }> {
    const socket = connect({ port, host: '127.0.0.1', ...options });
    try {
      await once(socket, 'secureConnect');
      const peer = socket.getPeerX509Certificate();
      if (!peer) throw new Error('no peer certificate');
      return { ok: true, peer };
    } catch (err) {
      return { ok: false, code: (err as { code?: string }).code ?? String(err) };
    } finally {
      socket.destroy();
    }
  }

  it('a client trusting only the pod CA completes a handshake for a DNS name; the leaf chains to the CA', async () => {
    const ca = await PodCA.create();
    const { server, port } = await serve(ca);
    try {
      const result = await handshake(port, { servername: 'api.example.com', ca: ca.caCertificates() });
      if (!result.ok) throw new Error(`handshake failed: ${result.code}`);
      const root = new X509Certificate(ca.caCertificates()[0] ?? '');
      expect(result.peer.subjectAltName).toBe('DNS:api.example.com');
      expect(result.peer.checkIssued(root)).toBe(true);
      expect(result.peer.verify(root.publicKey)).toBe(true);
      expect(result.peer.validToDate.getTime()).toBeLessThanOrEqual(root.validToDate.getTime());
      expect(root.subject).toBe('CN=agentfence pod interception CA\nO=agentfence');
      expect(root.ca).toBe(true);
      expect(ca.fingerprint()).toBe(root.fingerprint256.replaceAll(':', '').toLowerCase());
      const verified = opensslVerify(ca.caCertificates()[0] ?? '', result.peer.toString(), [
        '-verify_hostname',
        'api.example.com',
      ]);
      expect(verified.out).toMatch(/: OK/);
      // A name longer than the CN limit still gets its exact SAN.
      const long = `${'l'.repeat(60)}.${'m'.repeat(60)}.example`;
      const longResult = await handshake(port, { servername: long, ca: ca.caCertificates() });
      expect(longResult.ok && longResult.peer.subjectAltName).toBe(`DNS:${long}`);
      expect(longResult.ok && longResult.peer.subject).toBe('CN=agentfence intercepted');
    } finally {
      server.close();
    }
  });

  it('an IP literal gets an IP SAN that tls.connect accepts for that address', async () => {
    const ca = await PodCA.create();
    const { server, port } = await serve(ca, '127.0.0.1');
    try {
      const result = await handshake(port, { ca: ca.caCertificates() }); // host 127.0.0.1, no SNI
      if (!result.ok) throw new Error(`handshake failed: ${result.code}`);
      expect(result.peer.subjectAltName).toBe('IP Address:127.0.0.1');
    } finally {
      server.close();
    }
    const v6 = await serve(ca, '2001:db8::7');
    try {
      // Dialled over IPv4 loopback, identity checked by Node's own rule against the IPv6 address the client wants.
      const as = (ip: string) => (_host: string, cert: PeerCertificate) => checkServerIdentity(ip, cert);
      const result = await handshake(v6.port, { ca: ca.caCertificates(), checkServerIdentity: as('2001:db8::7') });
      if (!result.ok) throw new Error(`handshake failed: ${result.code}`);
      expect(result.peer.subjectAltName).toBe('IP Address:2001:DB8:0:0:0:0:0:7');
      const other = await handshake(v6.port, { ca: ca.caCertificates(), checkServerIdentity: as('2001:db8::8') });
      expect(other).toEqual({ ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    } finally {
      v6.server.close();
    }
  });

  it('negative: a leaf for another name fails hostname verification; an untrusting client refuses the CA', async () => {
    const ca = await PodCA.create();
    const { server, port } = await serve(ca, 'a.example');
    try {
      const wrongName = await handshake(port, { servername: 'b.example', ca: ca.caCertificates() });
      expect(wrongName).toEqual({ ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
      const untrusted = await handshake(port, { servername: 'a.example', ca: (await PodCA.create()).caCertificates() });
      expect(untrusted.ok).toBe(false);
      expect(untrusted.ok ? '' : untrusted.code).toMatch(
        /UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER/,
      );
      const right = await handshake(port, { servername: 'a.example', ca: ca.caCertificates() });
      expect(right.ok).toBe(true);
    } finally {
      server.close();
    }
  });
});
