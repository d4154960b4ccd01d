/**
 * The sidecar's policy engine: an AgentEntitlement compiled once per snapshot into lookup structures, and a pure
 * decision per request. Deny by default: a request is allowed only by a rule whose destination (host pattern or
 * CIDR), port, and — for plain HTTP — method, path and MCP tool all match.
 *
 * Host patterns: `api.example.com` exact, `*.example.com` exactly one label more, `**.example.com` one or
 * more labels. Hosts are compared lower-case, without a trailing dot, IDNs in punycode. IP-literal
 * destinations match `cidrs` only; DNS names match `hosts` only.
 */
import { domainToASCII } from 'node:url';
import { isIP } from 'node:net';
import type { AgentEntitlement, EntitlementCredentials, EntitlementEgressRule } from '../lib/api/types.generated.ts';
import { containsCidr, parseCidr, parseIP, type Cidr } from '../lib/ip.ts';
import { canonicalRulePath, compileHttpProfile, judgeHttp, type HttpProfile } from './http-profile.ts';

export type Mode = 'Enforce' | 'Audit';

export interface CompiledRule {
  policy: string;
  rule: string;
  mode: Mode;
  cidrs: Cidr[];
  ports: { from: number; to: number }[];
  /** Undefined: no HTTP profile (any method and path). */
  http?: HttpProfile[];
  mcp?: { path: string; tools: Set<string> };
  audience?: string;
  /** Agent addresses this rule reaches (by IP literal): the identity each expects, and its gate per app port. */
  peers?: Map<string, AgentPeer>;
  expiresAt?: number;
  /** HTTPS to this destination: forced inspection, or kept blind (never with a profile; the CRD refuses it). */
  tls?: 'Inspect' | 'Passthrough';
  /** PEM CAs that verify this destination's upstream TLS instead of the public roots ('' trusts nothing). */
  caBundle?: string;
  /** A credential the sidecar sets on every request this rule allows (the value comes with the snapshot). */
  credentials?: EntitlementCredentials;
}

/**
 * Whether HTTPS (CONNECT) under this rule must be inspected rather than tunnelled blind: its requests are judged
 * (an http/mcp profile), audited one by one (tls: Inspect), or carry a brokered credential, which can only be set
 * on a request the sidecar sees.
 */
export function needsInspection(rule: CompiledRule): boolean {
  return rule.http !== undefined || rule.mcp !== undefined || rule.tls === 'Inspect' || rule.credentials !== undefined;
}

export interface AgentPeer {
  spiffeID: string;
  /** App port → the callee sidecar's inbound gate. */
  gates: Map<number, number>;
}

export interface Destination {
  /** Normalized host: a DNS name or an IP literal (no brackets). */
  host: string;
  port: number;
}

export interface HttpRequestFacts extends Destination {
  method: string;
  /** Canonical path (see canonicalPath), no query. */
  path: string;
}

export type Decision =
  /** needsMcpCheck: a body sent to the rule's MCP path must be judged; inspect: a tunnel whose requests must be judged one by one. */
  | { allow: true; rule: CompiledRule; needsMcpCheck: boolean; inspect?: boolean }
  | { allow: false; reason: DenyReason; missing: string; rule?: CompiledRule };

export type DenyReason =
  | 'no_rule_for_destination'
  | 'method_not_allowed'
  | 'path_not_allowed'
  | 'l7_rule_needs_plain_http'
  | 'mcp_tool_not_allowed'
  | 'mcp_message_invalid'
  | 'method_override_not_allowed'
  | 'upgrade_needs_rule_without_l7';

interface HostIndex {
  exact: Map<string, CompiledRule[]>;
  /** `*.suffix` → rules (one extra label). */
  oneLabel: Map<string, CompiledRule[]>;
  /** `**.suffix` → rules (one or more extra labels). */
  anyDepth: Map<string, CompiledRule[]>;
}

