/**
 * X.509 v3 certificates (RFC 5280) signed with ECDSA P-256 / SHA-256 on WebCrypto, written with the DER encoder in
 * der.ts: exactly what the sidecar's pod CA issues (a CA certificate, leaves for one name). It exists so the
 * sidecar does not load an X.509 library (~21 MB resident with its ASN.1 schemas and the Reflect polyfill) to
 * write a few hundred bytes; the signing key stays a WebCrypto CryptoKey and may be non-extractable.
 */
import { createHash, randomBytes, webcrypto, type webcrypto as WebCrypto } from 'node:crypto';
import { parseIP } from '../ip.ts';
import {
  bitString,
  boolean,
  explicit,
  ia5Bytes,
  implicitPrimitive,
  namedBits,
  octetString,
  oid,
  pem,
  sequence,
  setOf,
  smallInteger,
  time,
  unsignedInteger,
  utf8String,
} from './der.ts';

type CryptoKey = WebCrypto.CryptoKey;

/** The one key and signature algorithm issued here. */
export const SIGNING = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

const OID = {
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/** KeyUsage bit numbers (RFC 5280 4.2.1.3). */
export const KeyUsage = {
  digitalSignature: 0,
  keyEncipherment: 2,
  keyCertSign: 5,
  cRLSign: 6,
} as const;

/** Upper bound of CN and O (RFC 5280 appendix A, ub-common-name / ub-organization-name). */
const NAME_ATTRIBUTE_MAX = 64;
/** A dNSName in the preferred name syntax (RFC 5280 4.2.1.6 via RFC 1034): letters, digits, hyphens, dots. */
const DNS_NAME = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/i;

export interface DistinguishedName {
  commonName: string;
  organization?: string;
}

/** A Name as a sequence of single-attribute RDNs, CN first, UTF8String values (RFC 5280 4.1.2.4). */
export function encodeName(name: DistinguishedName): Uint8Array {
  const rdns: Uint8Array[] = [];
  for (const [type, value] of [
    [OID.commonName, name.commonName],
    [OID.organization, name.organization],
  ] as const) {
    if (value === undefined) continue;
    if (value.length === 0 || value.length > NAME_ATTRIBUTE_MAX) {
      throw new RangeError(`certificate name attribute must be 1 to ${NAME_ATTRIBUTE_MAX} characters: ${value}`);
    }
    rdns.push(setOf(sequence(oid(type), utf8String(value))));
  }
  return sequence(...rdns);
}

function extension(id: string, critical: boolean, value: Uint8Array): Uint8Array {
  // critical is DEFAULT FALSE: DER omits it unless true.
  return critical ? sequence(oid(id), boolean(true), octetString(value)) : sequence(oid(id), octetString(value));
}

/** basicConstraints, critical: a CA (with a path length limit when given) or an end entity. */
export function basicConstraints(ca: boolean, pathLength?: number): Uint8Array {
  if (!ca && pathLength !== undefined) throw new RangeError('basicConstraints: a path length is for CAs only');
  const body = ca ? [boolean(true), ...(pathLength !== undefined ? [smallInteger(pathLength)] : [])] : [];
  return extension(OID.basicConstraints, true, sequence(...body));
}

/** keyUsage, critical. */
export function keyUsage(bits: readonly number[]): Uint8Array {
  if (bits.length === 0) throw new RangeError('keyUsage: at least one usage is required');
  return extension(OID.keyUsage, true, namedBits(bits));
}

/** extKeyUsage (non-critical, as issued for public TLS). */
export function extendedKeyUsage(usages: readonly ('serverAuth' | 'clientAuth')[]): Uint8Array {
  if (usages.length === 0) throw new RangeError('extKeyUsage: at least one usage is required');
  return extension(OID.extKeyUsage, false, sequence(...usages.map((u) => oid(OID[u]))));
}

export interface AltNames {
  dns?: readonly string[];
  ip?: readonly string[];
}

/**
 * subjectAltName: dNSName ([2] IA5String) and iPAddress ([7] OCTET STRING of 4 or 16 octets). Non-critical:
 * every certificate issued here has a subject. A name that is not a DNS name or an IP address is refused.
 */
export function subjectAltName(names: AltNames): Uint8Array {
  const general: Uint8Array[] = [];
  for (const dns of names.dns ?? []) {
    if (dns.length > 253 || !DNS_NAME.test(dns)) throw new RangeError(`subjectAltName: not a DNS name: ${dns}`);
    general.push(implicitPrimitive(2, ia5Bytes(dns)));
  }
  for (const ip of names.ip ?? []) general.push(implicitPrimitive(7, ipOctets(ip)));
  if (general.length === 0) throw new RangeError('subjectAltName: at least one name is required');
  return extension(OID.subjectAltName, false, sequence(...general));
}

function ipOctets(text: string): Uint8Array {
  const ip = parseIP(text);
  if (!ip) throw new RangeError(`subjectAltName: not an IP address: ${text}`);
  const out = new Uint8Array(ip.family === 4 ? 4 : 16);
  let value = ip.value;
  for (let i = out.length - 1; i >= 0; i--) {
    out[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return out;
}

/** subjectKeyIdentifier (non-critical). */
export function subjectKeyIdentifier(keyId: Uint8Array): Uint8Array {
  return extension(OID.subjectKeyIdentifier, false, octetString(keyId));
}

/** authorityKeyIdentifier (non-critical), by the issuer's key identifier only ([0] keyIdentifier). */
export function authorityKeyIdentifier(issuerKeyId: Uint8Array): Uint8Array {
  return extension(OID.authorityKeyIdentifier, false, sequence(implicitPrimitive(0, issuerKeyId)));
}

/** A key identifier: SHA-1 of the subjectPublicKey bits (RFC 5280 4.2.1.2 method 1), an identifier, not a MAC. */
export async function keyIdentifier(publicKey: CryptoKey): Promise<Uint8Array> {
  const point = new Uint8Array(await webcrypto.subtle.exportKey('raw', publicKey));
  return new Uint8Array(createHash('sha1').update(point).digest());
}

/** A random positive serial of 16 octets (RFC 5280: positive, ≤ 20 octets; ≥ 64 random bits, CA/B BR). */
export function randomSerial(): Uint8Array {
  const bytes = randomBytes(16);
  // Top bit clear: positive. Next bit set: never zero, and always 16 octets long.
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40;
  return new Uint8Array(bytes);
}

export interface CertificateFields {
  serialNumber: Uint8Array;
  /** The issuer's encoded Name (encodeName), byte for byte the subject of the issuing certificate. */
  issuer: Uint8Array;
  subject: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  /** An ECDSA P-256 public key (WebCrypto public keys are always exportable). */
  publicKey: CryptoKey;
  /** The issuer's ECDSA P-256 private key; it is only used to sign, so it may be non-extractable. */
  signingKey: CryptoKey;
  extensions: readonly Uint8Array[];
}

/** Encodes and signs a v3 certificate; returns its DER. */
export async function signCertificate(f: CertificateFields): Promise<Uint8Array> {
  const serial = f.serialNumber;
  if (serial.length === 0 || serial.length > 20 || (serial[0] ?? 0) & 0x80 || serial.every((b) => b === 0)) {
    throw new RangeError('certificate serial must be positive and at most 20 octets');
  }
  if (!(f.notAfter.getTime() > f.notBefore.getTime()))
    throw new RangeError('certificate notAfter must follow notBefore');
  for (const key of [f.publicKey, f.signingKey]) {
    const algorithm = key.algorithm as { name: string; namedCurve?: string };
    if (algorithm.name !== 'ECDSA' || algorithm.namedCurve !== 'P-256') {
      throw new TypeError(`certificate keys must be ECDSA P-256, not ${algorithm.name} ${algorithm.namedCurve ?? ''}`);
    }
  }
  // AlgorithmIdentifier for ecdsa-with-SHA256: the parameters are absent (RFC 5758 3.2).
  const algorithm = sequence(oid(OID.ecdsaWithSha256));
  const spki = new Uint8Array(await webcrypto.subtle.exportKey('spki', f.publicKey));
  const tbs = sequence(
    explicit(0, smallInteger(2)), // version v3
    unsignedInteger(serial),
    algorithm,
    f.issuer,
    sequence(time(f.notBefore), time(f.notAfter)),
    f.subject,
    spki,
    ...(f.extensions.length > 0 ? [explicit(3, sequence(...f.extensions))] : []),
  );
  const p1363 = new Uint8Array(await webcrypto.subtle.sign(SIGNING, f.signingKey, tbs));
  return sequence(tbs, algorithm, bitString(ecdsaSigValue(p1363)));
}

/**
 * WebCrypto signs ECDSA in IEEE P1363 form (r || s, each the curve's size); X.509 carries
 * Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 2.2.3).
 */
export function ecdsaSigValue(p1363: Uint8Array): Uint8Array {
  if (p1363.length === 0 || p1363.length % 2 !== 0) throw new RangeError('ECDSA signature: odd length');
  const half = p1363.length / 2;
  return sequence(unsignedInteger(p1363.subarray(0, half)), unsignedInteger(p1363.subarray(half)));
}

export function certificatePem(der: Uint8Array): string {
  return pem('CERTIFICATE', der);
}

export async function privateKeyPem(key: CryptoKey): Promise<string> {
  return pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', key));
}

export async function publicKeyPem(key: CryptoKey): Promise<string> {
  return pem('PUBLIC KEY', await webcrypto.subtle.exportKey('spki', key));
}
