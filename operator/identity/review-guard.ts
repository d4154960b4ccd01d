/**
 * What stands between a presented service-account token and a TokenReview, so that invalid tokens cannot make
 * the API server do work for free:
 *  1. a shape check, without any review: at most 8 KiB, a compact JWS of base64url parts, a JSON header with an
 *     asymmetric `alg` (what the API server signs with) and `typ` JWT when present, a JSON payload not expired by
 *     its own `exp` and, when `aud` is readable, naming our audience. The claims are *unverified* here: they can
 *     only make us refuse, never accept — the TokenReview stays the authority on validity;
 *  2. a negative cache (by token hash, bounded, a few seconds): the same bad token is reviewed once;
 *  3. single flight: concurrent requests with one token share one review;
 *  4. rate limits before reviewing: per claimed pod (the unverified `kubernetes.io.pod.uid`), per source address,
 *     and overall — a flood of distinct bad tokens costs a bounded number of reviews.
 */
import { createHash } from 'node:crypto';
import { Refusal } from './exchange.ts';

export interface Bucket {
  burst: number;
  perSecond: number;
}

export interface ReviewGuardOptions {
  audience: string;
  maxTokenBytes?: number;
  negativeCacheMs?: number;
  negativeCacheEntries?: number;
  perPod?: Bucket;
  perSource?: Bucket;
  global?: Bucket;
  now?: () => number;
}

/** Why a token was refused without a review (counted by the caller). */
export type SkipReason = 'malformed' | 'cached_refusal' | 'rate_limited';

/** Algorithms the API server can sign service-account tokens with; anything else is not one of its tokens. */
const API_SERVER_ALGORITHMS = new Set([
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
]);
const JWS = /^[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}$/;
const CLOCK_SKEW_MS = 60_000;

export class SkippedReview extends Error {
  override readonly name = 'SkippedReview';
  readonly refusal: Refusal;
  readonly reason: SkipReason;
  constructor(reason: SkipReason, refusal: Refusal) {
    super(refusal.message);
    this.reason = reason;
    this.refusal = refusal;
  }
}

export class ReviewGuard {
  readonly #o: Required<Omit<ReviewGuardOptions, 'now'>> & { now: () => number };
  readonly #refused = new Map<string, { refusal: Refusal; until: number }>();
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  constructor(options: ReviewGuardOptions) {
    this.#o = {
      maxTokenBytes: 8192,
      negativeCacheMs: 10_000,
      negativeCacheEntries: 10_000,
      perPod: { burst: 5, perSecond: 1 },
      perSource: { burst: 50, perSecond: 10 },
      global: { burst: 200, perSecond: 100 },
      now: Date.now,
      ...options,
    };
  }

  static hash(token: string): string {
    return createHash('sha256').update(token).digest('hex');
  }

  /** Throws SkippedReview when the token must be refused without a review; otherwise takes the rate-limit tokens. */
  admit(token: string, hash: string, source: string | undefined): void {
    const claims = this.#shape(token);
    const now = this.#o.now();
    const cached = this.#refused.get(hash);
    if (cached && cached.until > now) throw new SkippedReview('cached_refusal', cached.refusal);
    const limited = new Refusal('rate_limited', 'too many token reviews; slow down');
    // Check all buckets before taking from any, so a refusal by one does not drain the others.
    const keys = [
      ...(claims.podUID ? [[`pod:${claims.podUID}`, this.#o.perPod] as const] : []),
      ...(source ? [[`src:${source}`, this.#o.perSource] as const] : []),
      ['global', this.#o.global] as const,
    ];
    const buckets = keys.map(([key, limit]) => ({ key, bucket: this.#refill(key, limit, now) }));
    if (buckets.some(({ bucket }) => bucket.tokens < 1)) throw new SkippedReview('rate_limited', limited);
    for (const { key, bucket } of buckets) {
      bucket.tokens -= 1;
      this.#buckets.set(key, bucket);
    }
    if (this.#buckets.size > 50_000) this.#buckets.delete(this.#buckets.keys().next().value ?? '');
  }

  /** A review refused this token: refuse it again without a review for a few seconds. */
  remember(hash: string, refusal: Refusal): void {
    const now = this.#o.now();
    if (this.#refused.size >= this.#o.negativeCacheEntries) {
      for (const [k, v] of this.#refused) if (v.until <= now) this.#refused.delete(k);
      // Still full of live entries: drop the oldest (Map keeps insertion order).
      while (this.#refused.size >= this.#o.negativeCacheEntries)
        this.#refused.delete(this.#refused.keys().next().value ?? '');
    }
    this.#refused.set(hash, { refusal, until: now + this.#o.negativeCacheMs });
  }

  #refill(key: string, limit: Bucket, now: number): { tokens: number; at: number } {
    const bucket = this.#buckets.get(key) ?? { tokens: limit.burst, at: now };
    return { tokens: Math.min(limit.burst, bucket.tokens + ((now - bucket.at) / 1000) * limit.perSecond), at: now };
  }

  /** The shape check; returns the (unverified) claimed pod uid for rate limiting. */
  #shape(token: string): { podUID?: string } {
    const malformed = (message: string): SkippedReview =>
      new SkippedReview('malformed', new Refusal('token_invalid', message));
    if (token.length > this.#o.maxTokenBytes)
      throw malformed(`the token is longer than ${this.#o.maxTokenBytes} bytes`);
    if (!JWS.test(token)) throw malformed('the token is not a JWT (three base64url parts)');
    const [h = '', p = ''] = token.split('.');
    const header = decodeJson(h);
    if (!header) throw malformed('the token header is not base64url JSON');
    if (typeof header.alg !== 'string' || !API_SERVER_ALGORITHMS.has(header.alg))
      throw malformed('the token is not signed with an algorithm the API server uses');
    if (header.typ !== undefined && (typeof header.typ !== 'string' || header.typ.toUpperCase() !== 'JWT'))
      throw malformed('the token type is not JWT');
    const payload = decodeJson(p);
    if (!payload) throw malformed('the token payload is not base64url JSON');
    if (typeof payload.exp === 'number' && payload.exp * 1000 + CLOCK_SKEW_MS < this.#o.now())
      throw malformed('the token has expired');
    const aud = payload.aud;
    const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : undefined;
    if (audiences && !audiences.includes(this.#o.audience)) {
      throw new SkippedReview(
        'malformed',
        new Refusal('wrong_audience', `the token is not for audience ${this.#o.audience}`),
      );
    }
    const k8s = payload['kubernetes.io'];
    const pod = isRecord(k8s) && isRecord(k8s.pod) ? k8s.pod : undefined;
    return typeof pod?.uid === 'string' && pod.uid.length <= 64 ? { podUID: pod.uid } : {};
  }
}

function decodeJson(part: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return isRecord(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