export class Matcher {
  readonly revision: string;
  readonly rules: readonly CompiledRule[];
  /** All rules come from Audit-mode policies: denials are forwarded and logged as would_deny. */
  readonly auditOnly: boolean;
  private readonly hosts: HostIndex = { exact: new Map(), oneLabel: new Map(), anyDepth: new Map() };
  private readonly cidrRules: CompiledRule[] = [];
  /**
   * The cidr rules containing each IP-literal destination seen (at most 1,024, then it starts over): a function of
   * the address and this snapshot alone, computed per request it cost BigInt arithmetic over every cidr.
   */
  private readonly cidrRulesOf = new Map<string, CompiledRule[]>();
  /** Some rule carries credentials (only then are candidates reordered). */
  private readonly brokered: boolean;

  constructor(entitlement: AgentEntitlement | undefined) {
    this.revision = entitlement?.spec.revision ?? '';
    const rules = (entitlement?.spec.egress ?? []).map(compileRule);
    this.rules = rules;
    this.auditOnly = rules.length > 0 && rules.every((r) => r.mode === 'Audit');
    this.brokered = rules.some((r) => r.credentials !== undefined);
    for (const [i, raw] of (entitlement?.spec.egress ?? []).entries()) {
      const rule = rules[i];
      if (!rule) continue;
      for (const pattern of raw.hosts ?? []) {
        const lower = pattern.toLowerCase();
        const [bucket, key] = lower.startsWith('**.')
          ? [this.hosts.anyDepth, lower.slice(3)]
          : lower.startsWith('*.')
            ? [this.hosts.oneLabel, lower.slice(2)]
            : [this.hosts.exact, lower];
        const list = bucket.get(key);
        if (list) list.push(rule);
        else bucket.set(key, [rule]);
      }
      if (rule.cidrs.length > 0) this.cidrRules.push(rule);
    }
  }

  /** Rules whose destination and port match, still valid at `now` (ms). */
  candidates(dest: Destination, now: number): CompiledRule[] {
    const out: CompiledRule[] = [];
    const take = (rules: CompiledRule[] | undefined): void => {
      for (const r of rules ?? [])
        if (portMatches(r, dest.port) && (r.expiresAt === undefined || r.expiresAt > now)) out.push(r);
    };
    if (isIP(dest.host)) {
      let rules = this.cidrRulesOf.get(dest.host);
      if (!rules) {
        const ip = parseIP(dest.host);
        const single: Cidr | undefined = ip && {
          family: ip.family,
          network: ip.value,
          prefix: ip.family === 4 ? 32 : 128,
        };
        rules = single ? this.cidrRules.filter((r) => r.cidrs.some((c) => containsCidr(c, single))) : [];
        if (this.cidrRulesOf.size >= 1_024) this.cidrRulesOf.clear();
        this.cidrRulesOf.set(dest.host, rules);
      }
      take(rules);
      return this.brokered ? credentialsFirst(out) : out;
    }
    take(this.hosts.exact.get(dest.host));
    const dot = dest.host.indexOf('.');
    if (dot > 0) take(this.hosts.oneLabel.get(dest.host.slice(dot + 1)));
    for (let i = dot; i > 0; i = dest.host.indexOf('.', i + 1)) take(this.hosts.anyDepth.get(dest.host.slice(i + 1)));
    return this.brokered ? credentialsFirst(out) : out;
  }

  /**
   * A CONNECT tunnel. When any matching rule needs inspection (an HTTP or MCP profile, tls: Inspect, credentials)
   * the tunnel is inspected: every request inside it is judged like a plain one (and bytes that are neither TLS
   * nor plain HTTP are refused). Only when no matching rule asks for that is it blind: a blind tunnel beside such
   * a rule would carry requests without the checks, the per-request audit or the credential its author asked for.
   */
  decideConnect(dest: Destination, now: number): Decision {
    const candidates = this.candidates(dest, now);
    // Credentials rules come first among the candidates: requests inside are judged under them first.
    const inspected = candidates.find(needsInspection);
    if (inspected) return { allow: true, rule: inspected, needsMcpCheck: false, inspect: true };
    const first = candidates[0];
    if (first) return { allow: true, rule: first, needsMcpCheck: false };
    return {
      allow: false,
      reason: 'no_rule_for_destination',
      missing: `no egress rule allows ${dest.host}:${dest.port}`,
    };
  }

