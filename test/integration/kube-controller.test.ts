/**
 * The pieces together, as the operator will use them: an informer feeds keys to a Controller whose reconcile reads
 * the cache, applies a child with server-side apply, writes status only when it changed and records an Event. The
 * outcome is checked in the API server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyObject } from '../../lib/kube/apply.ts';
import { clientFromKubeconfig, type KubeClient, type KubeObject } from '../../lib/kube/client.ts';
import { Controller } from '../../lib/kube/controller.ts';
import { EventRecorder } from '../../lib/kube/events.ts';
import { Informer, objectKey } from '../../lib/kube/informer.ts';
import { createRegistry } from '../../lib/metrics.ts';
import { cluster, createNamespace, eventually } from '../support/cluster.ts';

const CONFIGMAPS = { group: '', version: 'v1', resource: 'configmaps' };

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}

let client: KubeClient;
let ns: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('kube-controller');
});

afterAll(() => client.close());

describe('Controller + Informer (real API server)', () => {
  it('reconciles sources into owned children, once per change, only after the cache synced', async () => {
    const path = `/api/v1/namespaces/${ns}/configmaps`;
    await client.request('POST', path, {
      body: {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'src-1', labels: { role: 'src' } },
        data: { v: 'a' },
      },
    });
    const registry = createRegistry({ defaultMetrics: false });
    const informer = new Informer<ConfigMap>({
      client,
      resource: CONFIGMAPS,
      namespace: ns,
      labelSelector: 'role=src',
      registry,
    });
    const recorder = new EventRecorder({ client, reportingController: 'agentfence.io/test', reportingInstance: 't' });
    const seen: string[] = [];
    const first: { synced?: boolean } = {};
    const controller = new Controller({
      name: 'mirror',
      concurrency: 2,
      informers: [informer],
      registry,
      reconcile: async (key) => {
        first.synced ??= informer.hasSynced();
        const source = informer.get(key);
        seen.push(`${key}=${source?.data?.v ?? '<deleted>'}`);
        if (!source) return {};
        await applyObject(client, CONFIGMAPS, {
          apiVersion: 'v1',
          kind: 'ConfigMap',
          metadata: {
            name: `${source.metadata.name ?? ''}-child`,
            namespace: ns,
            labels: { 'app.kubernetes.io/managed-by': 'agentfence' },
            ownerReferences: [
              {
                apiVersion: 'v1',
                kind: 'ConfigMap',
                name: source.metadata.name ?? '',
                uid: source.metadata.uid ?? '',
                controller: true,
                blockOwnerDeletion: true,
              },
            ],
          },
          data: { mirrored: source.data?.v ?? '' },
        });
        recorder.normal(
          {
            apiVersion: 'v1',
            kind: 'ConfigMap',
            name: source.metadata.name ?? '',
            namespace: ns,
            uid: source.metadata.uid ?? '',
          },
          'Mirrored',
          'Reconcile',
          'child is up to date',
        );
        return {};
      },
    });
    informer.on({
      add: (o) => controller.queue.add(objectKey(o)),
      update: (_old, o) => controller.queue.add(objectKey(o)),
      delete: (o) => controller.queue.add(objectKey(o)),
    });
    informer.start();
    await controller.start();
    try {
      const child = (name: string) => client.get<ConfigMap>(`${path}/${name}`).catch(() => undefined);
      await eventually(async () => (await child('src-1-child'))?.data?.mirrored === 'a' || undefined, 'first child');
      expect(first.synced).toBe(true);

      await client.request('PATCH', `${path}/src-1`, {
        contentType: 'application/merge-patch+json',
        body: { data: { v: 'b' } },
      });
      await eventually(async () => (await child('src-1-child'))?.data?.mirrored === 'b' || undefined, 'child update');
      await client.request('DELETE', `${path}/src-1`);
      await eventually(() => Promise.resolve(seen.includes(`${ns}/src-1=<deleted>`) || undefined), 'delete seen');

      expect(seen).toEqual([`${ns}/src-1=a`, `${ns}/src-1=b`, `${ns}/src-1=<deleted>`]);
      await recorder.flush();
      const metrics = await registry.metrics();
      expect(metrics).toContain('controller_runtime_reconcile_total{controller="mirror",result="success"} 3');
    } finally {
      await controller.stop();
      await informer.stop();
    }
  });
});
