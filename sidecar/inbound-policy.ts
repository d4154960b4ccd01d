/**
 * The gate's decision, as a pure function: the inbound grants of the pod's entitlement (compiled once per
 * snapshot) × one request's facts (app port, method, canonical path, source address) × the caller's verified
 * credential → allow under a rule, or the refusal: 401 without a valid credential, 403 with one but no grant.
 * Deny by default: no rule, nothing admitted.
 */
import { defaultJwksUri } from '../lib/identity/claims.ts';
import type { AgentEntitlement, EntitlementIngressRule } from '../lib/api/types.generated.ts';
import { containsCidr, parseCidr, parseIP, type Cidr } from '../lib/ip.ts';
import { compileHttpProfile, judgeHttp, type HttpProfile } from './http-profile.ts';

/** Who is calling, as far as verification went. */
export type Caller =
  | { kind: 'agent'; spiffeID: string; podUID: string }
  | { kind: 'user'; issuer: string; sub: string; audiences: string[]; claims: Record<string, unknown> }
  | { kind: 'none'; reason?: string; detail?: string }
  | { kind: 'invalid'; reason: string; detail: string };

export interface InboundFacts {
  appPort: number;
  method: string;
  /** Canonical path. */
  path: string;
  /** The peer address of the connection. */
  source: string;
  now: number;
}

export interface InboundRule {
  policy: string;
  rule: string;
  mode: 'Enforce' | 'Audit';
  ports: { from: number; to: number }[];
  /** spiffeID → live pod uids */
  agents?: Map<string, Set<string>>;
  users?: { issuer: string; audiences: Set<string>; claims: { name: string; value: string }[]; jwksUri: string };
  cidrs?: Cidr[];
  http?: HttpProfile[];
  maxBodyBytes?: number;
  rateLimit?: { requests: number; perMs: number };
  expiresAt?: number;
}

export type InboundDecision =
  | { allow: true; rule: InboundRule }
  | { allow: false; status: 401 | 403; reason: string; missing: string; rule?: InboundRule };

const PER = { s: 1000, m: 60_000, h: 3_600_000 } as const;

export function parseWindow(per: string): number | undefined {
  const m = /^([1-9][0-9]{0,3})(s|m|h)$/.exec(per);
  return m ? Number(m[1]) * PER[m[2] as keyof typeof PER] : undefined;
}

function compileRule(r: EntitlementIngressRule): InboundRule {
  const out: InboundRule = {
    policy: r.policy,
    rule: r.rule,
    mode: r.mode,
    ports: r.ports
      .filter((p) => (p.protocol ?? 'TCP') === 'TCP')
      .map((p) => ({ from: p.port, to: p.endPort ?? p.port })),
  };
  if (r.agents) out.agents = new Map(r.agents.map((a) => [a.spiffeID, new Set(a.pods)]));
  if (r.users) {
    out.users = {
      issuer: r.users.issuer,
      audiences: new Set(r.users.audiences),
      claims: r.users.claims ?? [],
      jwksUri: r.users.jwksUri ?? defaultJwksUri(r.users.issuer),
    };
  }
  if (r.cidrs) out.cidrs = r.cidrs.map(parseCidr).filter((c): c is Cidr => c !== undefined);
  const http = compileHttpProfile(r.http);
  if (http) out.http = http;
  if (r.maxBodyBytes !== undefined) out.maxBodyBytes = r.maxBodyBytes;
  if (r.rateLimit) {
    const perMs = parseWindow(r.rateLimit.per);
    // An unreadable window fails closed: no request fits it.
    out.rateLimit = { requests: perMs ? r.rateLimit.requests : 0, perMs: perMs ?? 1000 };
  }
  if (r.expiresAt) out.expiresAt = Date.parse(r.expiresAt);
  return out;
}

/** A string claim equal to the value, or an array claim containing it. */
export function claimHolds(claims: Record<string, unknown>, name: string, value: string): boolean {
  const v = claims[name];
  if (typeof v === 'string') return v === value;
  if (typeof v === 'boolean' || typeof v === 'number') return String(v) === value;
  return Array.isArray(v) && v.some((x) => x === value);
}

export class InboundPolicy {
  readonly revision: string;
  readonly rules: readonly InboundRule[];
  /** The user issuers some rule accepts (issuer → JWKS URI). */
  readonly issuers: ReadonlyMap<string, string>;
  /** Headers some rule names as identity-bearing: stripped from every inbound request, whatever rule admits it. */
  readonly identityHeaders: readonly string[];

