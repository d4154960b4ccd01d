/**
 * Verifies agent tokens for the receiving end (an internal API, an MCP server, another agent): signature against
 * the issuer's JWKS, algorithm allow-list, issuer, exactly one audience (ours), JWT-SVID header and claims, and
 * a SPIFFE subject in the expected trust domain. Exported as `agentfence/verify`.
 */
import { createLocalJWKSet, errors, jwtVerify, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import {
  AGENT_CLAIM,
  TOKEN_ALGORITHM,
  defaultJwksUri,
  parseAgentSpiffeId,
  type AgentClaim,
} from '../identity/claims.ts';
import { CodedError } from '../errors.ts';
import { DEFAULT_JWKS_GRACE_MS, remoteKeys } from './remote-keys.ts';

export { AGENT_TOKEN_HEADER } from '../identity/claims.ts';

export interface AgentVerifierOptions {
  /** The Agentfence issuer URL (`iss`). */
  issuer: string;
  /** This service's audience: tokens for anyone else are refused. */
  audience: string;
  /** Where to fetch keys; defaults to `<issuer>/.well-known/jwks.json`. */
  jwksUri?: string;
  /** A fixed key set instead of fetching (tests, air-gapped setups). */
  jwks?: JSONWebKeySet;
  /** Only accept agents of this trust domain (recommended). */
  trustDomain?: string;
  /** Default 30 s. */
  clockToleranceSeconds?: number;
  /** How long fetched keys are trusted before refetching; default 60 s. Unknown kids refetch sooner (cooldown 30 s). */
  jwksCacheMaxAgeMs?: number;
  /** Tokens issued longer ago than this are refused even if not expired; default 15 min (the longest TTL). */
  maxTokenAgeSeconds?: number;
  /** Minimum time between JWKS fetches, also when a token names an unknown kid; default 30 s. */
  jwksCooldownMs?: number;
  /** A fetch for the JWKS, e.g. one that trusts the issuer's private CA. */
  fetch?: typeof fetch;
  /**
   * While the JWKS endpoint is unreachable, keep verifying with the last key set fetched successfully for this
   * long (default 15 min, the longest token lifetime); then refuse with `jwks_unavailable`.
   */
  jwksGraceMs?: number;
}

export interface AgentIdentity {
  /** spiffe://<trust-domain>/ns/<namespace>/agent/<agent> */
  sub: string;
  trustDomain: string;
  namespace: string;
  agent: string;
  pod: { name: string; uid: string };
  serviceAccount: string;
  node?: string;
  revision: string;
  audience: string;
  jti: string;
  issuedAt: Date;
  expiresAt: Date;
}

export type AgentTokenErrorCode =
  | 'missing_token'
  | 'malformed_token'
  | 'bad_signature'
  | 'unknown_key'
  | 'algorithm_not_allowed'
  | 'expired'
  | 'not_yet_valid'
  | 'wrong_issuer'
  | 'wrong_audience'
  | 'wrong_type'
  | 'missing_claim'
  | 'wrong_subject'
  | 'jwks_unavailable';

/** A refusal with a stable code; the message never contains the token. */
export class AgentTokenError extends CodedError<AgentTokenErrorCode> {}

export interface AgentVerifier {
  verify(token: string | undefined): Promise<AgentIdentity>;
}

export function createAgentVerifier(options: AgentVerifierOptions): AgentVerifier {
  const keys: JWTVerifyGetKey = options.jwks
    ? createLocalJWKSet(options.jwks)
    : remoteKeys({
        url: new URL(options.jwksUri ?? defaultJwksUri(options.issuer)),
        cacheMaxAgeMs: options.jwksCacheMaxAgeMs ?? 60_000,
        cooldownMs: options.jwksCooldownMs ?? 30_000,
        graceMs: options.jwksGraceMs ?? DEFAULT_JWKS_GRACE_MS,
        ...(options.fetch ? { fetch: options.fetch } : {}),
      });
  const tolerance = options.clockToleranceSeconds ?? 30;

  return {
    async verify(token) {
      if (!token) throw new AgentTokenError('missing_token', 'no agent token');
      if (token.split('.').length !== 3) throw new AgentTokenError('malformed_token', 'not a compact JWS');
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, keys, {
          algorithms: [TOKEN_ALGORITHM],
          issuer: options.issuer,
          audience: options.audience,
          typ: 'JWT',
          requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti'],
          clockTolerance: tolerance,
          maxTokenAge: options.maxTokenAgeSeconds ?? 900,
        }));
      } catch (err) {
        throw translate(err);
      }
      // JWT-SVID and our issuer: exactly one audience. An array, even one containing us, is refused.
      if (typeof payload.aud !== 'string') {
        throw new AgentTokenError('wrong_audience', 'the token must carry exactly one audience');
      }
      const sub = payload.sub ?? '';
      const parsed = parseAgentSpiffeId(sub);
      if (!parsed) throw new AgentTokenError('wrong_subject', 'sub is not an agent SPIFFE ID');
      if (options.trustDomain && parsed.trustDomain !== options.trustDomain) {
        throw new AgentTokenError(
          'wrong_subject',
          `agent is from trust domain '${parsed.trustDomain}', not '${options.trustDomain}'`,
        );
      }
      const claim = agentClaim(payload[AGENT_CLAIM]);
      if (!claim) throw new AgentTokenError('missing_claim', `missing or malformed '${AGENT_CLAIM}' claim`);
      if (claim.ns !== parsed.namespace)
        throw new AgentTokenError('wrong_subject', 'namespace claim does not match sub');
      return {
        sub,
        ...parsed,
        pod: claim.pod,
        serviceAccount: claim.sa,
        ...(claim.node ? { node: claim.node } : {}),
        revision: claim.rev,
        audience: payload.aud,
        jti: payload.jti ?? '',
        issuedAt: new Date((payload.iat ?? 0) * 1000),
        expiresAt: new Date((payload.exp ?? 0) * 1000),
      };
    },
  };
}

