/**
 * Brokered credentials at the sidecar: the values the controller streams with a snapshot (only those the pod's
 * own rules name), held in memory and set on a request at the header seam between admission and forwarding
 * (proxy.ts) — never written to disk, logs, audit lines, metrics or /status (which shows names and versions).
 * A value is used only at the exact version the rule was compiled against; otherwise the rule's requests are
 * refused (credential_unavailable), never forwarded without it.
 */
import type { EntitlementCredentials } from '../lib/api/types.generated.ts';
import { credentialHeaderValue, isCredentialValue } from '../lib/credential-value.ts';

export interface DeliveredCredential {
  secret: string;
  key: string;
  version: string;
  value: string;
}

const MAX_CREDENTIALS = 1024;

/**
 * The `credentials` member of a snapshot event. Throws an error that names the problem (never a value) when
 * anything in it is malformed; absent means none.
 */
export function parseDeliveredCredentials(raw: unknown): DeliveredCredential[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw) || raw.length > MAX_CREDENTIALS)
    throw new Error(`credentials: expected a list of at most ${MAX_CREDENTIALS}`);
  return raw.map((item: unknown, i) => {
    const c = (typeof item === 'object' && item !== null ? item : {}) as Record<string, unknown>;
    const { secret, key, version, value } = c;
    if (typeof secret !== 'string' || typeof key !== 'string' || typeof version !== 'string')
      throw new Error(`credentials[${i}]: secret, key and version must be strings`);
    if (typeof value !== 'string' || !isCredentialValue(value))
      throw new Error(`credentials[${i}] (${secret}/${key}): the value is not a valid header value`);
    return { secret, key, version, value };
  });
}

export class CredentialCache {
  #values = new Map<string, DeliveredCredential>();

  /** The full set delivered with the latest snapshot (a credential no longer delivered is gone at once). */
  replace(list: readonly DeliveredCredential[]): void {
    this.#values = new Map(list.map((c) => [`${c.secret}/${c.key}@${c.version}`, c]));
  }

  /** The header a rule's credentials put on the wire, or undefined when that version's value is not here. */
  header(c: EntitlementCredentials): { name: string; value: string } | undefined {
    if (c.version === '') return undefined;
    const found = this.#values.get(`${c.secret}/${c.key}@${c.version}`);
    return found ? { name: c.header.toLowerCase(), value: credentialHeaderValue(c.format, found.value) } : undefined;
  }

  /** Names and versions held, for /status. */
  describe(): { credential: string; version: string }[] {
    return [...this.#values.values()].map((c) => ({ credential: `${c.secret}/${c.key}`, version: c.version }));
  }
}