  constructor(entitlement: AgentEntitlement | undefined) {
    this.revision = entitlement?.spec.revision ?? '';
    this.rules = (entitlement?.spec.ingress ?? []).map(compileRule);
    const issuers = new Map<string, string>();
    for (const r of this.rules) if (r.users) issuers.set(r.users.issuer, r.users.jwksUri);
    this.issuers = issuers;
    this.identityHeaders = [
      ...new Set((entitlement?.spec.ingress ?? []).flatMap((r) => r.identityHeaders ?? []).map((h) => h.toLowerCase())),
    ];
  }

  decide(facts: InboundFacts, caller: Caller): InboundDecision {
    const port = facts.appPort;
    const live = this.rules.filter(
      (r) =>
        r.ports.some((p) => port >= p.from && port <= p.to) && (r.expiresAt === undefined || r.expiresAt > facts.now),
    );
    if (caller.kind === 'invalid') return { allow: false, status: 401, reason: caller.reason, missing: caller.detail };
    let granted: InboundRule[];
    let refusal: { status: 401 | 403; reason: string; missing: string };
    if (caller.kind === 'none') {
      const ip = parseIP(facts.source.replace(/^::ffff:(?=\d+\.)/, ''));
      const single: Cidr | undefined = ip && {
        family: ip.family,
        network: ip.value,
        prefix: ip.family === 4 ? 32 : 128,
      };
      granted = single ? live.filter((r) => r.cidrs?.some((c) => containsCidr(c, single))) : [];
      refusal = {
        status: 401,
        reason: caller.reason ?? 'missing_credential',
        missing:
          caller.detail ??
          `no valid credential: callers of port ${port} prove who they are with an agent token (agentfence-identity) or a user bearer token`,
      };
    } else if (caller.kind === 'agent') {
      const named = live.filter((r) => r.agents?.has(caller.spiffeID));
      granted = named.filter((r) => r.agents?.get(caller.spiffeID)?.has(caller.podUID));
      refusal =
        named.length > 0
          ? {
              status: 403,
              reason: 'caller_pod_not_live',
              missing: `${caller.spiffeID} may call port ${port}, but the token's pod is not one of its live pods (deleted or replaced)`,
            }
          : {
              status: 403,
              reason: 'caller_not_allowed',
              missing: `no ingress rule lets ${caller.spiffeID} call port ${port}`,
            };
    } else {
      const byIssuer = live.filter(
        (r) => r.users?.issuer === caller.issuer && caller.audiences.some((a) => r.users?.audiences.has(a)),
      );
      granted = byIssuer.filter((r) =>
        (r.users?.claims ?? []).every((c) => claimHolds(caller.claims, c.name, c.value)),
      );
      const lacking = byIssuer[0]?.users?.claims.find((c) => !claimHolds(caller.claims, c.name, c.value));
      refusal =
        byIssuer.length > 0
          ? {
              status: 403,
              reason: 'missing_claim',
              missing: `the user token lacks claim ${lacking?.name ?? ''}=${lacking?.value ?? ''} that every rule for port ${port} requires`,
            }
          : {
              status: 403,
              reason: 'user_not_allowed',
              missing: `no ingress rule lets users of ${caller.issuer} call port ${port}`,
            };
    }
    if (granted.length === 0) return { allow: false, ...refusal };
    let methodSeen = false;
    for (const rule of granted) {
      if (!rule.http) return { allow: true, rule };
      const verdict = judgeHttp(rule.http, facts.method, facts.path);
      if (verdict === 'allow') return { allow: true, rule };
      if (verdict === 'path') methodSeen = true;
    }
    const rule = granted[0];
    return methodSeen
      ? {
          allow: false,
          status: 403,
          reason: 'path_not_allowed',
          missing: `no ingress rule allows path ${facts.path} on port ${port}`,
          ...(rule ? { rule } : {}),
        }
      : {
          allow: false,
          status: 403,
          reason: 'method_not_allowed',
          missing: `no ingress rule allows ${facts.method} ${facts.path} on port ${port}`,
          ...(rule ? { rule } : {}),
        };
  }
}

/** Per-caller token buckets for rateLimit; bounded (oldest keys dropped first). */
export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #maxKeys: number;
  constructor(maxKeys = 100_000) {
    this.#maxKeys = maxKeys;
  }

  /** 0 when admitted, else the seconds until a request would be. */
  take(key: string, limit: { requests: number; perMs: number }, now: number): number {
    if (limit.requests <= 0) return Math.ceil(limit.perMs / 1000);
    const rate = limit.requests / limit.perMs; // tokens per ms
    const b = this.#buckets.get(key) ?? { tokens: limit.requests, at: now };
    b.tokens = Math.min(limit.requests, b.tokens + (now - b.at) * rate);
    b.at = now;
    this.#buckets.delete(key);
    this.#buckets.set(key, b);
    if (this.#buckets.size > this.#maxKeys) this.#buckets.delete(this.#buckets.keys().next().value ?? '');
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / rate / 1000));
  }
}
