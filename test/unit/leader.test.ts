/**
 * Leader election against an in-memory Lease store with resourceVersion checks, for the paths a healthy test API
 * server does not produce: an API outage longer than the renew deadline, and recovery after it.
 * Hand-over and expiry against the real API server are in test/integration/kube-leader.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { KubeApiError, type RequestInit } from '../../lib/kube/client.ts';
import { LeaderElector, type LeaderTerm, type Lease } from '../../lib/kube/leader.ts';
import { fencedClient, LeadershipLostError } from '../../lib/kube/fenced.ts';

class FakeLeases {
  lease: Lease | undefined;
  rv = 0;
  down = false;
  writes = 0;

  request<T>(method: string, path: string, init: RequestInit = {}): Promise<T> {
    if (this.down) return Promise.reject(new Error('connect ECONNREFUSED'));
    const clone = <V>(v: V): V => structuredClone(v);
    if (method === 'GET') {
      if (!this.lease) return Promise.reject(new KubeApiError(404, 'NotFound', 'not found', method, path));
      return Promise.resolve(clone(this.lease) as T);
    }
    const body = clone(init.body as Lease);
    if (method === 'POST') {
      if (this.lease) return Promise.reject(new KubeApiError(409, 'AlreadyExists', 'exists', method, path));
    } else if (body.metadata.resourceVersion !== this.lease?.metadata.resourceVersion) {
      return Promise.reject(new KubeApiError(409, 'Conflict', 'the object has been modified', method, path));
    }
    this.writes++;
    this.lease = { ...body, metadata: { ...body.metadata, resourceVersion: String(++this.rv) } };
    return Promise.resolve(clone(this.lease) as T);
  }
}

const TIMING = { leaseDurationMs: 600, renewDeadlineMs: 400, retryPeriodMs: 50 };

async function until(probe: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('LeaderElector', () => {
  it('validates its timing', () => {
    const api = new FakeLeases();
    const make = (t: Partial<typeof TIMING>) => () =>
      new LeaderElector({
        client: api,
        namespace: 'n',
        name: 'l',
        identity: 'a',
        onStartedLeading: () => undefined,
        ...t,
      });
    expect(make({ leaseDurationMs: 1000, renewDeadlineMs: 1000 })).toThrow(/leaseDuration > renewDeadline/);
    expect(make({ renewDeadlineMs: 100, retryPeriodMs: 100 })).toThrow(/1.2 × retryPeriod/);
  });

  it('steps down when it cannot renew within the deadline, and leads again once the API is back', async () => {
    const api = new FakeLeases();
    const log: string[] = [];
    const signals: AbortSignal[] = [];
    const elector = new LeaderElector({
      client: api,
      namespace: 'n',
      name: 'l',
      identity: 'a',
      ...TIMING,
      onStartedLeading: (s) => {
        signals.push(s);
        log.push('started');
      },
      onStoppedLeading: () => log.push('stopped'),
    });
    elector.start();
    await until(() => elector.isLeader(), 'leadership');
    const downAt = Date.now();
    api.down = true;
    await until(() => !elector.isLeader(), 'stepping down');
    const stepDownAfter = Date.now() - downAt;
    // Not before the deadline, and well before the lease could expire for others.
    expect(stepDownAfter).toBeGreaterThanOrEqual(TIMING.renewDeadlineMs - TIMING.retryPeriodMs);
    expect(stepDownAfter).toBeLessThan(TIMING.leaseDurationMs);
    expect(signals[0]?.aborted).toBe(true);
    api.down = false;
    await until(() => elector.isLeader(), 'leadership again');
    expect(log).toEqual(['started', 'stopped', 'started']);
    expect(signals[1]?.aborted).toBe(false);
    await elector.stop();
    expect(api.lease?.spec?.holderIdentity).toBeUndefined(); // released
    expect(log).toEqual(['started', 'stopped', 'started', 'stopped']);
  });

  it('lets exactly one of several candidates lead, whatever the interleaving', async () => {
    const api = new FakeLeases();
    const electors = ['a', 'b', 'c'].map(
      (identity) =>
        new LeaderElector({
          client: api,
          namespace: 'n',
          name: 'l',
          identity,
          ...TIMING,
          onStartedLeading: () => undefined,
        }),
    );
    electors.forEach((e) => e.start());
    await until(() => electors.some((e) => e.isLeader()), 'a leader');
    for (let i = 0; i < 20; i++) {
      expect(electors.filter((e) => e.isLeader())).toHaveLength(1);
      await new Promise((r) => setTimeout(r, 10));
    }
    const leader = electors.find((e) => e.isLeader());
    expect(electors.every((e) => e.leader === api.lease?.spec?.holderIdentity)).toBe(true);
    await Promise.all(electors.map((e) => e.stop()));
    expect(leader).toBeDefined();
  });

  it('refuses writes as soon as its clock is past the renew deadline (a pause), before any timer has run', async () => {
    const api = new FakeLeases();
    let skew = 0;
    const terms: LeaderTerm[] = [];
    const elector = new LeaderElector({
      client: api,
      namespace: 'n',
      name: 'l',
      identity: 'a',
      ...TIMING,
      now: () => Date.now() + skew,
      onStartedLeading: (_signal, term) => {
        terms.push(term);
      },
    });
    elector.start();
    await until(() => terms.length === 1, 'leadership');
    const term = terms[0] as LeaderTerm;
    const writer = fencedClient(api, term);
    const body = { metadata: { name: 'x' } };
    expect(term.holds()).toBe(true);
    const before = api.writes;
    // What SIGCONT looks like to the process: the wall clock moved on, no timer has fired yet.
    skew = TIMING.renewDeadlineMs + 1;
    expect(term.holds()).toBe(false);
    await expect(writer.request('PATCH', '/apis/x/v1/things/x', { body })).rejects.toBeInstanceOf(LeadershipLostError);
    await expect(writer.request('DELETE', '/apis/x/v1/things/x')).rejects.toBeInstanceOf(LeadershipLostError);
    expect(api.writes).toBe(before);
    // Reads are not fenced.
    await expect(writer.request('GET', '/apis/coordination.k8s.io/v1/namespaces/n/leases/l')).resolves.toBeDefined();
    await elector.stop();
    expect(term.signal.aborted).toBe(true);
  });
});
