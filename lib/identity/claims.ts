/**
 * The agent token's shape, shared by the issuer (operator), the sidecar and verifiers. JWT-SVID compatible:
 * header only alg/kid/typ, `sub` a SPIFFE ID, exactly one `aud`; pod-level detail in one namespaced claim.
 */
export const AGENT_CLAIM = 'agentfence.io';
export const TOKEN_ALGORITHM = 'ES256';
/** The header the sidecar uses for the agent token when the request already carries its own Authorization. */
export const AGENT_TOKEN_HEADER = 'agentfence-identity';

export interface AgentClaim {
  ns: string;
  pod: { name: string; uid: string };
  sa: string;
  node?: string;
  /** The entitlement revision the pod had when the token was issued. */
  rev: string;
}

export interface AgentTokenPayload {
  iss: string;
  sub: string;
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  [AGENT_CLAIM]: AgentClaim;
}

const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const SEGMENT = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export function isTrustDomain(value: string): boolean {
  return TRUST_DOMAIN.test(value);
}

/** spiffe://<trust-domain>/ns/<namespace>/agent/<agent> */
export function agentSpiffeId(trustDomain: string, namespace: string, agent: string): string {
  if (!isTrustDomain(trustDomain)) throw new Error(`invalid trust domain '${trustDomain}'`);
  if (!SEGMENT.test(namespace) || !SEGMENT.test(agent)) throw new Error(`invalid namespace or agent name in SPIFFE ID`);
  return `spiffe://${trustDomain}/ns/${namespace}/agent/${agent}`;
}

export interface ParsedAgentId {
  trustDomain: string;
  namespace: string;
  agent: string;
}

export function parseAgentSpiffeId(id: string): ParsedAgentId | undefined {
  const match = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/agent\/([^/]+)$/.exec(id);
  if (!match) return undefined;
  const [, trustDomain = '', namespace = '', agent = ''] = match;
  if (!isTrustDomain(trustDomain) || !SEGMENT.test(namespace) || !SEGMENT.test(agent)) return undefined;
  return { trustDomain, namespace, agent };
}

/** Where an issuer publishes its keys unless it says otherwise: `<issuer>/.well-known/jwks.json` (OIDC discovery). */
export function defaultJwksUri(issuer: string): string {
  return `${issuer.replace(/\/$/, '')}/.well-known/jwks.json`;
}
