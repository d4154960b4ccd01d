import { createHash } from 'node:crypto';

/** JSON with object keys sorted at every depth and undefined members dropped: equal values, equal bytes. */
export function canonicalJSON(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v: unknown) => canonicalJSON(v ?? null)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJSON(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function sha256Revision(value: unknown): string {
  return `sha256:${createHash('sha256').update(canonicalJSON(value)).digest('hex')}`;
}

/** Byte-wise string order, independent of locale. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * A Kubernetes object name of at most max characters: the name itself when it fits, otherwise a prefix plus a
 * short hash of the full name, so long inputs still give distinct, stable names.
 */
export function boundedName(name: string, max = 253): string {
  if (name.length <= max) return name;
  const hash = createHash('sha256').update(name).digest('hex').slice(0, 10);
  return `${name.slice(0, max - 11).replace(/[-.]+$/, '')}-${hash}`;
}

export function sortedUnique(values: Iterable<string>): string[] {
  return [...new Set(values)].sort(compareStrings);
}

export function byNamespaceAndName(a: { metadata: { namespace?: string; name?: string } }, b: typeof a): number {
  return (
    compareStrings(a.metadata.namespace ?? '', b.metadata.namespace ?? '') ||
    compareStrings(a.metadata.name ?? '', b.metadata.name ?? '')
  );
}
