/**
 * Verifies people's and client apps' bearer tokens for an agent's inbound gate: an OIDC issuer's JWT against its
 * JWKS (cached, refetched on an unknown kid within a cooldown, last good set kept through outages —
 * remote-keys.ts), asymmetric algorithms only (never `none`, never an HMAC whose "secret" could be the public
 * key), the issuer exactly, expiry and not-before with a small tolerance. Audiences and required claims are
 * judged by the caller against each rule. Errors carry a stable code and never the token.
 */
import { errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { CodedError } from '../errors.ts';
import { AgentTokenError } from './index.ts';
import { DEFAULT_JWKS_GRACE_MS, remoteKeys } from './remote-keys.ts';

export const USER_TOKEN_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'];

export type UserTokenErrorCode =
  | 'malformed_token'
  | 'bad_signature'
  | 'unknown_key'
  | 'algorithm_not_allowed'
  | 'expired'
  | 'not_yet_valid'
  | 'wrong_issuer'
  | 'missing_claim'
  | 'jwks_unavailable';

export class UserTokenError extends CodedError<UserTokenErrorCode> {}

export interface VerifiedUser {
  issuer: string;
  sub: string;
  audiences: string[];
  claims: JWTPayload;
  expiresAt: number;
}

export interface UserVerifier {
  verify(token: string): Promise<VerifiedUser>;
}

export function createUserVerifier(options: {
  issuer: string;
  jwksUri: string;
  fetch?: typeof fetch;
  clockToleranceSeconds?: number;
}): UserVerifier {
  const keys: JWTVerifyGetKey = remoteKeys({
    url: new URL(options.jwksUri),
    cacheMaxAgeMs: 10 * 60_000,
    cooldownMs: 10_000,
    graceMs: DEFAULT_JWKS_GRACE_MS,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  return {
    async verify(token) {
      if (token.split('.').length !== 3) throw new UserTokenError('malformed_token', 'not a compact JWS');
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, keys, {
          algorithms: USER_TOKEN_ALGORITHMS,
          issuer: options.issuer,
          requiredClaims: ['iss', 'sub', 'exp'],
          clockTolerance: options.clockToleranceSeconds ?? 30,
        }));
      } catch (err) {
        throw translate(err);
      }
      const aud = payload.aud;
      return {
        issuer: options.issuer,
        sub: payload.sub ?? '',
        audiences: typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [],
        claims: payload,
        expiresAt: (payload.exp ?? 0) * 1000,
      };
    },
  };
}

function translate(err: unknown): UserTokenError {
  if (err instanceof AgentTokenError) {
    return new UserTokenError(err.code === 'unknown_key' ? 'unknown_key' : 'jwks_unavailable', err.message);
  }
  if (err instanceof errors.JWTExpired) return new UserTokenError('expired', 'the token has expired');
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'iss') return new UserTokenError('wrong_issuer', 'unexpected issuer');
    if (err.claim === 'nbf') return new UserTokenError('not_yet_valid', 'the token is not valid yet');
    return new UserTokenError('missing_claim', `claim ${err.claim}: ${err.reason}`);
  }
  if (err instanceof errors.JOSEAlgNotAllowed)
    return new UserTokenError('algorithm_not_allowed', 'only asymmetric signature algorithms are accepted');
  if (err instanceof errors.JWKSNoMatchingKey)
    return new UserTokenError('unknown_key', 'no published key matches the token kid');
  if (err instanceof errors.JWSSignatureVerificationFailed)
    return new UserTokenError('bad_signature', 'signature verification failed');
  if (err instanceof errors.JWKSTimeout)
    return new UserTokenError('jwks_unavailable', 'could not fetch the issuer keys');
  return new UserTokenError('malformed_token', 'the token could not be verified');
}
