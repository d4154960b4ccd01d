/**
 * The pod's interception CA: born in the sidecar, lives only in its memory. The CA key is an ECDSA P-256
 * WebCrypto key generated non-extractable — it cannot be exported, so it can reach no file, log, status or
 * metric — and the only thing that leaves the sidecar is the CA certificate, inside a trust bundle (the
 * system roots + the pod CA) written where the webhook mounts it for the app containers.
 *
 * Lifetimes: the CA certificate lives ≤ 24 h. Half-way through, the next CA is generated and published in the
 * bundle beside the current one (processes started from then on trust both); shortly before the current one
 * expires, leaves start being signed by the next. Open connections are never touched by a rotation: their
 * handshake is done. Leaves are minted per exact name (a DNS SAN, or an IP SAN for literals), valid ≤ 1 h and
 * never past their CA, signed with one leaf key per CA generation (a miss costs one signature), and cached.
 */
import { createHash, randomBytes, webcrypto, type webcrypto as WebCrypto } from 'node:crypto';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { createSecureContext, getCACertificates, type SecureContext } from 'node:tls';
// The certificates are written by lib/tls/certificate.ts, not an X.509 library: one would cost every pod ~21 MB.
import {
  KeyUsage,
  SIGNING,
  authorityKeyIdentifier,
  basicConstraints,
  certificatePem,
  encodeName,
  extendedKeyUsage,
  keyIdentifier,
  keyUsage,
  privateKeyPem,
  randomSerial,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
} from '../lib/tls/certificate.ts';

const HOUR_MS = 3_600_000;
/** Clients with a clock slightly behind ours must not see a certificate from the future. */
const BACKDATE_MS = 5 * 60_000;

/** The trust bundle's file name inside the bundle directory (the webhook's env vars point at it). */
export const TRUST_BUNDLE_FILE = 'ca-bundle.pem';
/** The pod CA certificates alone (for tools that add to their own roots rather than replace them). */
export const POD_CA_FILE = 'pod-ca.pem';

/**
 * The public roots the sidecar trusts for upstreams and publishes in the bundle: the image's system store,
 * and Node's bundled Mozilla roots where the system store is empty (a minimal image). One definition for both
 * uses, so a destination the app could reach directly is one the sidecar verifies the same way.
 */
export function publicRoots(): string[] {
  const system = getCACertificates('system');
  return system.length > 0 ? system : getCACertificates('bundled');
}

interface Generation {
  certDer: Uint8Array;
  certPem: string;
  /** The CA's encoded Name: the issuer of its leaves, byte for byte. */
  subject: Uint8Array;
  /** The CA key's identifier: its leaves' authorityKeyIdentifier. */
  keyId: Uint8Array;
  privateKey: WebCrypto.CryptoKey;
  notAfter: number;
  /** One leaf key pair per generation: leaves differ in name and signature, not in key. */
  leafPublic: WebCrypto.CryptoKey;
  leafKeyId: Uint8Array;
  leafKeyPem: string;
}

export interface PodCAOptions {
  /** CA certificate lifetime (default and maximum 24 h). */
  caLifetimeMs?: number;
  /** Leaf lifetime (default 1 h; never past the CA). */
  leafLifetimeMs?: number;
  /** Where the trust bundle is written; none: kept in memory only (static mode, tests). */
  bundleDir?: string;
  /** Public roots for the bundle (default: publicRoots()). */
  roots?: () => string[];
  /** Leaf cache size (names are client-supplied: bounded). */
  maxLeaves?: number;
  onRotate?: (event: { fingerprint: string; notAfter: string }) => void;
}

type Resolved = Required<Omit<PodCAOptions, 'bundleDir' | 'onRotate'>> & Pick<PodCAOptions, 'bundleDir' | 'onRotate'>;

