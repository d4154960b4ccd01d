/**
 * A rule's `http` profile (methods and paths), compiled once and judged per request — the one definition the
 * egress matcher (match.ts) and the inbound gate (inbound-policy.ts) share, so both ends of an agent call read
 * a profile the same way.
 */
import type { HTTPRule } from '../lib/api/types.generated.ts';
import { canonicalPath } from './canonical.ts';

export interface HttpProfile {
  /** Absent: any method. */
  methods?: Set<string>;
  exact: Set<string>;
  prefixes: string[];
}

/** A rule path in canonical form; one that cannot be canonicalized is kept as written (and matches nothing odd). */
export function canonicalRulePath(path: string): string {
  const c = canonicalPath(path);
  return typeof c === 'string' ? c : path;
}

/** The compiled profile, or undefined when the rule has none (any method, any path). */
export function compileHttpProfile(rules: readonly HTTPRule[] | undefined): HttpProfile[] | undefined {
  if (!rules || rules.length === 0) return undefined;
  return rules.map((h) => {
    const exact = new Set<string>();
    const prefixes: string[] = [];
    for (const p of h.paths ?? []) {
      // Rule paths are compared in the canonical form requests are brought to.
      const value = canonicalRulePath(p.value);
      if (p.type === 'Exact') exact.add(value);
      else prefixes.push(value);
    }
    // No paths listed: any path.
    if ((h.paths ?? []).length === 0) prefixes.push('/');
    return { ...(h.methods ? { methods: new Set<string>(h.methods) } : {}), exact, prefixes };
  });
}

/** Prefixes match on segment boundaries: `/v1/orders` matches `/v1/orders` and `/v1/orders/7`, not `/v1/ordersX`. */
export function pathAllowed(h: HttpProfile, path: string): boolean {
  if (h.exact.has(path)) return true;
  for (const prefix of h.prefixes) {
    if (prefix === '/' || path === prefix) return true;
    if (path.startsWith(prefix) && (prefix.endsWith('/') || path.charCodeAt(prefix.length) === 47)) return true;
  }
  return false;
}

/**
 * One rule's profile against a request: `allow`, `path` (some entry admits the method, none the path) or
 * `method` (no entry admits the method). Callers try their rules in order and refuse with `path_not_allowed`
 * when any rule answered `path`, else `method_not_allowed`.
 */
export function judgeHttp(profile: readonly HttpProfile[], method: string, path: string): 'allow' | 'path' | 'method' {
  let methodSeen = false;
  for (const h of profile) {
    if (h.methods && !h.methods.has(method)) continue;
    methodSeen = true;
    if (pathAllowed(h, path)) return 'allow';
  }
  return methodSeen ? 'path' : 'method';
}
