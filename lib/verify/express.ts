/**
 * Express middleware for resource servers: verifies the agent token and hands the handler the verified
 * identity (`agentOf(res)`). Looks in the dedicated agentfence-identity header first (the sidecar uses it when
 * the request has its own Authorization), then in `Authorization: Bearer`.
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { AGENT_TOKEN_HEADER } from '../identity/claims.ts';
import { AgentTokenError, type AgentIdentity, type AgentVerifier } from './index.ts';
import { agentAllowList, type AllowedAgent } from './allow.ts';

export { agentAllowList, type AllowedAgent } from './allow.ts';

export interface RequireAgentOptions {
  /**
   * The agents this route accepts, by full identity: SPIFFE IDs or `{namespace, agent}` pairs (see allow.ts).
   * Without it (and without `allow`) every agent the verifier accepts gets through.
   */
  allowAgents?: readonly AllowedAgent[];
  /** A further check on the verified identity and the request (runs after allowAgents). */
  allow?: (identity: AgentIdentity, req: Request) => boolean;
}

const IDENTITY = Symbol('agentfence.identity');

export function requireAgent(verifier: AgentVerifier, options: RequireAgentOptions = {}): RequestHandler {
  // Built once, so a bad entry fails at startup rather than on the first request.
  const allowed = options.allowAgents ? agentAllowList(options.allowAgents) : undefined;
  return (req: Request, res: Response, next: NextFunction) => {
    verifier
      .verify(tokenFrom(req))
      .then((identity) => {
        if ((allowed && !allowed(identity)) || (options.allow && !options.allow(identity, req))) {
          res.status(403).json({ error: 'forbidden', reason: 'agent_not_allowed', agent: identity.sub });
          return;
        }
        (res.locals as Record<symbol, AgentIdentity>)[IDENTITY] = identity;
        next();
      })
      .catch((err: unknown) => {
        const code = err instanceof AgentTokenError ? err.code : 'malformed_token';
        const message = err instanceof AgentTokenError ? err.message : 'the token could not be verified';
        res.setHeader('www-authenticate', `Bearer error="invalid_token", error_description="${code}"`);
        res.status(401).json({ error: 'unauthorized', reason: code, message });
      });
  };
}

/** The verified agent of this request; throws if the route is not behind requireAgent. */
export function agentOf(res: Response): AgentIdentity {
  const identity = (res.locals as Record<symbol, AgentIdentity | undefined>)[IDENTITY];
  if (!identity) throw new Error('agentOf() used on a route without requireAgent()');
  return identity;
}

function tokenFrom(req: Request): string | undefined {
  const dedicated = req.get(AGENT_TOKEN_HEADER);
  if (dedicated) return dedicated.trim();
  const auth = req.get('authorization');
  const match = auth ? /^Bearer\s+(\S+)$/i.exec(auth) : null;
  return match?.[1];
}
