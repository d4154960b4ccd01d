/**
 * Signing keys shared by every controller replica through one Secret. Every replica watches it and signs with
 * `current`; only the leader rotates (prepare next → activate → retire) and writes it back, with a
 * resourceVersion precondition so that two processes that both think they lead can never clobber each other.
 * A Secret that fails to parse is reported and ignored: the last good key set stays in use.
 */
import { Gauge, type Registry } from 'prom-client';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { Logger } from '../../lib/log.ts';
import { CONTENT_TYPE, isConflict, isNotFound, resourcePath, type KubeClient } from '../../lib/kube/client.ts';
import { Informer } from '../../lib/kube/informer.ts';
import { fencedClient } from '../../lib/kube/fenced.ts';
import type { LeaderTerm } from '../../lib/kube/leader.ts';
import {
  DEFAULT_ROTATION,
  nextRotationAt,
  parseKeySet,
  rotateKeys,
  serializeKeySet,
  type KeySet,
  type RotationPolicy,
} from './keys.ts';
import { RESOURCES, type DataObject } from '../../lib/kube/resources.ts';

export const KEYS_DATA_KEY = 'keys.json';

export interface KeyStoreOptions {
  client: KubeClient;
  namespace: string;
  secretName: string;
  logger: Logger;
  registry?: Registry;
  policy?: RotationPolicy;
  now?: () => number;
}

export class SigningKeyStore {
  readonly informer: Informer<DataObject>;
  readonly #o: KeyStoreOptions;
  #keys: KeySet | undefined;
  #loadedFrom: string | undefined;

  constructor(options: KeyStoreOptions) {
    this.#o = options;
    this.informer = new Informer<DataObject>({
      client: options.client,
      resource: RESOURCES.secrets,
      namespace: options.namespace,
      fieldSelector: `metadata.name=${options.secretName}`,
      name: 'signing-keys',
      logger: options.logger,
      ...(options.registry ? { registry: options.registry } : {}),
    });
    this.informer.on({ add: (s) => this.#load(s), update: (_, s) => this.#load(s) });
    if (options.registry && !options.registry.getSingleMetric('agentfence_signing_key_expiry_seconds')) {
      const keys = (): KeySet | undefined => this.#keys;
      const now = (): number => this.#now();
      new Gauge({
        name: 'agentfence_signing_key_expiry_seconds',
        help: 'Seconds until the current signing key expires (0 when none is loaded).',
        registers: [options.registry],
        collect() {
          const set = keys();
          this.set(set ? (set.current.expiresAt - now()) / 1000 : 0);
        },
      });
    }
  }

  #now(): number {
    return this.#o.now?.() ?? Date.now();
  }

  start(): void {
    this.informer.start();
  }

  stop(): Promise<void> {
    return this.informer.stop();
  }

  /** True once a usable key set is loaded (the identity endpoints answer 503 until then). */
  ready(): boolean {
    return this.#keys !== undefined && this.#keys.current.expiresAt > this.#now();
  }

  /** The key set to sign and publish with. */
  keys(): KeySet {
    if (!this.#keys) throw new Error('signing keys are not loaded yet');
    return this.#keys;
  }

  #load(secret: DataObject): void {
    const encoded = secret.data?.[KEYS_DATA_KEY];
    if (!encoded || secret.metadata.resourceVersion === this.#loadedFrom) return;
    try {
      this.#keys = parseKeySet(Buffer.from(encoded, 'base64').toString('utf8'));
      this.#loadedFrom = secret.metadata.resourceVersion;
      this.#o.logger.info('signing keys loaded', { kid: this.#keys.current.kid, next: this.#keys.next?.kid ?? '' });
    } catch (err) {
      this.#o.logger.error('signing key secret is invalid; keeping the previous keys', { err });
    }
  }

  /**
   * Leader only: advances the key set to now and persists it when it changed. Returns the delay until the next
   * rotation step is due.
   */
  async rotate(term?: LeaderTerm): Promise<number> {
    const { client: reader, namespace, secretName } = this.#o;
    const client = term ? fencedClient(reader, term) : reader; // writes only while the lease is fresh
    const path = resourcePath(RESOURCES.secrets, { namespace, name: secretName });
    let current: DataObject | undefined;
    try {
      current = await reader.get<DataObject>(path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    let existing: KeySet | undefined;
    const encoded = current?.data?.[KEYS_DATA_KEY];
    if (encoded) {
      try {
        existing = parseKeySet(Buffer.from(encoded, 'base64').toString('utf8'));
      } catch (err) {
        // A damaged Secret is replaced by a fresh key set: tokens signed by the lost keys fail verification,
        // which is the safe direction, and the error says why.
        this.#o.logger.error('signing key secret is invalid; generating new keys', { err });
      }
    }
    const next = await rotateKeys(existing, this.#now(), this.#o.policy ?? DEFAULT_ROTATION);
    if (next !== existing) {
      const data = { [KEYS_DATA_KEY]: Buffer.from(serializeKeySet(next)).toString('base64') };
      try {
        if (current) {
          await client.request('PATCH', path, {
            contentType: CONTENT_TYPE.mergePatch,
            body: { metadata: { resourceVersion: current.metadata.resourceVersion }, data },
          });
        } else {
          await client.request('POST', resourcePath(RESOURCES.secrets, { namespace }), {
            body: {
              apiVersion: 'v1',
              kind: 'Secret',
              type: 'Opaque',
              metadata: { name: secretName, namespace, labels: { [LABEL_MANAGED_BY]: MANAGED_BY } },
              data,
            },
          });
        }
      } catch (err) {
        // Someone else wrote first: their state wins; we look again shortly.
        if (isConflict(err)) return 1_000;
        throw err;
      }
      this.#o.logger.info('signing keys rotated', {
        kid: next.current.kid,
        next: next.next?.kid ?? '',
        retired: next.previous.length,
      });
    }
    return Math.max(1_000, Math.min(3_600_000, nextRotationAt(next, this.#o.policy ?? DEFAULT_ROTATION) - this.#now()));
  }
}