export class PodCA {
  #current: Generation;
  #next: Generation | undefined;
  readonly #o: Resolved;
  readonly #leaves = new Map<string, { context: Promise<SecureContext>; renewAt: number }>();
  #timer: NodeJS.Timeout | undefined;
  #minted = 0;
  #bundleWritten = false;

  private constructor(first: Generation, o: Resolved) {
    this.#current = first;
    this.#o = o;
  }

  static async create(options: PodCAOptions = {}): Promise<PodCA> {
    const caLifetimeMs = Math.min(options.caLifetimeMs ?? 24 * HOUR_MS, 24 * HOUR_MS);
    const o: Resolved = {
      caLifetimeMs,
      leafLifetimeMs: options.leafLifetimeMs ?? HOUR_MS,
      roots: options.roots ?? publicRoots,
      maxLeaves: options.maxLeaves ?? 1024,
      ...(options.bundleDir !== undefined ? { bundleDir: options.bundleDir } : {}),
      ...(options.onRotate ? { onRotate: options.onRotate } : {}),
    };
    const ca = new PodCA(await generation(caLifetimeMs), o);
    await ca.writeBundle();
    return ca;
  }

  /** The CA certificates clients must trust now (current, and the next one once published). */
  caCertificates(): string[] {
    return this.#next ? [this.#current.certPem, this.#next.certPem] : [this.#current.certPem];
  }

