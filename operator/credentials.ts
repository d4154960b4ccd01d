/**
 * The controller's view of credential Secrets: an informer over Secrets labelled agentfence.io/credential=true
 * only (the controller never caches the cluster's other Secrets), on every replica — the reconciler compiles
 * names, keys and versions from it (never values), the entitlement hub reads values from it to stream them to
 * entitled sidecars. Values go nowhere else: not to logs, status, Events, metrics or AgentEntitlements.
 */
import type { Registry } from 'prom-client';
import { LABEL_CREDENTIAL } from '../lib/api/constants.ts';
import type { KubeClient, KubeObject } from '../lib/kube/client.ts';
import { Informer } from '../lib/kube/informer.ts';
import type { Logger } from '../lib/log.ts';
import { RESOURCES } from '../lib/kube/resources.ts';
import { credentialValue, credentialVersion, type CredentialSecretInput } from './compiler/credentials.ts';

export type SecretObject = KubeObject & { data?: Record<string, string> };

/** What the hub needs: the value of a key of a Secret, only at the version the entitlement names. */
export interface CredentialSource {
  value(namespace: string, secret: string, key: string, version: string): string | undefined;
}

export class CredentialStore implements CredentialSource {
  readonly informer: Informer<SecretObject>;

  constructor(options: { client: KubeClient; logger: Logger; registry: Registry }) {
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

  value(namespace: string, secret: string, key: string, version: string): string | undefined {
    const s = this.informer.get(`${namespace}/${secret}`);
    if (!s || version === '' || credentialVersion(s.metadata, key) !== version) return undefined;
    return credentialValue(s.data?.[key]);
  }
}
