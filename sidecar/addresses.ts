/**
 * The resolved-address check. A destination name is resolved once; each address is judged; the proxy then
 * connects to exactly the address it judged (never re-resolving), so DNS rebinding cannot swap a checked public
 * address for an internal one between check and connect.
 *
 * Special-purpose ranges (loopback, private, CGNAT, link-local/metadata, unique-local, unspecified, multicast)
 * are refused unless the matching rule's `cidrs` contain the address: a host-name grant alone never opens
 * the inside of the cluster. Link-local and cloud metadata are refused even then.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import {
  INTERNAL_RANGES,
  NEVER_GRANTED,
  containsCidr,
  embeddedIPv4,
  parseCidr,
  parseIP,
  type Cidr,
} from '../lib/ip.ts';
import type { CompiledRule } from './match.ts';

const cidrs = (list: string[]): Cidr[] => list.map((c) => parseCidr(c)).filter((c): c is Cidr => c !== undefined);

const NEVER = cidrs([...NEVER_GRANTED]);
const SPECIAL = cidrs([...INTERNAL_RANGES]);

export type AddressVerdict = { ok: true } | { ok: false; reason: 'metadata_address' | 'private_address' };

function judgeOne(single: Cidr, rule: CompiledRule): AddressVerdict {
  if (NEVER.some((c) => containsCidr(c, single))) return { ok: false, reason: 'metadata_address' };
  if (!SPECIAL.some((c) => containsCidr(c, single))) return { ok: true };
  return rule.cidrs.some((c) => containsCidr(c, single)) ? { ok: true } : { ok: false, reason: 'private_address' };
}

/**
 * Verdicts already reached, per rule and address. A verdict is a function of the address and the rule's cidrs
 * alone; computing it costs BigInt arithmetic over every special range, the largest allocation the sidecar
 * made per forwarded request. Compiled rules are immutable and replaced with each snapshot, so a new snapshot
 * starts with no verdicts; each rule keeps at most MAX_VERDICTS addresses (then starts over).
 */
const verdicts = new WeakMap<CompiledRule, Map<string, AddressVerdict>>();
const MAX_VERDICTS = 1_024;

/**
 * Judges an address for a rule. An IPv6 address that embeds an IPv4 one (mapped, compatible, NAT64, 6to4,
 * Teredo) is judged twice: as itself and as the IPv4 address it reaches; both must pass.
 */
export function judgeAddress(address: string, rule: CompiledRule): AddressVerdict {
  let known = verdicts.get(rule);
  const hit = known?.get(address);
  if (hit) return hit;
  const verdict = judge(address, rule);
  if (!known) verdicts.set(rule, (known = new Map<string, AddressVerdict>()));
  if (known.size >= MAX_VERDICTS) known.clear();
  known.set(address, verdict);
  return verdict;
}

function judge(address: string, rule: CompiledRule): AddressVerdict {
  const ip = parseIP(address);
  if (!ip) return { ok: false, reason: 'private_address' };
  const verdict = judgeOne({ family: ip.family, network: ip.value, prefix: ip.family === 4 ? 32 : 128 }, rule);
  const v4 = embeddedIPv4(ip);
  if (!verdict.ok || v4 === undefined) return verdict;
  return judgeOne({ family: 4, network: v4, prefix: 32 }, rule);
}

export type Resolved =
  | { ok: true; address: string }
  | { ok: false; reason: 'metadata_address' | 'private_address' | 'dns_failure'; detail: string };

export type Resolver = (host: string) => Promise<string[]>;

/**
 * The system resolver with a short cache: getaddrinfo runs on libuv's small thread pool and caches nothing, so
 * resolving on every request would queue the data path behind it. Caching is safe for the rebinding check:
 * whatever the cache holds is judged, and the proxy connects to exactly the judged address.
 */
export function cachingResolver(ttlMs = 5_000, maxEntries = 1_024, now: () => number = Date.now): Resolver {
  const cache = new Map<string, { addresses: Promise<string[]>; until: number }>();
  return (host) => {
    const hit = cache.get(host);
    if (hit && hit.until > now()) return hit.addresses;
    const addresses = lookup(host, { all: true, order: 'verbatim' }).then((list) => list.map((a) => a.address));
    // Failures are not cached: the next request asks again.
    addresses.catch(() => cache.delete(host));
    if (cache.size >= maxEntries) cache.delete(cache.keys().next().value ?? '');
    cache.set(host, { addresses, until: now() + ttlMs });
    return addresses;
  };
}

export const systemResolver: Resolver = cachingResolver();

/** Resolves (unless already an IP) and picks the first address the rule may reach. */
export async function resolveChecked(host: string, rule: CompiledRule, resolver: Resolver): Promise<Resolved> {
  let addresses: string[];
  if (isIP(host)) addresses = [host];
  else {
    try {
      addresses = await resolver(host);
    } catch {
      return { ok: false, reason: 'dns_failure', detail: `cannot resolve ${host}` };
    }
  }
  let refusal: 'metadata_address' | 'private_address' = 'private_address';
  for (const address of addresses) {
    const verdict = judgeAddress(address, rule);
    if (verdict.ok) return { ok: true, address };
    if (verdict.reason === 'metadata_address') refusal = 'metadata_address';
  }
  return {
    ok: false,
    reason: refusal,
    detail: `${host} resolves to ${addresses.join(', ') || 'nothing'}; internal and metadata addresses need a rule whose cidrs contain them`,
  };
}
