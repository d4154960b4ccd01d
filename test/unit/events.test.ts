/** Event recorder logic against a recording fake API: coalescing, aggregation window, expiry, failures. */
import { describe, expect, it } from 'vitest';
import { KubeApiError, type RequestInit } from '../../lib/kube/client.ts';
import { EventRecorder } from '../../lib/kube/events.ts';

interface Call {
  method: string;
  path: string;
  body: Record<string, unknown>;
}

class FakeApi {
  calls: Call[] = [];
  failNext: Error | undefined;
  gate: Promise<void> = Promise.resolve();

  async request<T>(method: string, path: string, init: RequestInit = {}): Promise<T> {
    await this.gate;
    this.calls.push({ method, path, body: init.body as Record<string, unknown> });
    const err = this.failNext;
    this.failNext = undefined;
    if (err) throw err;
    return {} as T;
  }
}

const pod = { apiVersion: 'v1', kind: 'Pod', name: 'p', namespace: 'ns', uid: 'u1' };

function setup(now: { t: number }) {
  const api = new FakeApi();
  const recorder = new EventRecorder({
    client: api,
    reportingController: 'agentfence.io/operator',
    reportingInstance: 'r0',
    aggregateWindowMs: 1000,
    now: () => now.t,
  });
  return { api, recorder };
}

describe('EventRecorder', () => {
  it('coalesces a burst of identical events into one create carrying the count', async () => {
    const now = { t: 1_000_000 };
    const { api, recorder } = setup(now);
    let open!: () => void;
    api.gate = new Promise((r) => (open = r));
    for (let i = 0; i < 5; i++) recorder.warning(pod, 'Failed', 'Reconcile', 'boom');
    open();
    await recorder.flush();
    expect(api.calls).toHaveLength(1);
    expect(api.calls[0]).toMatchObject({
      method: 'POST',
      path: '/apis/events.k8s.io/v1/namespaces/ns/events',
      body: { type: 'Warning', reason: 'Failed', note: 'boom', series: { count: 5 }, regarding: pod },
    });
  });

  it('patches the series of an existing Event, and starts a new Event after the window', async () => {
    const now = { t: 1_000_000 };
    const { api, recorder } = setup(now);
    recorder.normal(pod, 'Synced', 'Reconcile', 'ok');
    await recorder.flush();
    now.t += 500;
    recorder.normal(pod, 'Synced', 'Reconcile', 'ok');
    await recorder.flush();
    now.t += 600; // 1100 ms after the first: outside the window
    recorder.normal(pod, 'Synced', 'Reconcile', 'ok');
    await recorder.flush();
    expect(api.calls.map((c) => c.method)).toEqual(['POST', 'PATCH', 'POST']);
    expect(api.calls[1]?.body).toEqual({ series: { count: 2, lastObservedTime: '1970-01-01T00:16:40.500000Z' } });
    const firstName = (api.calls[0]?.body.metadata as { name: string }).name;
    expect(api.calls[1]?.path.endsWith(`/events/${firstName}`)).toBe(true);
    expect((api.calls[2]?.body.metadata as { name: string }).name).not.toBe(firstName);
  });

  it('recreates an Event that expired on the server', async () => {
    const now = { t: 1_000_000 };
    const { api, recorder } = setup(now);
    recorder.normal(pod, 'Synced', 'Reconcile', 'ok');
    await recorder.flush();
    api.failNext = new KubeApiError(404, 'NotFound', 'not found', 'PATCH', '/x');
    recorder.normal(pod, 'Synced', 'Reconcile', 'ok');
    await recorder.flush();
    expect(api.calls.map((c) => c.method)).toEqual(['POST', 'PATCH', 'POST']);
    expect(api.calls[2]?.body).toMatchObject({ series: { count: 2 } });
  });

  it('swallows write failures and keeps recording', async () => {
    const now = { t: 1_000_000 };
    const { api, recorder } = setup(now);
    api.failNext = new Error('ECONNRESET');
    expect(() => recorder.normal(pod, 'A', 'Reconcile', 'x')).not.toThrow();
    await recorder.flush();
    recorder.normal(pod, 'B', 'Reconcile', 'y');
    await recorder.flush();
    expect(api.calls.map((c) => c.body.reason)).toEqual(['A', 'B']);
  });

  it('keeps distinct events apart and truncates long notes', async () => {
    const now = { t: 1_000_000 };
    const { api, recorder } = setup(now);
    recorder.normal(pod, 'Synced', 'Reconcile', 'a');
    recorder.normal(pod, 'Synced', 'Reconcile', 'b');
    recorder.normal({ ...pod, uid: 'u2' }, 'Synced', 'Reconcile', 'a');
    recorder.warning(pod, 'Synced', 'Reconcile', 'x'.repeat(5000));
    await recorder.flush();
    expect(api.calls).toHaveLength(4);
    expect((api.calls[3]?.body.note as string).length).toBe(1024);
  });
});
