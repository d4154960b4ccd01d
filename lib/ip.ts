/**
 * Just enough IP arithmetic for the compiler and the sidecar: parse a CIDR, test containment, and format a single address as a
 * host CIDR. Addresses are held as bigints so IPv4 and IPv6 share one code path.
 */
export interface Cidr {
  family: 4 | 6;
  network: bigint;
  prefix: number;
}

function parseIPv4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    value = (value << 8n) | BigInt(octet);
  }
  return value;
}

function parseIPv6(text: string): bigint | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groups = (s: string | undefined): string[] => (s === undefined || s === '' ? [] : s.split(':'));
  const head = groups(halves[0]);
  const tail = groups(halves[1]);
  // An embedded IPv4 tail (::ffff:1.2.3.4) counts as two groups.
  const last = tail.length > 0 ? tail : head;
  const v4 = last.length > 0 && last[last.length - 1]?.includes('.') ? parseIPv4(last.pop() ?? '') : undefined;
  if (v4 !== undefined) last.push(((v4 >> 16n) & 0xffffn).toString(16), (v4 & 0xffffn).toString(16));
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  let value = 0n;
  for (const group of all) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(group)) return undefined;
    value = (value << 16n) | BigInt(parseInt(group, 16));
  }
  return value;
}

export function parseIP(text: string): { family: 4 | 6; value: bigint } | undefined {
  if (text.includes(':')) {
    const value = parseIPv6(text);
    return value === undefined ? undefined : { family: 6, value };
  }
  const value = parseIPv4(text);
  return value === undefined ? undefined : { family: 4, value };
}

export function parseCidr(text: string): Cidr | undefined {
  const [address, prefixText, extra] = text.split('/');
  if (address === undefined || prefixText === undefined || extra !== undefined || !/^\d{1,3}$/.test(prefixText)) {
    return undefined;
  }
  const ip = parseIP(address);
  const prefix = Number(prefixText);
  if (!ip || prefix > (ip.family === 4 ? 32 : 128)) return undefined;
  return { family: ip.family, network: ip.value, prefix };
}

function bits(family: 4 | 6): number {
  return family === 4 ? 32 : 128;
}

/** Whether outer contains inner entirely (same family, shorter-or-equal prefix, same leading bits). */
export function containsCidr(outer: Cidr, inner: Cidr): boolean {
  if (outer.family !== inner.family || outer.prefix > inner.prefix) return false;
  const shift = BigInt(bits(outer.family) - outer.prefix);
  return outer.network >> shift === inner.network >> shift;
}

/** A single address as a /32 or /128, or undefined when it is not an IP address. */
export function hostCidr(address: string): string | undefined {
  const ip = parseIP(address);
  if (!ip) return undefined;
  return `${address}/${bits(ip.family)}`;
}

/**
 * Ranges that are never granted: link-local (where cloud metadata services live) and the AWS IPv6 metadata
 * address. The CRD refuses them as grants, but a wider grant (0.0.0.0/0, ::/0) can still contain them.
 */
export const NEVER_GRANTED = ['169.254.0.0/16', 'fe80::/10', 'fd00:ec2::254/128'] as const;
const neverGranted = NEVER_GRANTED.map((c) => ({ text: c, cidr: parseCidr(c) as Cidr }));

/**
 * Special-purpose ranges (this network, private, shared/CGNAT, loopback, IETF protocol assignments,
 * benchmarking, multicast and reserved; unspecified, loopback, IPv4-mapped, unique-local and multicast IPv6):
 * inside the cluster or not routable on the internet. Reachable only through a rule whose `cidrs` contain them:
 * a host-name grant alone, or "any public address", never opens them. The one list every layer uses: the
 * sidecar's resolved-address check and the compiler's public-address NetworkPolicy rule.
 */
export const INTERNAL_RANGES = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '224.0.0.0/3',
  '::/128',
  '::1/128',
  '::ffff:0:0/96',
  'fc00::/7',
  'ff00::/8',
] as const;

/** IPv4-mapped addresses never appear on the wire (the packet is IPv4), and Kubernetes warns on them in ipBlocks. */
const IPV4_MAPPED = parseCidr('::ffff:0:0/96') as Cidr;

/**
 * What "any public address" excludes in one family, for a NetworkPolicy ipBlock.except under 0.0.0.0/0 or ::/0:
 * every never-granted and internal range, without those inside another (or IPv4-mapped), ordered by address.
 */
export function nonPublicRanges(family: 4 | 6): string[] {
  const all = [...NEVER_GRANTED, ...INTERNAL_RANGES]
    .map((text) => ({ text, cidr: parseCidr(text) as Cidr }))
    .filter((r) => r.cidr.family === family && !containsCidr(IPV4_MAPPED, r.cidr));
  return all
    .filter((r) => !all.some((o) => o !== r && containsCidr(o.cidr, r.cidr) && o.cidr.prefix < r.cidr.prefix))
    .sort((a, b) => (a.cidr.network < b.cidr.network ? -1 : a.cidr.network > b.cidr.network ? 1 : 0))
    .map((r) => r.text);
}

/** The never-granted ranges that fall inside cidr, in a stable order (for a NetworkPolicy ipBlock.except). */
export function metadataExcept(cidr: string): string[] {
  const parsed = parseCidr(cidr);
  if (!parsed) return [];
  return neverGranted.filter((n) => containsCidr(parsed, n.cidr)).map((n) => n.text);
}

const v6 = (text: string): Cidr => parseCidr(text) as Cidr;
/** IPv6 ranges that carry an IPv4 address, and where: the IPv4 is what a packet to them finally reaches. */
const EMBEDDING: { cidr: Cidr; extract: (value: bigint) => bigint }[] = [
  // IPv4-mapped ::ffff:a.b.c.d, NAT64 well-known 64:ff9b::/96, IPv4-compatible ::a.b.c.d (deprecated, but
  // still routed by some stacks), IPv4-translated ::ffff:0:a.b.c.d: the last 32 bits.
  { cidr: v6('::ffff:0:0/96'), extract: (v) => v & 0xffffffffn },
  { cidr: v6('64:ff9b::/96'), extract: (v) => v & 0xffffffffn },
  { cidr: v6('::/96'), extract: (v) => v & 0xffffffffn },
  { cidr: v6('::ffff:0:0:0/96'), extract: (v) => v & 0xffffffffn },
  // NAT64 local-use 64:ff9b:1::/48 (RFC 8215): prefix lengths vary; the /96 form puts it last.
  { cidr: v6('64:ff9b:1::/48'), extract: (v) => v & 0xffffffffn },
  // 6to4 2002:a.b.c.d::/48: bits 16..48.
  { cidr: v6('2002::/16'), extract: (v) => (v >> 80n) & 0xffffffffn },
  // Teredo 2001:0::/32: the client's IPv4 is the last 32 bits, inverted.
  { cidr: v6('2001::/32'), extract: (v) => ~v & 0xffffffffn },
];

/**
 * The IPv4 address an IPv6 address embeds (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), or undefined.
 * `::` and `::1` embed nothing. Checks on IPv4 ranges must also apply to this address: otherwise
 * `[::ffff:169.254.169.254]` reaches the metadata service under an IPv6 grant.
 */
export function embeddedIPv4(ip: { family: 4 | 6; value: bigint }): bigint | undefined {
  if (ip.family !== 6 || ip.value <= 1n) return undefined;
  const single: Cidr = { family: 6, network: ip.value, prefix: 128 };
  for (const e of EMBEDDING) if (containsCidr(e.cidr, single)) return e.extract(ip.value);
  return undefined;
}
