/**
 * DER writing (X.690 distinguished encoding), only the types an X.509 certificate needs. Every value is built
 * bottom-up as bytes; there is no reader here (Node's X509Certificate parses what this writes, and the tests check
 * it with it and with openssl). Kept free of dependencies: it runs in the sidecar, where every MB is paid per pod.
 */

/** Universal tags (X.680); constructed types carry bit 0x20. */
const Tag = {
  Boolean: 0x01,
  Integer: 0x02,
  BitString: 0x03,
  OctetString: 0x04,
  Oid: 0x06,
  Utf8String: 0x0c,
  Ia5String: 0x16,
  UtcTime: 0x17,
  GeneralizedTime: 0x18,
  Sequence: 0x30,
  Set: 0x31,
} as const;

/** One tag-length-value; the length in short form below 128, long form (big-endian, minimal) above. */
export function tlv(tag: number, content: Uint8Array): Uint8Array {
  const n = content.length;
  let header: number[];
  if (n < 0x80) header = [tag, n];
  else {
    const bytes: number[] = [];
    for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
    header = [tag, 0x80 | bytes.length, ...bytes];
  }
  const out = new Uint8Array(header.length + n);
  out.set(header);
  out.set(content, header.length);
  return out;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function sequence(...items: Uint8Array[]): Uint8Array {
  return tlv(Tag.Sequence, concat(items));
}

/** A SET OF with one member (an RDN with one attribute): DER's sorting of members does not arise. */
export function setOf(item: Uint8Array): Uint8Array {
  return tlv(Tag.Set, item);
}

/** [n] EXPLICIT: a constructed context-specific tag wrapping a complete encoding. */
export function explicit(n: number, inner: Uint8Array): Uint8Array {
  return tlv(0xa0 | n, inner);
}

/** [n] IMPLICIT of a primitive type: the content, under a primitive context-specific tag. */
export function implicitPrimitive(n: number, content: Uint8Array): Uint8Array {
  return tlv(0x80 | n, content);
}

export function boolean(value: boolean): Uint8Array {
  return tlv(Tag.Boolean, Uint8Array.of(value ? 0xff : 0x00));
}

/**
 * A non-negative INTEGER from its unsigned big-endian magnitude: leading zero octets dropped (DER is minimal),
 * one zero octet put back when the top bit is set (otherwise it would read as negative).
 */
export function unsignedInteger(magnitude: Uint8Array): Uint8Array {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const body = magnitude.subarray(start);
  if (body.length === 0) return tlv(Tag.Integer, Uint8Array.of(0));
  return tlv(Tag.Integer, (body[0] ?? 0) & 0x80 ? concat([Uint8Array.of(0), body]) : body);
}

export function smallInteger(value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`DER: not a non-negative integer: ${value}`);
  const bytes: number[] = [];
  for (let rest = value; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
  return unsignedInteger(Uint8Array.from(bytes));
}

/** An OBJECT IDENTIFIER from dotted text: the first two arcs as 40·a + b, each arc base-128, high bit = more. */
export function oid(dotted: string): Uint8Array {
  const arcs = dotted.split('.').map((a) => {
    if (!/^(0|[1-9]\d*)$/.test(a)) throw new RangeError(`DER: bad OID arc in ${dotted}`);
    return Number(a);
  });
  const [first, second, ...rest] = arcs;
  if (first === undefined || second === undefined || first > 2 || (first < 2 && second > 39)) {
    throw new RangeError(`DER: bad OID ${dotted}`);
  }
  const out: number[] = [];
  for (const arc of [first * 40 + second, ...rest]) {
    if (!Number.isSafeInteger(arc)) throw new RangeError(`DER: OID arc too large in ${dotted}`);
    const groups: number[] = [arc % 128];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) groups.unshift((v % 128) | 0x80);
    out.push(...groups);
  }
  return tlv(Tag.Oid, Uint8Array.from(out));
}

/** A BIT STRING whose content is whole octets plus `unusedBits` padding bits at the end of the last one. */
export function bitString(bytes: Uint8Array, unusedBits = 0): Uint8Array {
  if (unusedBits < 0 || unusedBits > 7 || (bytes.length === 0 && unusedBits !== 0)) {
    throw new RangeError(`DER: bad unused-bit count ${unusedBits}`);
  }
  return tlv(Tag.BitString, concat([Uint8Array.of(unusedBits), bytes]));
}

/**
 * A named-bit BIT STRING (KeyUsage) from the numbers of its set bits, bit 0 first: DER drops trailing zero bits,
 * so the length and the unused-bit count follow from the highest bit set.
 */
export function namedBits(bits: readonly number[]): Uint8Array {
  if (bits.length === 0) return bitString(new Uint8Array(0));
  const highest = Math.max(...bits);
  const bytes = new Uint8Array((highest >> 3) + 1);
  for (const bit of bits) {
    if (!Number.isInteger(bit) || bit < 0) throw new RangeError(`DER: bad bit number ${bit}`);
    bytes[bit >> 3] = (bytes[bit >> 3] ?? 0) | (0x80 >> (bit & 7));
  }
  return bitString(bytes, 7 - (highest & 7));
}

export function octetString(bytes: Uint8Array): Uint8Array {
  return tlv(Tag.OctetString, bytes);
}

export function utf8String(text: string): Uint8Array {
  return tlv(Tag.Utf8String, new TextEncoder().encode(text));
}

/** IA5String is 7-bit ASCII: anything else is refused, not mangled. */
export function ia5Bytes(text: string): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  // UTF-8 of anything beyond ASCII has bytes ≥ 0x80; ASCII text encodes to itself.
  if (bytes.some((b) => b > 0x7f)) throw new RangeError(`DER: not an IA5String (ASCII only): ${JSON.stringify(text)}`);
  return bytes;
}

export function ia5String(text: string): Uint8Array {
  return tlv(Tag.Ia5String, ia5Bytes(text));
}

/**
 * An X.509 Time (RFC 5280 4.1.2.5): UTCTime (YYMMDDHHMMSSZ) for the years 1950 to 2049, GeneralizedTime
 * (YYYYMMDDHHMMSSZ) otherwise; both in UTC, whole seconds (fractions are not allowed, so they are dropped).
 */
export function time(date: Date): Uint8Array {
  const ms = date.getTime();
  if (!Number.isFinite(ms)) throw new RangeError('DER: invalid date');
  const year = date.getUTCFullYear();
  if (year < 0 || year > 9999) throw new RangeError(`DER: year ${year} cannot be encoded`);
  const two = (n: number): string => String(n).padStart(2, '0');
  const rest = `${two(date.getUTCMonth() + 1)}${two(date.getUTCDate())}${two(date.getUTCHours())}${two(date.getUTCMinutes())}${two(date.getUTCSeconds())}Z`;
  const utc = year >= 1950 && year <= 2049;
  const text = utc ? `${two(year % 100)}${rest}` : `${String(year).padStart(4, '0')}${rest}`;
  return tlv(utc ? Tag.UtcTime : Tag.GeneralizedTime, new TextEncoder().encode(text));
}

/** PEM armour: base64 in 64-character lines, ending with a newline (bundles are concatenations). */
export function pem(label: string, der: Uint8Array | ArrayBuffer): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}
