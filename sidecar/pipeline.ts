/**
 * The admission pipeline: one function from a canonical request to a decision, used by plain HTTP requests,
 * CONNECT tunnels, requests inside inspected tunnels and protocol upgrades alike. In order: a snapshot must be
 * in force; the policy decides on destination (and method, path); upgrades and method overrides are judged;
 * an MCP body is read (within the per-body limit and the global budget) and judged canonically; Audit-only
 * entitlements turn a denial into would_deny; the destination is resolved and the address checked.
 */
import { resolveChecked, type Resolver } from './addresses.ts';
import type { Framing } from './canonical.ts';
import type { CompiledRule, Decision, Matcher } from './match.ts';
import { foldKey, jsonObjectMembers, judgeMcpBody } from './mcp.ts';

export interface CanonicalRequest {
  kind: 'http' | 'connect' | 'upgrade';
  method: string;
  /** Normalized host (no brackets). */
  host: string;
  port: number;
  /** Canonical path, '' for CONNECT. */
  path: string;
  /** Canonical query with its `?`, or ''. */
  query: string;
  /** What the upstream receives as `Host`. */
  authority: string;
  /** Methods claimed by override headers; '?' for a `_method` parameter (value unknown). */
  overrides: string[];
  /**
   * A body that may carry a `_method` field (an override Rails, Laravel and others honour): an HTML form, or
   * JSON (Laravel, on POST).
   */
  form?: 'urlencoded' | 'multipart' | 'json';
  /** A content coding or charset by which the upstream reads the body's bytes as something else. */
  coding?: string;
  framing: Framing;
  /** Inside an intercepted TLS tunnel: forwarded over TLS that verifies the upstream. */
  tls?: boolean;
}

/** Reads the request body for judging: the bytes, or why not. */
export type BodyReader = (limit: number) => Promise<Buffer | 'too_large' | 'budget'>;

export type Admission =
  | {
      allow: true;
      decision: 'allow' | 'would_deny';
      reason: string;
      rule: CompiledRule | undefined;
      address: string;
      revision: string;
      /** A tunnel whose requests are each judged. */
      inspect: boolean;
      /** The canonical body to forward instead of the client's (MCP). */
      body?: Buffer;
    }
  | {
      allow: false;
      status: number;
      reason: string;
      missing: string;
      rule: CompiledRule | undefined;
      revision: string;
      retryAfterSeconds?: number;
    };

export interface PipelineContext {
  matcher: Matcher | undefined;
  now: number;
  resolver: Resolver;
  maxMcpBodyBytes: number;
  body?: BodyReader;
}

/** No rule, no snapshot: an empty rule for the address check of would-deny (audit) traffic. */
const NO_RULE: CompiledRule = { policy: '', rule: '', mode: 'Audit', cidrs: [], ports: [] };

const hasBody = (f: Framing): boolean => f.kind === 'chunked' || (f.kind === 'length' && f.length > 0);
const profiled = (rule: CompiledRule): boolean => rule.http !== undefined || rule.mcp !== undefined;

/** Methods a form body claims through `_method` fields ('?' when the value cannot be read reliably). */
export function formOverrides(body: Buffer, form: 'urlencoded' | 'multipart' | 'json'): string[] {
  if (form === 'json') {
    const text = body.toString('utf8');
    const members = jsonObjectMembers(text);
    // Not JSON to us: a server's own parser might still read it; whether it names a method cannot be told.
    if (!members) return /method|\\u/i.test(text) ? ['?'] : [];
    return members
      .filter(([k]) => foldKey(k).trim() === '_method')
      .map(([, v]) => (typeof v === 'string' && v.trim() !== '' ? v.trim().toUpperCase() : '?'));
  }
  const text = body.toString('latin1');
  if (form === 'multipart') return /name\s*=\s*"?_method/i.test(text) ? ['?'] : [];
  const claims: string[] = [];
  for (const pair of text.split('&')) {
    const [rawKey = '', rawValue = ''] = pair.split('=', 2);
    let key: string;
    let value: string;
    try {
      key = decodeURIComponent(rawKey.replace(/\+/g, ' '));
      value = decodeURIComponent(rawValue.replace(/\+/g, ' '));
    } catch {
      if (/_method|%5f/i.test(rawKey)) claims.push('?');
      continue;
    }
    if (key.trim().toLowerCase() === '_method') claims.push(value.trim().toUpperCase() || '?');
  }
  return claims;
}