  /** The signing CA's certificate fingerprint (SHA-256, hex): safe to show. */
  fingerprint(): string {
    return fingerprintOf(this.#current);
  }

  notAfter(): Date {
    return new Date(this.#current.notAfter);
  }

  /** Leaves minted since start (cache misses). */
  minted(): number {
    return this.#minted;
  }

  bundleWritten(): boolean {
    return this.#bundleWritten || this.#o.bundleDir === undefined;
  }

  /**
   * The TLS context presenting a leaf for exactly this name (a normalized host: DNS name or IP literal).
   * Concurrent handshakes for a new name share one minting.
   */
  context(name: string): Promise<SecureContext> {
    const now = Date.now();
    const hit = this.#leaves.get(name);
    if (hit && hit.renewAt > now) {
      // LRU: a hit moves to the back of the eviction order.
      this.#leaves.delete(name);
      this.#leaves.set(name, hit);
      return hit.context;
    }
    const gen = this.#current;
    const notAfter = Math.min(now + this.#o.leafLifetimeMs, gen.notAfter);
    const context = mintLeaf(gen, name, now, notAfter);
    this.#minted++;
    // Re-minted once most of its life is gone, so no handshake is ever served a leaf about to expire.
    const renewAt = now + (notAfter - now) * 0.75;
    this.#leaves.set(name, { context, renewAt });
    context.catch(() => this.#leaves.delete(name));
    while (this.#leaves.size > this.#o.maxLeaves) {
      const oldest = this.#leaves.keys().next().value;
      if (oldest === undefined) break;
      this.#leaves.delete(oldest);
    }
    return context;
  }

  /**
   * One rotation step: without a published next CA, generate and publish it; with one, make it the signing CA
   * (dropping the old one from the bundle and the leaf cache). Open connections are unaffected.
   */
  async rotate(): Promise<void> {
    if (!this.#next) {
      this.#next = await generation(this.#o.caLifetimeMs);
    } else {
      this.#current = this.#next;
      this.#next = undefined;
      this.#leaves.clear();
      this.#o.onRotate?.({ fingerprint: this.fingerprint(), notAfter: this.notAfter().toISOString() });
    }
    await this.writeBundle();
  }

  /** Runs rotation on schedule: publish the next CA at half-life, switch to it one leaf lifetime before expiry. */
  start(onError: (err: unknown) => void): void {
    const schedule = (): void => {
      const issuedAt = this.#current.notAfter - this.#o.caLifetimeMs;
      const at = this.#next
        ? this.#current.notAfter - Math.min(this.#o.leafLifetimeMs, this.#o.caLifetimeMs / 4)
        : issuedAt + this.#o.caLifetimeMs / 2;
      this.#timer = setTimeout(
        () => {
          this.rotate().then(schedule, (err: unknown) => {
            onError(err);
            // Retried soon: a failed write must not leave the pod with an expiring CA.
            this.#timer = setTimeout(schedule, 10_000);
            this.#timer.unref();
          });
        },
        Math.max(at - Date.now(), 0),
      );
      this.#timer.unref();
    };
    schedule();
  }

  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
  }

  /** Writes the bundle atomically (temporary file, then rename): a reader never sees half a bundle. */
  async writeBundle(): Promise<void> {
    const dir = this.#o.bundleDir;
    if (dir === undefined) return;
    await mkdir(dir, { recursive: true });
    const ca = this.caCertificates().join('');
    const bundle = `${this.#o.roots().map(withNewline).join('')}${ca}`;
    const suffix = `.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    for (const [name, text] of [
      [TRUST_BUNDLE_FILE, bundle],
      [POD_CA_FILE, ca],
    ] as const) {
      const tmp = join(dir, name + suffix);
      // World-readable: app containers may run as any user; the bundle holds only public certificates.
      await writeFile(tmp, text, { mode: 0o644 });
      await rename(tmp, join(dir, name));
    }
    this.#bundleWritten = true;
  }
}

async function generation(lifetimeMs: number): Promise<Generation> {
  // extractable: false — the CA key can sign, and nothing (not even this process) can export it.
  const keys = await webcrypto.subtle.generateKey(SIGNING, false, ['sign', 'verify']);
  const leaf = await webcrypto.subtle.generateKey(SIGNING, true, ['sign', 'verify']);
  const now = Date.now();
  const notAfter = now + lifetimeMs;
  const subject = encodeName({ commonName: 'agentfence pod interception CA', organization: 'agentfence' });
  const keyId = await keyIdentifier(keys.publicKey);
  // Self-signed: issuer = subject, signed by its own (non-extractable) key.
  const certDer = await signCertificate({
    serialNumber: randomSerial(),
    issuer: subject,
    subject,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(notAfter),
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    extensions: [
      basicConstraints(true, 0),
      keyUsage([KeyUsage.keyCertSign, KeyUsage.cRLSign]),
      subjectKeyIdentifier(keyId),
    ],
  });
  return {
    certDer,
    certPem: certificatePem(certDer),
    subject,
    keyId,
    privateKey: keys.privateKey,
    notAfter,
    leafPublic: leaf.publicKey,
    leafKeyId: await keyIdentifier(leaf.publicKey),
    leafKeyPem: await privateKeyPem(leaf.privateKey),
  };
}

async function mintLeaf(gen: Generation, name: string, now: number, notAfter: number): Promise<SecureContext> {
  const cert = await signCertificate({
    serialNumber: randomSerial(),
    // The CN is informational (clients match the SAN); a 64-character limit applies to it, not to the SAN.
    subject: encodeName({ commonName: name.length <= 64 ? name : 'agentfence intercepted' }),
    issuer: gen.subject,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(notAfter),
    publicKey: gen.leafPublic,
    signingKey: gen.privateKey,
    extensions: [
      basicConstraints(false),
      keyUsage([KeyUsage.digitalSignature]),
      extendedKeyUsage(['serverAuth']),
      // Python ≥ 3.13 (VERIFY_X509_STRICT) refuses leaves without an authority key identifier.
      authorityKeyIdentifier(gen.keyId),
      subjectKeyIdentifier(gen.leafKeyId),
      subjectAltName(isIP(name) ? { ip: [name] } : { dns: [name] }),
    ],
  });
  return createSecureContext({ cert: certificatePem(cert), key: gen.leafKeyPem });
}

function fingerprintOf(gen: Generation): string {
  return createHash('sha256').update(gen.certDer).digest('hex');
}

function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}
