/**
 * The issuer's JWKS for `agentfence/verify`, fetched and cached by jose, plus what jose does not do: when the
 * endpoint is unreachable (refused, timed out, not 200, not a key set), keep verifying with the last key set that
 * was fetched successfully for a bounded grace period (default 15 min, the longest token lifetime), and after that
 * refuse with `jwks_unavailable` — never `malformed_token`, since nothing is wrong with the token. While the
 * endpoint is failing, a new fetch is attempted at most once per cooldown, so verifications do not each wait for
 * a connect timeout. A token whose key is not in the last good set is `unknown_key`, as before.
 */
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  errors,
  jwksCache,
  type ExportedJWKSCache,
  type JWTVerifyGetKey,
} from 'jose';
import { AgentTokenError } from './index.ts';

export const DEFAULT_JWKS_GRACE_MS = 15 * 60_000;

export interface RemoteKeysOptions {
  url: URL;
  cacheMaxAgeMs: number;
  cooldownMs: number;
  /** How long the last good key set is used while the endpoint is unreachable. */
  graceMs: number;
  fetch?: typeof fetch;
  now?: () => number;
}

/** Errors that say something about the token (its kid, its alg), not about the key endpoint. */
function isTokenError(err: unknown): boolean {
  return (
    err instanceof errors.JWKSNoMatchingKey ||
    err instanceof errors.JWKSMultipleMatchingKeys ||
    err instanceof errors.JOSEAlgNotAllowed ||
    err instanceof errors.JOSENotSupported ||
    err instanceof AgentTokenError
  );
}

export function remoteKeys(options: RemoteKeysOptions): JWTVerifyGetKey {
  const now = options.now ?? Date.now;
  // jose records the last successful fetch here: `uat` (when) and `jwks` (what).
  const cache: Partial<ExportedJWKSCache> = {};
  const remote = createRemoteJWKSet(options.url, {
    cacheMaxAge: options.cacheMaxAgeMs,
    cooldownDuration: options.cooldownMs,
    timeoutDuration: 5_000,
    [jwksCache]: cache as ExportedJWKSCache,
    ...(options.fetch ? { [customFetch]: options.fetch } : {}),
  });
  let failedAt: number | undefined;
  let lastGood: { uat: number; getKey: JWTVerifyGetKey } | undefined;

  const fallback = (): JWTVerifyGetKey => {
    const { uat, jwks } = cache;
    if (uat === undefined || jwks === undefined || now() - uat > options.graceMs) {
      throw new AgentTokenError(
        'jwks_unavailable',
        uat === undefined
          ? 'could not fetch the issuer keys'
          : `could not fetch the issuer keys, and the last good set is older than the ${options.graceMs / 1000} s grace period`,
      );
    }
    if (lastGood?.uat !== uat) lastGood = { uat, getKey: createLocalJWKSet(jwks) };
    return lastGood.getKey;
  };

  return async (header, token) => {
    if (failedAt !== undefined && now() - failedAt < options.cooldownMs) {
      return fallback()(header, token);
    }
    try {
      const key = await remote(header, token);
      failedAt = undefined;
      return key;
    } catch (err) {
      if (isTokenError(err)) throw err;
      failedAt = now();
      return fallback()(header, token);
    }
  };
}