export async function admit(req: CanonicalRequest, ctx: PipelineContext): Promise<Admission> {
  const { matcher } = ctx;
  const revision = matcher?.revision ?? '';
  const refuse = (status: number, reason: string, missing: string, rule?: CompiledRule, retry?: number): Admission => ({
    allow: false,
    status,
    reason,
    missing,
    rule,
    revision,
    ...(retry ? { retryAfterSeconds: retry } : {}),
  });
  if (!matcher) {
    return refuse(
      403,
      'no_entitlements',
      'no current entitlement snapshot from the controller: everything is denied until one arrives',
    );
  }
  let decision: Decision =
    req.kind === 'connect' ? matcher.decideConnect(req, ctx.now) : matcher.decideHttp(req, ctx.now);
  let body: Buffer | undefined;
  if (decision.allow && req.kind === 'upgrade' && profiled(decision.rule)) {
    decision = {
      allow: false,
      reason: 'upgrade_needs_rule_without_l7',
      missing: `rule ${decision.rule.rule} restricts methods, paths or tools, which cannot be checked after a protocol upgrade; upgrades need a rule without an http/mcp profile`,
      rule: decision.rule,
    };
  } else if (decision.allow && req.kind === 'upgrade' && req.tls) {
    // The upgrade forwarder speaks plain TCP: it would carry an intercepted (TLS) client's bytes unencrypted.
    decision = {
      allow: false,
      reason: 'upgrade_needs_rule_without_l7',
      missing: `protocol upgrades inside inspected HTTPS are not forwarded; give ${req.host}:${req.port} a rule without an http/mcp profile and without tls: Inspect`,
      rule: decision.rule,
    };
  }
  // Whether some method is refused on this path: only then can an override in the body change the decision
  // (otherwise the body is not read for it).
  const restrictsMethods = (r: CanonicalRequest): boolean =>
    !matcher.decideHttp({ ...r, method: 'AGENTFENCE-ANY-METHOD' }, ctx.now).allow;
  const judgeOverrides = (claims: string[]): void => {
    // A method override is judged as the method it claims; one whose value is unknown cannot be.
    for (const claimed of claims) {
      if (!decision.allow) return;
      const again = claimed === '?' ? undefined : matcher.decideHttp({ ...req, method: claimed }, ctx.now);
      if (!again?.allow) {
        decision = {
          allow: false,
          reason: 'method_override_not_allowed',
          missing: `the request claims method ${claimed === '?' ? 'via _method' : claimed} through an override, which no rule for ${req.host}:${req.port} allows on ${req.path}`,
          rule: decision.rule,
        };
      }
    }
  };
  if (decision.allow && req.overrides.length > 0 && profiled(decision.rule)) judgeOverrides(req.overrides);
  const inspectBody =
    decision.allow &&
    hasBody(req.framing) &&
    ((decision.needsMcpCheck && decision.rule.mcp !== undefined) ||
      (req.form !== undefined &&
        (req.form !== 'json' || req.method === 'POST') &&
        profiled(decision.rule) &&
        restrictsMethods(req)));
  if (decision.allow && inspectBody) {
    const read = ctx.body ? await ctx.body(ctx.maxMcpBodyBytes) : 'too_large';
    if (read === 'too_large') {
      return refuse(
        413,
        'body_too_large',
        `request bodies judged by this rule (MCP messages, forms) larger than ${ctx.maxMcpBodyBytes} bytes are not inspected and therefore refused`,
        decision.rule,
      );
    }
    if (read === 'budget') {
      return refuse(
        503,
        'body_budget_exhausted',
        'too many request bodies are being inspected at once; retry shortly',
        decision.rule,
        1,
      );
    }
    body = read;
    if (decision.needsMcpCheck && decision.rule.mcp) {
      const verdict: ReturnType<typeof judgeMcpBody> = req.coding
        ? { ok: false, reason: 'mcp_message_invalid', detail: `an MCP body with ${req.coding} cannot be judged` }
        : judgeMcpBody(read, decision.rule.mcp.tools);
      if (verdict.ok) body = verdict.body;
      else {
        // Audit-only: the original bytes go on (nothing is enforced); they were refused as a message.
        decision = {
          allow: false,
          reason: verdict.reason,
          missing: `${verdict.detail} (rule ${decision.rule.rule})`,
          rule: decision.rule,
        };
      }
    } else if (req.form) judgeOverrides(req.coding ? ['?'] : formOverrides(read, req.form));
  }
  let wouldDeny: string | undefined;
  if (!decision.allow) {
    if (!matcher.auditOnly) return refuse(403, decision.reason, decision.missing, decision.rule);
    wouldDeny = decision.reason;
  }
  const rule = decision.allow ? decision.rule : decision.rule;
  const resolved = await resolveChecked(req.host, rule ?? NO_RULE, ctx.resolver);
  if (!resolved.ok) {
    // Internal and metadata addresses stay closed even in Audit mode.
    return refuse(resolved.reason === 'dns_failure' ? 502 : 403, resolved.reason, resolved.detail, rule);
  }
  return {
    allow: true,
    decision: wouldDeny ? 'would_deny' : 'allow',
    reason: wouldDeny ?? 'allowed',
    rule,
    address: resolved.address,
    revision,
    inspect: decision.allow && decision.inspect === true,
    ...(body ? { body } : {}),
  };
}
