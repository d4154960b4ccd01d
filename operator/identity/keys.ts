/**
 * Signing keys and their rotation, as a pure state machine (the leader persists the result in a Secret; every
 * replica signs with `current`). Modelled on SPIRE's prepare/activate: the next key is published in the JWKS
 * at half-life, long before it signs anything, so verifiers with cached key sets already know it; it becomes
 * current when a sixth of the current key's life remains — and never before it has been published for
 * `publishLeadMs` (longer than verifiers cache a JWKS), whatever the leader history: a leader that was absent at
 * half-life publishes the next key late, and activation waits for it. Retired keys stay published until every
 * token they signed has expired (tokens are capped at their key's expiry).
 */
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import { TOKEN_ALGORITHM } from '../../lib/identity/claims.ts';

export interface SigningKey {
  kid: string;
  /** Private JWK (EC P-256, with d). Never logged, never served. */
  privateJwk: JWK;
  createdAt: number;
  expiresAt: number;
  /** When the key was first written to the Secret, i.e. published in every replica's JWKS (within ~1 s). */
  publishedAt?: number;
}

export interface KeySet {
  current: SigningKey;
  /** Published, not yet signing. */
  next?: SigningKey;
  /** Retired, still published for verification. */
  previous: SigningKey[];
}

export interface RotationPolicy {
  keyLifetimeMs: number;
  /** Tolerated clock skew between us and verifiers. */
  clockSkewMs: number;
  /**
   * A key signs only after it has been published this long: longer than verifiers cache the JWKS
   * (`agentfence/verify`: 60 s; the endpoint's `Cache-Control: max-age=60` for HTTP caches in between).
   */
  publishLeadMs?: number;
}

export const DEFAULT_PUBLISH_LEAD_MS = 120_000;
export const DEFAULT_ROTATION: RotationPolicy = {
  keyLifetimeMs: 24 * 3_600_000,
  clockSkewMs: 60_000,
  publishLeadMs: DEFAULT_PUBLISH_LEAD_MS,
};

export async function generateSigningKey(now: number, lifetimeMs: number): Promise<SigningKey> {
  const { privateKey } = await generateKeyPair(TOKEN_ALGORITHM, { extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y });
  return {
    kid,
    privateJwk: { ...jwk, kid, alg: TOKEN_ALGORITHM, use: 'sig' },
    createdAt: now,
    expiresAt: now + lifetimeMs,
    publishedAt: now,
  };
}

/** Keys written before publishedAt was recorded were published when they were created. */
const publishedAt = (k: SigningKey): number => k.publishedAt ?? k.createdAt;

/** Advances the key set to `now`. Returns the same object when nothing changed (callers then skip the write). */
export async function rotateKeys(
  set: KeySet | undefined,
  now: number,
  policy: RotationPolicy = DEFAULT_ROTATION,
): Promise<KeySet> {
  if (!set) {
    // First start: no verifier can hold an older key set of ours, so the first key signs at once.
    return { current: await generateSigningKey(now, policy.keyLifetimeMs), previous: [] };
  }
  if (set.current.expiresAt <= now) {
    // The current key expired while no leader ran: nothing can sign. The published next key is the best successor
    // (verifiers know it, or will after their next fetch); without one, start fresh.
    const current =
      set.next && set.next.expiresAt > now ? set.next : await generateSigningKey(now, policy.keyLifetimeMs);
    return { current, previous: retained([set.current, ...set.previous], now, policy) };
  }
  let result = set;
  const life = set.current.expiresAt - set.current.createdAt;
  if (!result.next && now >= set.current.createdAt + life / 2) {
    result = { ...result, next: await generateSigningKey(now, policy.keyLifetimeMs) };
  }
  if (result.next && now >= activationAt(result, policy)) {
    result = { current: result.next, previous: [result.current, ...result.previous] };
  }
  const kept = retained(result.previous, now, policy);
  if (kept.length !== result.previous.length) result = { ...result, previous: kept };
  return result;
}

function retained(keys: SigningKey[], now: number, policy: RotationPolicy): SigningKey[] {
  return keys.filter((k) => k.expiresAt + policy.clockSkewMs > now);
}

/** The public JWKS: next, current and previous keys, without private parts. */
export function publicJwks(set: KeySet): { keys: JWK[] } {
  const keys = [set.current, ...(set.next ? [set.next] : []), ...set.previous];
  return {
    keys: keys.map((k) => ({
      kty: k.privateJwk.kty,
      crv: k.privateJwk.crv,
      x: k.privateJwk.x,
      y: k.privateJwk.y,
      kid: k.kid,
      alg: TOKEN_ALGORITHM,
      use: 'sig',
    })),
  };
}

/** When `set.next` may become current: a sixth of the current key's life left, and published long enough. */
function activationAt(set: KeySet, policy: RotationPolicy): number {
  const life = set.current.expiresAt - set.current.createdAt;
  const lead = policy.publishLeadMs ?? DEFAULT_PUBLISH_LEAD_MS;
  return Math.max(set.current.expiresAt - life / 6, set.next ? publishedAt(set.next) + lead : Infinity);
}

/** When the leader must look at the key set again. */
export function nextRotationAt(set: KeySet, policy: RotationPolicy = DEFAULT_ROTATION): number {
  const life = set.current.expiresAt - set.current.createdAt;
  const candidates = [set.next ? activationAt(set, policy) : set.current.createdAt + life / 2, set.current.expiresAt];
  for (const k of set.previous) candidates.push(k.expiresAt);
  return Math.min(...candidates);
}

// ---- persistence (Secret data), validated on the way in: the Secret is cluster input like any other.

export function serializeKeySet(set: KeySet): string {
  return JSON.stringify({ version: 1, ...set });
}

export function parseKeySet(text: string): KeySet {
  const raw: unknown = JSON.parse(text);
  if (!isRecord(raw) || raw.version !== 1) throw new Error('signing key set: unsupported or missing version');
  const current = parseKey(raw.current, 'current');
  const next = raw.next === undefined ? undefined : parseKey(raw.next, 'next');
  if (!Array.isArray(raw.previous)) throw new Error('signing key set: previous must be a list');
  const previous = raw.previous.map((k, i) => parseKey(k, `previous[${i}]`));
  return next ? { current, next, previous } : { current, previous };
}

function parseKey(value: unknown, where: string): SigningKey {
  if (!isRecord(value)) throw new Error(`signing key set: ${where} is not an object`);
  const { kid, privateJwk, createdAt, expiresAt, publishedAt: published } = value;
  if (published !== undefined && typeof published !== 'number')
    throw new Error(`signing key set: ${where}.publishedAt is not a number`);
  if (
    typeof kid !== 'string' ||
    typeof createdAt !== 'number' ||
    typeof expiresAt !== 'number' ||
    !isRecord(privateJwk)
  ) {
    throw new Error(`signing key set: ${where} lacks kid, createdAt, expiresAt or privateJwk`);
  }
  if (privateJwk.kty !== 'EC' || privateJwk.crv !== 'P-256' || typeof privateJwk.d !== 'string') {
    throw new Error(`signing key set: ${where} is not an EC P-256 private key`);
  }
  return {
    kid,
    privateJwk: privateJwk,
    createdAt,
    expiresAt,
    ...(published !== undefined ? { publishedAt: published } : {}),
  };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
