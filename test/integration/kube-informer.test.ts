/**
 * The informer against the real API server: it sees adds, updates and deletes, keeps working when the server ends
 * its watches every second and when the connection is cut, and a relist does not re-deliver unchanged objects.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient, type KubeObject } from '../../lib/kube/client.ts';
import { Informer } from '../../lib/kube/informer.ts';
import { createRegistry } from '../../lib/metrics.ts';
import { cluster, createNamespace, eventually } from '../support/cluster.ts';

const until = <T>(probe: () => T | undefined, what: string): Promise<T> =>
  eventually(() => Promise.resolve(probe()), what);

const CONFIGMAPS = { group: '', version: 'v1', resource: 'configmaps' };

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}

let client: KubeClient;
let ns: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('kube-informer');
});

afterAll(() => client.close());

function configMap(name: string, data: Record<string, string>, labels: Record<string, string> = {}): ConfigMap {
  return { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: ns, labels }, data };
}

async function create(cm: ConfigMap): Promise<ConfigMap> {
  return client.request<ConfigMap>('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: cm });
}

function record(informer: Informer<ConfigMap>): string[] {
  const events: string[] = [];
  informer.on({
    add: (o) => events.push(`add ${o.metadata.name ?? ''}`),
    update: (_old, o) => events.push(`update ${o.metadata.name ?? ''} ${o.data?.v ?? ''}`),
    delete: (o) => events.push(`delete ${o.metadata.name ?? ''}`),
  });
  return events;
}

describe('Informer (real API server)', () => {
  it('lists with pagination, then sees add, update and delete', async () => {
    await create(configMap('pre-1', { v: '0' }, { suite: 'crud' }));
    await create(configMap('pre-2', { v: '0' }, { suite: 'crud' }));
    await create(configMap('other', { v: '0' }));
    const registry = createRegistry({ defaultMetrics: false });
    const informer = new Informer<ConfigMap>({
      client,
      resource: CONFIGMAPS,
      namespace: ns,
      labelSelector: 'suite=crud',
      pageSize: 1,
      registry,
      name: 'crud',
    });
    const events = record(informer);
    informer.start();
    try {
      await informer.waitForSync();
      expect(informer.hasSynced()).toBe(true);
      expect(informer.keys().sort()).toEqual([`${ns}/pre-1`, `${ns}/pre-2`]);

      await create(configMap('live', { v: '1' }, { suite: 'crud' }));
      await until(() => informer.get(`${ns}/live`), 'add of live');
      await client.request('PATCH', `/api/v1/namespaces/${ns}/configmaps/live`, {
        contentType: 'application/merge-patch+json',
        body: { data: { v: '2' } },
      });
      await until(() => (informer.get(`${ns}/live`)?.data?.v === '2' ? true : undefined), 'update');
      await client.request('DELETE', `/api/v1/namespaces/${ns}/configmaps/live`);
      await until(() => (informer.get(`${ns}/live`) ? undefined : true), 'delete');

      expect(events).toEqual(['add pre-1', 'add pre-2', 'add live', 'update live 2', 'delete live']);
      expect(await registry.metrics()).toContain('informer_cached_objects{informer="crud"} 2');
    } finally {
      await informer.stop();
    }
  });

  it('keeps delivering events across server-side watch timeouts and cut connections, without update storms', async () => {
    const registry = createRegistry({ defaultMetrics: false });
    const informer = new Informer<ConfigMap>({
      client,
      resource: CONFIGMAPS,
      namespace: ns,
      labelSelector: 'suite=recover',
      // The server ends every watch after ~1 s: the informer must resume from its resourceVersion each time.
      watchTimeoutSeconds: 1,
      registry,
      name: 'recover',
      backoff: { baseDelayMs: 50, maxDelayMs: 200 },
    });
    const events = record(informer);
    await create(configMap('a', { v: '0' }, { suite: 'recover' }));
    informer.start();
    try {
      await informer.waitForSync();
      // Outlive several server-side timeouts.
      await new Promise((r) => setTimeout(r, 2500));
      await create(configMap('b', { v: '0' }, { suite: 'recover' }));
      await until(() => informer.get(`${ns}/b`), 'add after watch timeouts');

      informer.breakWatch();
      await create(configMap('c', { v: '0' }, { suite: 'recover' }));
      await until(() => informer.get(`${ns}/c`), 'add after a cut connection');

      // Unchanged objects never produced update events, however many times the watch restarted.
      expect(events).toEqual(['add a', 'add b', 'add c']);
      const metrics = await registry.metrics();
      const restarts = /informer_watch_restarts_total\{informer="recover",reason="closed"\} (\d+)/.exec(metrics);
      expect(Number(restarts?.[1] ?? 0)).toBeGreaterThanOrEqual(2);
    } finally {
      await informer.stop();
    }
  });
});
