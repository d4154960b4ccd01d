/**
 * Mints agent tokens (ES256 JWTs) with the current signing key. Private keys are imported once per kid and
 * cached, so issuance costs one ECDSA signature.
 */
import { randomBytes } from 'node:crypto';
import { importJWK, SignJWT, type CryptoKey as JoseKey } from 'jose';
import {
  AGENT_CLAIM,
  TOKEN_ALGORITHM,
  agentSpiffeId,
  defaultJwksUri,
  type AgentClaim,
} from '../../lib/identity/claims.ts';
import type { KeySet, SigningKey } from './keys.ts';

export interface AgentTokenRequest {
  namespace: string;
  agent: string;
  podName: string;
  podUID: string;
  serviceAccountName: string;
  nodeName?: string;
  revision: string;
  audience: string;
  ttlSeconds: number;
}

export interface IssuedToken {
  token: string;
  jti: string;
  issuedAt: number;
  expiresAt: number;
}

export interface TokenIssuerOptions {
  issuer: string;
  trustDomain: string;
  /** The live key set (replicas reload it when the Secret changes). */
  keys: () => KeySet;
  now?: () => number;
}

export class TokenIssuer {
  private readonly options: TokenIssuerOptions;
  private readonly imported = new Map<string, Promise<JoseKey | Uint8Array>>();

  constructor(options: TokenIssuerOptions) {
    this.options = options;
  }

  async issue(req: AgentTokenRequest): Promise<IssuedToken> {
    const now = Math.floor((this.options.now?.() ?? Date.now()) / 1000);
    const key = this.options.keys().current;
    // A token never outlives the key that signed it, so retiring keys bounds every token.
    const exp = Math.min(now + req.ttlSeconds, Math.floor(key.expiresAt / 1000));
    if (exp <= now) throw new Error('the current signing key has expired');
    const jti = randomBytes(16).toString('base64url');
    const claim: AgentClaim = {
      ns: req.namespace,
      pod: { name: req.podName, uid: req.podUID },
      sa: req.serviceAccountName,
      rev: req.revision,
      ...(req.nodeName ? { node: req.nodeName } : {}),
    };
    const token = await new SignJWT({ [AGENT_CLAIM]: claim })
      .setProtectedHeader({ alg: TOKEN_ALGORITHM, kid: key.kid, typ: 'JWT' })
      .setIssuer(this.options.issuer)
      .setSubject(agentSpiffeId(this.options.trustDomain, req.namespace, req.agent))
      .setAudience(req.audience)
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(exp)
      .setJti(jti)
      .sign(await this.signingKey(key));
    return { token, jti, issuedAt: now, expiresAt: exp };
  }

  private signingKey(key: SigningKey): Promise<JoseKey | Uint8Array> {
    let imported = this.imported.get(key.kid);
    if (!imported) {
      imported = importJWK(key.privateJwk, TOKEN_ALGORITHM);
      this.imported.set(key.kid, imported);
      if (this.imported.size > 8) this.imported.delete(this.imported.keys().next().value ?? '');
    }
    return imported;
  }
}

/** OpenID Provider metadata, enough for OIDC libraries and Istio RequestAuthentication to find the JWKS. */
export function openIdConfiguration(issuer: string): Record<string, unknown> {
  return {
    issuer,
    jwks_uri: defaultJwksUri(issuer),
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: [TOKEN_ALGORITHM],
    claims_supported: ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jti', AGENT_CLAIM],
  };
}
