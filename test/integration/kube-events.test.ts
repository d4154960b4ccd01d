/** The event recorder against the real API server: identical events aggregate into one, failures never throw. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient, type KubeObject } from '../../lib/kube/client.ts';
import { EventRecorder, type ObjectReference } from '../../lib/kube/events.ts';
import { createRegistry } from '../../lib/metrics.ts';
import { cluster, createNamespace } from '../support/cluster.ts';

interface Event extends KubeObject {
  reason?: string;
  note?: string;
  type?: string;
  series?: { count: number; lastObservedTime: string };
  regarding?: ObjectReference;
}

let client: KubeClient;
let ns: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('kube-events');
});

afterAll(() => client.close());

describe('EventRecorder (real API server)', () => {
  it('writes one Event per distinct event and counts repeats in series.count', async () => {
    const target = await client.request<KubeObject>('POST', `/api/v1/namespaces/${ns}/configmaps`, {
      body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'target' } },
    });
    const regarding: ObjectReference = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      name: 'target',
      namespace: ns,
      uid: target.metadata.uid ?? '',
    };
    const recorder = new EventRecorder({
      client,
      reportingController: 'agentfence.io/operator',
      reportingInstance: 'test-0',
    });
    recorder.warning(regarding, 'InvalidSpec', 'Reconcile', 'selector is empty');
    await recorder.flush();
    recorder.warning(regarding, 'InvalidSpec', 'Reconcile', 'selector is empty');
    recorder.warning(regarding, 'InvalidSpec', 'Reconcile', 'selector is empty');
    recorder.normal(regarding, 'Synced', 'Reconcile', 'all good');
    await recorder.flush();

    const events = await client.list<Event>(`/apis/events.k8s.io/v1/namespaces/${ns}/events`);
    const byReason = new Map(events.items.map((e) => [e.reason ?? '', e]));
    expect(events.items).toHaveLength(2);
    expect(byReason.get('InvalidSpec')).toMatchObject({
      type: 'Warning',
      note: 'selector is empty',
      series: { count: 3 },
      regarding: { uid: regarding.uid, kind: 'ConfigMap' },
    });
    expect(byReason.get('Synced')?.series).toBeUndefined();
    // The core/v1 view (kubectl describe) sees the same object.
    const core = await client.list<KubeObject & { series?: { count: number } }>(`/api/v1/namespaces/${ns}/events`);
    const coreEvent = core.items.find((e) => e.metadata.name === byReason.get('InvalidSpec')?.metadata.name);
    expect(coreEvent?.series?.count).toBe(3);
  });

  it('never throws into the caller when the API refuses the event', async () => {
    const registry = createRegistry({ defaultMetrics: false });
    const recorder = new EventRecorder({
      client,
      reportingController: 'agentfence.io/operator',
      reportingInstance: 'test-0',
      registry,
    });
    // The namespace does not exist: the API server answers 404 on create.
    expect(() =>
      recorder.normal({ apiVersion: 'v1', kind: 'ConfigMap', name: 'x', namespace: 'no-such-ns' }, 'R', 'A', 'n'),
    ).not.toThrow();
    await recorder.flush();
    expect(await registry.metrics()).toContain('events_write_errors_total{type="Normal"} 1');
  });
});