  /** A plain-HTTP request: destination, then method and path; MCP rules need the body checked afterwards. */
  decideHttp(req: HttpRequestFacts, now: number): Decision {
    const candidates = this.candidates(req, now);
    if (candidates.length === 0) {
      return {
        allow: false,
        reason: 'no_rule_for_destination',
        missing: `no egress rule allows ${req.host}:${req.port}`,
      };
    }
    let methodSeen = false;
    for (const rule of candidates) {
      if (rule.mcp) {
        // Any method: a body (whatever the method) is judged; GET (SSE stream) and DELETE (session end) have none.
        if (req.path === rule.mcp.path) return { allow: true, rule, needsMcpCheck: true };
        continue;
      }
      if (!rule.http) return { allow: true, rule, needsMcpCheck: false };
      const verdict = judgeHttp(rule.http, req.method, req.path);
      if (verdict === 'allow') return { allow: true, rule, needsMcpCheck: false };
      if (verdict === 'path') methodSeen = true;
    }
    return methodSeen
      ? {
          allow: false,
          reason: 'path_not_allowed',
          missing: `no rule for ${req.host}:${req.port} allows path ${req.path}`,
          rule: candidates[0],
        }
      : {
          allow: false,
          reason: 'method_not_allowed',
          missing: `no rule for ${req.host}:${req.port} allows ${req.method} ${req.path}`,
          rule: candidates[0],
        };
  }
}

function compileRule(rule: EntitlementEgressRule): CompiledRule {
  const compiled: CompiledRule = {
    policy: rule.policy,
    rule: rule.rule,
    mode: rule.mode,
    cidrs: (rule.cidrs ?? []).map(parseCidr).filter((c): c is Cidr => c !== undefined),
    ports: rule.ports.map((p) => ({ from: p.port, to: p.endPort ?? p.port })),
  };
  const http = compileHttpProfile(rule.http);
  if (http) compiled.http = http;
  if (rule.mcp) compiled.mcp = { path: canonicalRulePath(rule.mcp.path ?? '/mcp'), tools: new Set(rule.mcp.tools) };
  if (rule.audience) compiled.audience = rule.audience;
  if (rule.peers && rule.peers.length > 0) {
    compiled.peers = new Map();
    for (const p of rule.peers) {
      const address = normalizeHost(p.cidr.split('/')[0] ?? '');
      if (address)
        compiled.peers.set(address, {
          spiffeID: p.spiffeID,
          gates: new Map((p.gates ?? []).map((g) => [g.port, g.gate])),
        });
    }
  }
  if (rule.expiresAt) compiled.expiresAt = Date.parse(rule.expiresAt);
  if (rule.tls) compiled.tls = rule.tls;
  if (rule.caBundle !== undefined) compiled.caBundle = rule.caBundle;
  if (rule.credentials) compiled.credentials = rule.credentials;
  return compiled;
}

/**
 * Rules with credentials before the others (stable): a request that a credentials rule allows is judged under it
 * and carries the credential, whatever other rule also matches the destination.
 */
function credentialsFirst(rules: CompiledRule[]): CompiledRule[] {
  return [...rules.filter((r) => r.credentials), ...rules.filter((r) => !r.credentials)];
}

function portMatches(rule: CompiledRule, port: number): boolean {
  for (const p of rule.ports) if (port >= p.from && port <= p.to) return true;
  return false;
}

/**
 * Normalizes a host for matching: lower case, trailing dot removed, IDN to punycode, IPv6 brackets removed.
 * Returns undefined for anything that is not a valid DNS name or IP literal.
 */
export function normalizeHost(raw: string): string | undefined {
  let host = raw.trim();
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (isIP(host)) return host.toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  const ascii = domainToASCII(host);
  if (!ascii || ascii.length > 253) return undefined;
  if (!/^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(ascii)) return undefined;
  return ascii;
}
