import { describe, expect, it } from 'vitest';
import {
  nextRotationAt,
  parseKeySet,
  publicJwks,
  rotateKeys,
  serializeKeySet,
  type RotationPolicy,
} from '../../operator/identity/keys.ts';

const H = 3_600_000;
const policy: RotationPolicy = { keyLifetimeMs: 24 * H, clockSkewMs: 60_000 };

describe('signing key rotation', () => {
  it('publishes the next key at half-life, activates it when a sixth remains, and drops the old one after its expiry', async () => {
    const t0 = 1_700_000_000_000;
    const first = await rotateKeys(undefined, t0, policy);
    expect(first.next).toBeUndefined();
    expect(await rotateKeys(first, t0 + 11 * H, policy)).toBe(first); // nothing to do: same object, no write

    const prepared = await rotateKeys(first, t0 + 12 * H, policy);
    expect(prepared.current.kid).toBe(first.current.kid); // still signing with the old key
    expect(prepared.next).toBeDefined();
    expect(publicJwks(prepared).keys.map((k) => k.kid)).toEqual([first.current.kid, prepared.next?.kid]);
    expect(nextRotationAt(prepared)).toBe(t0 + 20 * H);

    const activated = await rotateKeys(prepared, t0 + 20 * H, policy);
    expect(activated.current.kid).toBe(prepared.next?.kid);
    expect(activated.previous.map((k) => k.kid)).toEqual([first.current.kid]);
    expect(publicJwks(activated).keys).toHaveLength(2);

    const later = await rotateKeys(activated, t0 + 24 * H + 61_000, policy);
    expect(later.previous).toEqual([]);
  });

  it('never publishes private key material', async () => {
    const set = await rotateKeys(undefined, Date.now(), policy);
    const jwks = JSON.stringify(publicJwks(set));
    expect(jwks).not.toContain('"d"');
    expect(publicJwks(set).keys[0]).toMatchObject({
      kty: 'EC',
      crv: 'P-256',
      alg: 'ES256',
      use: 'sig',
      kid: set.current.kid,
    });
  });

  it('round-trips through the Secret format and refuses damaged data with the reason', async () => {
    const set = await rotateKeys(await rotateKeys(undefined, 0, policy), 12 * H, policy);
    expect(parseKeySet(serializeKeySet(set))).toEqual(set);
    expect(() => parseKeySet('{"version":2}')).toThrow(/version/);
    const damaged = JSON.parse(serializeKeySet(set)) as { current: { privateJwk: { crv: string } } };
    damaged.current.privateJwk.crv = 'P-384';
    expect(() => parseKeySet(JSON.stringify(damaged))).toThrow(/current is not an EC P-256 private key/);
  });

  it('starts fresh when every key expired while nobody rotated', async () => {
    const old = await rotateKeys(undefined, 0, policy);
    const fresh = await rotateKeys(old, 48 * H, policy);
    expect(fresh.current.kid).not.toBe(old.current.kid);
    expect(fresh.current.createdAt).toBe(48 * H);
  });

  it('activates a key only after it has been published for the lead time, whatever the leader history', async () => {
    const t0 = 1_700_000_000_000;
    const lead = 120_000;
    const first = await rotateKeys(undefined, t0, { ...policy, publishLeadMs: lead });
    // No leader ran between half-life and the activation point: the next key is published only now...
    const late = t0 + 21 * H;
    const published = await rotateKeys(first, late, { ...policy, publishLeadMs: lead });
    expect(published.current.kid).toBe(first.current.kid);
    expect(published.next?.publishedAt).toBe(late);
    expect(nextRotationAt(published, { ...policy, publishLeadMs: lead })).toBe(late + lead);
    // ...and signs only once verifiers caching the JWKS for the lead time have seen it.
    expect((await rotateKeys(published, late + lead - 1, { ...policy, publishLeadMs: lead })).current.kid).toBe(
      first.current.kid,
    );
    const activated = await rotateKeys(published, late + lead, { ...policy, publishLeadMs: lead });
    expect(activated.current.kid).toBe(published.next?.kid);
    // The default lead covers agentfence/verify's 60 s JWKS cache.
    const byDefault = await rotateKeys(first, late);
    expect((await rotateKeys(byDefault, late + 60_000)).current.kid).toBe(first.current.kid);
  });

  it('promotes the published next key when the current one expired unrotated, and keeps publishedAt through the Secret', async () => {
    const first = await rotateKeys(undefined, 0, policy);
    const prepared = await rotateKeys(first, 12 * H, policy);
    const promoted = await rotateKeys(prepared, 25 * H, policy);
    expect(promoted.current.kid).toBe(prepared.next?.kid);
    expect(parseKeySet(serializeKeySet(prepared)).next?.publishedAt).toBe(12 * H);
    // Key sets written before publishedAt existed: published when created.
    const legacy = JSON.parse(serializeKeySet(prepared)) as { next: { publishedAt?: number } };
    delete legacy.next.publishedAt;
    expect(parseKeySet(JSON.stringify(legacy)).next?.publishedAt).toBeUndefined();
    expect((await rotateKeys(parseKeySet(JSON.stringify(legacy)), 20 * H, policy)).current.kid).toBe(
      prepared.next?.kid,
    );
    const bad = JSON.parse(serializeKeySet(prepared)) as { next: { publishedAt?: unknown } };
    bad.next.publishedAt = 'yesterday';
    expect(() => parseKeySet(JSON.stringify(bad))).toThrow(/publishedAt is not a number/);
  });
});