function agentClaim(value: unknown): AgentClaim | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const pod = v.pod as Record<string, unknown> | undefined;
  if (typeof v.ns !== 'string' || typeof v.sa !== 'string' || typeof v.rev !== 'string') return undefined;
  if (typeof pod !== 'object' || typeof pod.name !== 'string' || typeof pod.uid !== 'string') return undefined;
  if (v.node !== undefined && typeof v.node !== 'string') return undefined;
  return {
    ns: v.ns,
    sa: v.sa,
    rev: v.rev,
    pod: { name: pod.name, uid: pod.uid },
    ...(typeof v.node === 'string' ? { node: v.node } : {}),
  };
}

function translate(err: unknown): AgentTokenError {
  if (err instanceof AgentTokenError) return err;
  if (err instanceof errors.JWTExpired) return new AgentTokenError('expired', 'the token has expired');
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') return new AgentTokenError('missing_claim', `the token lacks the ${err.claim} claim`);
    switch (err.claim) {
      case 'iss':
        return new AgentTokenError('wrong_issuer', 'unexpected issuer');
      case 'aud':
        return new AgentTokenError('wrong_audience', 'the token is for another audience');
      case 'nbf':
        return new AgentTokenError('not_yet_valid', 'the token is not valid yet');
      case 'typ':
        return new AgentTokenError('wrong_type', 'the token type must be JWT');
      case 'iat':
        return new AgentTokenError('expired', 'the token was issued too long ago');
      default:
        return new AgentTokenError('missing_claim', `claim ${err.claim}: ${err.message}`);
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed)
    return new AgentTokenError('algorithm_not_allowed', 'only ES256 is accepted');
  if (err instanceof errors.JWKSNoMatchingKey)
    return new AgentTokenError('unknown_key', 'no published key matches the token kid');
  if (err instanceof errors.JWSSignatureVerificationFailed)
    return new AgentTokenError('bad_signature', 'signature verification failed');
  if (err instanceof errors.JWKSTimeout || (err instanceof errors.JOSEError && err.code === 'ERR_JOSE_GENERIC')) {
    return new AgentTokenError('jwks_unavailable', 'could not fetch the issuer keys');
  }
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid || err instanceof errors.JOSENotSupported) {
    return new AgentTokenError('malformed_token', err.message);
  }
  return new AgentTokenError('malformed_token', 'the token could not be verified');
}
