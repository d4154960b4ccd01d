/**
 * What `helm uninstall` runs (the chart's post-delete hook, `agentfence cleanup`): removes every object the
 * controller created itself, which Helm does not know about, so that the cluster works as before and agent
 * namespaces delete normally.
 *
 * Removed: in every namespace, the NetworkPolicies (baselines, per-policy and cross-namespace ones), the
 * CiliumNetworkPolicies (cilium provider), the AgentEntitlements and the `agentfence-ca` ConfigMaps the
 * controller labelled `app.kubernetes.io/managed-by=agentfence` (finalizers of earlier versions first); in the
 * release namespace, the signing-key and serving-certificate Secrets it labelled the same way, and its Lease.
 * Kept on purpose: the CRDs and with them every AgentPolicy (user-written), and Events (they expire).
 *
 * It runs after Helm deleted the controller's ServiceAccount and RBAC, so a controller still shutting down can
 * no longer write anything back. Idempotent: a second run finds nothing to do.
 */
import { LABEL_MANAGED_BY, MANAGED_BY } from '../lib/api/constants.ts';
import { deleteObject } from '../lib/kube/apply.ts';
import { isNotFound, resourcePath, type KubeClient, type KubeObject, type ResourceRef } from '../lib/kube/client.ts';
import { RESOURCES } from '../lib/kube/resources.ts';
import type { Logger } from '../lib/log.ts';
import { CA_BUNDLE_CONFIGMAP } from './certs/ca-bundles.ts';
import { LEGACY_BASELINE_FINALIZER, removeFinalizer } from './reconciler.ts';

export interface CleanupConfig {
  /** The release namespace (Secrets, Lease). */
  namespace: string;
  networkProvider: 'kubernetes' | 'cilium';
  keysSecretName: string;
  certSecretName: string;
  leaseName: string;
}

/** Counts of deleted objects by kind. */
export type CleanupReport = Record<string, number>;

const MANAGED = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;

async function listAll(
  client: KubeClient,
  resource: ResourceRef,
  query: Record<string, string>,
): Promise<KubeObject[]> {
  const items: KubeObject[] = [];
  let cont: string | undefined;
  do {
    const page = await client.list(resourcePath(resource), { ...query, limit: 500, continue: cont });
    items.push(...page.items);
    cont = page.metadata.continue || undefined;
  } while (cont);
  return items;
}

async function remove(client: KubeClient, resource: ResourceRef, obj: KubeObject): Promise<boolean> {
  await removeFinalizer(client, resource, obj, LEGACY_BASELINE_FINALIZER).catch((err: unknown) => {
    if (!isNotFound(err)) throw err;
  });
  const where = { namespace: obj.metadata.namespace ?? '', name: obj.metadata.name ?? '' };
  return deleteObject(client, resource, where, obj.metadata.uid ? { uid: obj.metadata.uid } : {});
}

export async function cleanup(client: KubeClient, config: CleanupConfig, logger: Logger): Promise<CleanupReport> {
  const report: CleanupReport = {};
  const count = (kind: string, deleted: boolean): void => {
    if (deleted) report[kind] = (report[kind] ?? 0) + 1;
  };
  const clusterWide: [string, ResourceRef, Record<string, string>][] = [
    ['NetworkPolicy', RESOURCES.networkPolicies, { labelSelector: MANAGED }],
    ['AgentEntitlement', RESOURCES.agentEntitlements, { labelSelector: MANAGED }],
    [
      'ConfigMap',
      RESOURCES.configmaps,
      { labelSelector: MANAGED, fieldSelector: `metadata.name=${CA_BUNDLE_CONFIGMAP}` },
    ],
  ];
  if (config.networkProvider === 'cilium')
    clusterWide.push(['CiliumNetworkPolicy', RESOURCES.ciliumNetworkPolicies, { labelSelector: MANAGED }]);
  for (const [kind, resource, query] of clusterWide) {
    for (const obj of await listAll(client, resource, query)) {
      count(kind, await remove(client, resource, obj));
      logger.debug('deleted', { kind, namespace: obj.metadata.namespace, name: obj.metadata.name });
    }
  }
  // Own namespace: by name (the hook's Role names them), and only what the controller itself labelled, so a
  // Secret of the same name that cert-manager or a user owns is left alone.
  for (const name of new Set([config.keysSecretName, config.certSecretName])) {
    let secret: KubeObject;
    try {
      secret = await client.request<KubeObject>(
        'GET',
        resourcePath(RESOURCES.secrets, { namespace: config.namespace, name }),
      );
    } catch (err) {
      if (isNotFound(err)) continue;
      throw err;
    }
    if (secret.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY) continue;
    count('Secret', await remove(client, RESOURCES.secrets, secret));
  }
  count('Lease', await deleteObject(client, RESOURCES.leases, { namespace: config.namespace, name: config.leaseName }));
  logger.info('cleanup done', { deleted: report });
  return report;
}
