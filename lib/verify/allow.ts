/**
 * Which agents a service accepts, by full identity. An agent name alone is not an identity: every namespace can
 * run an agent called `support-agent`, so a check by name accepts callers from every tenant. Entries are full
 * SPIFFE IDs (`spiffe://cluster.local/ns/demo/agent/support-agent`) or `{namespace, agent}` pairs; a bare name
 * is refused when the list is built, not silently widened.
 */
import { parseAgentSpiffeId } from '../identity/claims.ts';
import type { AgentIdentity } from './index.ts';

/** A full SPIFFE ID, or a namespace and agent (in the trust domain the verifier accepts, or the one given). */
export type AllowedAgent = string | { namespace: string; agent: string; trustDomain?: string };

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** Builds the check; throws on an entry that is not a full identity, naming it. */
export function agentAllowList(allowed: readonly AllowedAgent[]): (identity: AgentIdentity) => boolean {
  if (allowed.length === 0) throw new Error('allowAgents is empty: it would refuse every agent');
  const ids = new Set<string>();
  const pairs: { namespace: string; agent: string; trustDomain?: string }[] = [];
  for (const entry of allowed) {
    if (typeof entry === 'string') {
      const parsed = parseAgentSpiffeId(entry);
      if (!parsed) {
        throw new Error(
          `allowAgents entry '${entry}' is not an agent SPIFFE ID: use spiffe://<trust-domain>/ns/<namespace>/agent/<agent> or {namespace, agent} (an agent name alone would accept that name from every namespace)`,
        );
      }
      ids.add(entry);
      continue;
    }
    if (!DNS_LABEL.test(entry.namespace) || !DNS_LABEL.test(entry.agent)) {
      throw new Error(
        `allowAgents entry {namespace: '${entry.namespace}', agent: '${entry.agent}'}: both must be lower-case DNS labels`,
      );
    }
    pairs.push(entry);
  }
  return (identity) =>
    ids.has(identity.sub) ||
    pairs.some(
      (p) =>
        p.namespace === identity.namespace &&
        p.agent === identity.agent &&
        (p.trustDomain === undefined || p.trustDomain === identity.trustDomain),
    );
}
