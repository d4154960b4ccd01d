/**
 * Publishes the controller's CA bundle as the ConfigMap `agentfence-ca` in every namespace that has agent pods,
 * the way kube-root-ca.crt is published: the injected sidecar mounts it to verify the controller's TLS
 * certificate, and the kubelet refreshes the mounted copy when we rotate the CA. Public material only.
 * Removed again when the last agent pod of a namespace is gone.
 */
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { Logger } from '../../lib/log.ts';
import type { Registry } from 'prom-client';
import { applyObject, deleteObject } from '../../lib/kube/apply.ts';
import type { KubeClient, WriteClient } from '../../lib/kube/client.ts';
import { fencedClient } from '../../lib/kube/fenced.ts';
import { Controller } from '../../lib/kube/controller.ts';
import { Informer } from '../../lib/kube/informer.ts';
import { untilAborted, type AgentPod, type LeaderTask } from '../runtime.ts';
import { RESOURCES, type DataObject } from '../../lib/kube/resources.ts';

export const CA_BUNDLE_CONFIGMAP = 'agentfence-ca';
export const CA_BUNDLE_KEY = 'ca.crt';

export function caBundleTask(options: {
  client: KubeClient;
  pods: Informer<AgentPod>;
  caBundle: () => string;
  logger: Logger;
  registry: Registry;
}): LeaderTask & { refresh(): void } {
  const { client, pods, logger, registry } = options;
  const published = new Informer<DataObject>({
    client,
    resource: RESOURCES.configmaps,
    fieldSelector: `metadata.name=${CA_BUNDLE_CONFIGMAP}`,
    labelSelector: `${LABEL_MANAGED_BY}=${MANAGED_BY}`,
    name: 'ca-bundles',
    logger,
    registry,
  });
  let controller: Controller | undefined;
  let writer: WriteClient = client; // fenced by the leader term while running (lib/kube/fenced.ts)
  const enqueueAll = (): void => {
    const namespaces = new Set([
      ...pods.list().map((p) => p.metadata.namespace ?? ''),
      ...published.list().map((c) => c.metadata.namespace ?? ''),
    ]);
    for (const ns of namespaces) if (ns) controller?.queue.add(ns);
  };

  const reconcile = async (namespace: string): Promise<Record<string, never>> => {
    const hasAgents = pods.list().some((p) => p.metadata.namespace === namespace && !p.metadata.deletionTimestamp);
    const current = published.get(`${namespace}/${CA_BUNDLE_CONFIGMAP}`);
    if (!hasAgents) {
      if (current)
        await deleteObject(
          writer,
          RESOURCES.configmaps,
          { namespace, name: CA_BUNDLE_CONFIGMAP },
          current.metadata.uid ? { uid: current.metadata.uid } : {},
        );
      return {};
    }
    const bundle = options.caBundle();
    if (current?.data?.[CA_BUNDLE_KEY] === bundle) return {};
    await applyObject(writer, RESOURCES.configmaps, {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: CA_BUNDLE_CONFIGMAP, namespace, labels: { [LABEL_MANAGED_BY]: MANAGED_BY } },
      data: { [CA_BUNDLE_KEY]: bundle },
    });
    return {};
  };

  return {
    name: 'ca-bundles',
    ready: () => true,
    refresh: enqueueAll,
    async run(signal, term) {
      writer = term ? fencedClient(client, term) : client;
      published.start();
      controller = new Controller({ name: 'ca-bundles', reconcile, informers: [pods, published], logger, registry });
      const offPods = pods.on({
        add: (p) => controller?.queue.add(p.metadata.namespace ?? ''),
        update: (_, p) => controller?.queue.add(p.metadata.namespace ?? ''),
        delete: (p) => controller?.queue.add(p.metadata.namespace ?? ''),
      });
      const offPublished = published.on({
        // Edited or deleted by someone else: converge again.
        update: (_, c) => controller?.queue.add(c.metadata.namespace ?? ''),
        delete: (c) => controller?.queue.add(c.metadata.namespace ?? ''),
      });
      await controller.start();
      enqueueAll();
      await untilAborted(signal);
      offPods();
      offPublished();
      await controller.stop();
      await published.stop();
      controller = undefined;
    },
  };
}
