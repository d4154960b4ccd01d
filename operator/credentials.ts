/**
 * The controller's view of credential Secrets: an informer over Secrets labelled agentfence.io/credential=true
 * only (the controller never caches the cluster's other Secrets), on every replica — the reconciler compiles
 * names, keys and versions from it (never values), the entitlement hub reads values from it to stream them to
 * entitled sidecars. Values go nowhere else: not to logs, status, Events, metrics or AgentEntitlements.
 */
import type { Registry } from 'prom-client';
import { LABEL_CREDENTIAL } from '../lib/api/constants.ts';
import type { AgentPolicy } from '../lib/api/types.generated.ts';
import { CONTENT_TYPE, KubeApiError, resourcePath, type KubeClient, type KubeObject } from '../lib/kube/client.ts';
import { Informer } from '../lib/kube/informer.ts';
import type { Logger } from '../lib/log.ts';
import { RESOURCES } from '../lib/kube/resources.ts';
import { credentialValue, credentialVersion, type CredentialSecretInput } from './compiler/credentials.ts';

export type SecretObject = KubeObject & { data?: Record<string, string> };

/** What the hub needs: the value of a key of a Secret, only at the version the entitlement names. */
export interface CredentialSource {
  value(namespace: string, secret: string, key: string, version: string): string | undefined;
}

/** How long a "this Secret exists without the label" answer is reused, and how many are asked per reconcile. */
export const PROBE_TTL_MS = 5_000;
const PROBES_PER_CALL = 32;

export class CredentialStore implements CredentialSource {
  readonly informer: Informer<SecretObject>;
  readonly #client: KubeClient;
  readonly #logger: Logger;
  /** `namespace/name` → whether it exists (without the label), and when that was asked. */
  readonly #probed = new Map<string, { exists: boolean; at: number }>();

  constructor(options: { client: KubeClient; logger: Logger; registry: Registry }) {
    this.#client = options.client;
    this.#logger = options.logger;
    this.informer = new Informer<SecretObject>({
      client: options.client,
      resource: RESOURCES.secrets,
      name: 'credential-secrets',
      labelSelector: `${LABEL_CREDENTIAL}=true`,
      logger: options.logger,
      registry: options.registry,
    });
  }

  start(): void {
    this.informer.start();
  }

  stop(): Promise<void> {
    return this.informer.stop();
  }

  hasSynced(): boolean {
    return this.informer.hasSynced();
  }

  /** Any add, change or deletion of a labelled Secret (a label removed is a deletion to this informer). */
  onChange(fn: () => void): () => void {
    return this.informer.on({ add: fn, update: fn, delete: fn });
  }

  /** For the compiler: each Secret's metadata and the keys that hold a usable value (never the values). */
  compileInputs(): CredentialSecretInput[] {
    return this.informer.list().map((s) => ({
      metadata: s.metadata,
      keys: Object.keys(s.data ?? {}).filter((k) => credentialValue(s.data?.[k]) !== undefined),
    }));
  }

  /**
   * Secrets that policies name but the labelled cache lacks, and that exist without the label: the status says
   * so. Asked for metadata only (PartialObjectMetadata: the API server sends no data), a few per call, each
   * answer reused for a while; an error counts as "not known to exist". `missing`: named Secrets not in the
   * labelled cache (an unlabelled Secret changes without an event here, so the caller looks again later).
   */
  async unlabelled(
    policies: readonly AgentPolicy[],
    now = Date.now(),
  ): Promise<{ unlabelled: string[]; missing: number }> {
    const wanted = new Set<string>();
    for (const p of policies)
      for (const r of p.spec.egress ?? [])
        if (r.credentials) wanted.add(`${p.metadata.namespace ?? 'default'}/${r.credentials.secretRef.name}`);
    for (const k of this.#probed.keys()) if (!wanted.has(k)) this.#probed.delete(k);
    const out: string[] = [];
    let asked = 0;
    let missing = 0;
    for (const k of [...wanted].sort()) {
      if (this.informer.get(k)) continue;
      missing++;
      let known = this.#probed.get(k);
      if ((!known || now - known.at > PROBE_TTL_MS) && asked < PROBES_PER_CALL) {
        asked++;
        const [namespace = '', name = ''] = k.split('/');
        let exists = false;
        try {
          await this.#client.request('GET', resourcePath(RESOURCES.secrets, { namespace, name }), {
            accept: CONTENT_TYPE.partialMetadata,
            timeoutMs: 5_000,
          });
          exists = true;
        } catch (err) {
          if (!(err instanceof KubeApiError && err.status === 404))
            this.#logger.debug('credential secret lookup failed', { secret: k, err });
        }
        known = { exists, at: now };
        this.#probed.set(k, known);
      }
      if (known?.exists) out.push(k);
    }
    return { unlabelled: out, missing };
  }

  value(namespace: string, secret: string, key: string, version: string): string | undefined {
    const s = this.informer.get(`${namespace}/${secret}`);
    if (!s || version === '' || credentialVersion(s.metadata, key) !== version) return undefined;
    return credentialValue(s.data?.[key]);
  }
}
