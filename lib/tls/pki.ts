/**
 * A tiny certificate authority: ECDSA P-256 keys, X.509 certificates issued with @peculiar/x509 on WebCrypto
 * (Node's crypto can parse certificates but not issue them). Used by the local control plane and, later, by the
 * webhook's self-managed serving certificate.
 */
import { randomBytes, webcrypto } from 'node:crypto';
import type { webcrypto as WebCrypto } from 'node:crypto';
// @peculiar/x509 resolves its ASN.1 schemas through tsyringe, which needs the Reflect metadata polyfill first.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { SIGNING, privateKeyPem } from './certificate.ts';

// The key PEM helpers live with the dependency-free certificate writer (the sidecar uses them without this module).
export { privateKeyPem, publicKeyPem } from './certificate.ts';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = WebCrypto.CryptoKey;
type CryptoKeyPair = WebCrypto.CryptoKeyPair;

const DAY_MS = 86_400_000;

export interface CertificateAuthority {
  certPem: string;
  keyPem: string;
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

export interface IssuedCertificate {
  certPem: string;
  keyPem: string;
  notAfter: Date;
}

export interface CertificateRequest {
  commonName: string;
  organizations?: string[];
  dnsNames?: string[];
  ipAddresses?: string[];
  usage: 'server' | 'client';
  validityDays: number;
}

export async function generateKeyPair(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(SIGNING, true, ['sign', 'verify']);
}

export async function createCertificateAuthority(
  commonName: string,
  validityDays: number,
): Promise<CertificateAuthority> {
  const keys = await generateKeyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: new x509.Name([{ CN: [commonName] }]),
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + validityDays * DAY_MS),
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, keys, certPem: pemWithNewline(cert.toString('pem')), keyPem: await privateKeyPem(keys.privateKey) };
}

export async function issueCertificate(ca: CertificateAuthority, req: CertificateRequest): Promise<IssuedCertificate> {
  const keys = await generateKeyPair();
  const now = Date.now();
  const notAfter = new Date(now + req.validityDays * DAY_MS);
  const subject: x509.JsonName = [{ CN: [req.commonName] }];
  for (const org of req.organizations ?? []) subject.push({ O: [org] });
  const altNames: x509.JsonGeneralName[] = [
    ...(req.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(req.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
  ];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
    new x509.ExtendedKeyUsageExtension([
      req.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth,
    ]),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert, false),
  ];
  if (altNames.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(altNames));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: new x509.Name(subject),
    issuer: ca.cert.subject,
    notBefore: new Date(now - 60_000),
    notAfter,
    signingAlgorithm: SIGNING,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    extensions,
  });
  return { certPem: pemWithNewline(cert.toString('pem')), keyPem: await privateKeyPem(keys.privateKey), notAfter };
}

function serial(): string {
  // Positive 16-byte serial: clear the top bit so DER does not read it as negative.
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}

/** PEM blocks are concatenated into bundles; each must end with a newline or the next BEGIN line is lost. */
function pemWithNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

/** A CA from its PEM certificate and PKCS#8 key (as createCertificateAuthority wrote them), to issue more leaves. */
export async function loadCertificateAuthority(certPem: string, keyPem: string): Promise<CertificateAuthority> {
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const privateKey = await webcrypto.subtle.importKey('pkcs8', der, SIGNING, true, ['sign']);
  const cert = new x509.X509Certificate(certPem);
  // Only the private key signs; the public half comes from the certificate when something needs it.
  const publicKey: CryptoKey = await webcrypto.subtle.importKey('spki', cert.publicKey.rawData, SIGNING, true, [
    'verify',
  ]);
  return { cert, certPem: pemWithNewline(certPem), keyPem, keys: { privateKey, publicKey } };
}
