import { afterEach, describe, expect, it, vi } from 'vitest';
import { Controller, TerminalError, type ReconcileResult } from '../../lib/kube/controller.ts';
import { ItemBackoff, TokenBucket, WorkQueue } from '../../lib/kube/workqueue.ts';
import { createRegistry } from '../../lib/metrics.ts';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('WorkQueue', () => {
  it('deduplicates a key added many times before it is taken', async () => {
    const q = new WorkQueue({ name: 't' });
    q.add('a');
    q.add('b');
    q.add('a');
    q.add('a');
    expect(q.len()).toBe(2);
    expect(await q.get()).toBe('a');
    expect(await q.get()).toBe('b');
    expect(q.len()).toBe(0);
  });

  it('never hands out a key that is being processed, and re-queues it once after done', async () => {
    const q = new WorkQueue({ name: 't' });
    q.add('a');
    const first = await q.get();
    q.add('a');
    q.add('a');
    expect(q.len()).toBe(0); // held back while 'a' is in progress
    let second: string | undefined;
    void q.get().then((k) => (second = k));
    await tick();
    expect(second).toBeUndefined();
    q.done(first ?? '');
    await tick();
    expect(second).toBe('a');
    q.done('a');
    expect(q.len()).toBe(0); // the two re-adds collapsed into one run
  });

  it('does not re-queue a processed key that was not re-added', async () => {
    const q = new WorkQueue({ name: 't' });
    q.add('a');
    q.done((await q.get()) ?? '');
    expect(q.len()).toBe(0);
  });

  it('addAfter delivers at the requested time, earliest request wins', async () => {
    vi.useFakeTimers();
    const q = new WorkQueue({ name: 't', now: () => Date.now() });
    q.addAfter('a', 1000);
    q.addAfter('a', 5000); // later: ignored
    q.addAfter('b', 3000);
    q.addAfter('b', 2000); // earlier: replaces
    vi.advanceTimersByTime(999);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe('a');
    vi.advanceTimersByTime(999);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(await q.get()).toBe('b');
    vi.advanceTimersByTime(10_000);
    expect(q.len()).toBe(0);
  });

  it('addAfter with a delay beyond the timer range (an expiry years away) does not fire at once', async () => {
    const q = new WorkQueue({ name: 't' });
    q.addAfter('far', 97_442_968_993); // ~3 years: Node would clamp this to 1 ms
    await new Promise((r) => setTimeout(r, 50));
    expect(q.len()).toBe(0);
    await q.shutdown();
  });

  it('backs off per key exponentially with a cap, and forget resets it', () => {
    const b = new ItemBackoff({ baseDelayMs: 5, maxDelayMs: 1_000_000, jitter: 0 });
    const delays = Array.from({ length: 6 }, () => b.when('k'));
    expect(delays).toEqual([5, 10, 20, 40, 80, 160]);
    expect(b.when('other')).toBe(5); // keys are independent
    for (let i = 0; i < 40; i++) b.when('k');
    expect(b.when('k')).toBe(1_000_000);
    b.forget('k');
    expect(b.when('k')).toBe(5);
  });

  it('adds bounded jitter', () => {
    const b = new ItemBackoff({ baseDelayMs: 100, jitter: 0.1, random: () => 0.5 });
    expect(b.when('k')).toBeCloseTo(105);
    const capped = new ItemBackoff({ baseDelayMs: 100, maxDelayMs: 100, jitter: 0.5, random: () => 1 });
    expect(capped.when('k')).toBe(100);
  });

  it('limits the overall retry rate with a token bucket', () => {
    let now = 0;
    const bucket = new TokenBucket(10, 2, () => now);
    expect([bucket.reserve(), bucket.reserve()]).toEqual([0, 0]); // the burst
    expect(bucket.reserve()).toBeCloseTo(100); // then one per 100 ms
    expect(bucket.reserve()).toBeCloseTo(200);
    now = 1000; // refilled, but never beyond the burst
    expect([bucket.reserve(), bucket.reserve(), bucket.reserve()].map(Math.round)).toEqual([0, 0, 100]);
  });

  it('delays a retry by the larger of per-key backoff and the overall bucket', () => {
    vi.useFakeTimers();
    const q = new WorkQueue({
      name: 't',
      now: () => Date.now(),
      backoff: { baseDelayMs: 1, jitter: 0 },
      retryRate: { qps: 10, burst: 1 },
    });
    q.addRateLimited('a'); // 1 ms (bucket has a token)
    q.addRateLimited('b'); // 100 ms (bucket empty), though b's own backoff is 1 ms
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    vi.advanceTimersByTime(98);
    expect(q.len()).toBe(1);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(2);
  });

  it('shutdown drops queued keys, wakes waiting workers and waits for keys in progress', async () => {
    const q = new WorkQueue({ name: 't' });
    q.add('a');
    q.add('b');
    const inProgress = await q.get();
    q.addAfter('c', 10);
    let finished = false;
    const closing = q.shutdown().then(() => (finished = true));
    expect(await q.get()).toBeUndefined();
    await tick();
    expect(finished).toBe(false);
    q.done(inProgress ?? '');
    await closing;
    expect(finished).toBe(true);
    q.add('d');
    expect(q.len()).toBe(0);
  });

  it('exports workqueue metrics', async () => {
    const registry = createRegistry({ defaultMetrics: false });
    const q = new WorkQueue({ name: 'm', registry });
    q.add('a');
    q.add('a');
    q.add('b');
    q.addRateLimited('c');
    const text = await registry.metrics();
    expect(text).toContain('workqueue_adds_total{name="m"} 2');
    expect(text).toContain('workqueue_depth{name="m"} 2');
    expect(text).toContain('workqueue_retries_total{name="m"} 1');
    q.done((await q.get()) ?? '');
    const after = await registry.metrics();
    expect(after).toContain('workqueue_queue_duration_seconds_count{name="m"} 1');
    expect(after).toContain('workqueue_work_duration_seconds_count{name="m"} 1');
    await q.shutdown();
  });
});

describe('Controller', () => {
  function controller(
    reconcile: (key: string) => Promise<ReconcileResult>,
    extra: { concurrency?: number; synced?: () => boolean } = {},
  ) {
    const registry = createRegistry({ defaultMetrics: false });
    const c = new Controller({
      name: 'test',
      reconcile,
      registry,
      concurrency: extra.concurrency ?? 4,
      informers: [{ hasSynced: extra.synced ?? (() => true) }],
      backoff: { baseDelayMs: 1, maxDelayMs: 5, jitter: 0 },
      syncPollMs: 5,
    });
    return { c, registry };
  }

  it('never reconciles the same key concurrently, but different keys in parallel', async () => {
    const running = new Set<string>();
    let overlap = false;
    let maxParallel = 0;
    const gates: (() => void)[] = [];
    const { c } = controller(async (key) => {
      if (running.has(key)) overlap = true;
      running.add(key);
      maxParallel = Math.max(maxParallel, running.size);
      await new Promise<void>((r) => gates.push(r));
      running.delete(key);
      return {};
    });
    await c.start();
    c.queue.add('a');
    c.queue.add('b');
    await tick();
    c.queue.add('a'); // while 'a' runs
    await tick();
    expect(gates).toHaveLength(2);
    gates.splice(0).forEach((g) => g());
    await tick();
    await tick();
    expect(gates).toHaveLength(1); // 'a' ran once more
    gates.splice(0).forEach((g) => g());
    await tick();
    expect(overlap).toBe(false);
    expect(maxParallel).toBe(2);
    await c.stop();
  });

  it('bounds concurrency to the worker count', async () => {
    let active = 0;
    let peak = 0;
    const { c } = controller(
      async () => {
        active++;
        peak = Math.max(peak, active);
        await new Promise((r) => setTimeout(r, 5));
        active--;
        return {};
      },
      { concurrency: 2 },
    );
    await c.start();
    for (const k of ['a', 'b', 'c', 'd', 'e']) c.queue.add(k);
    await new Promise((r) => setTimeout(r, 50));
    expect(peak).toBe(2);
    await c.stop();
  });

  it('retries errors with backoff and forgets after success', async () => {
    let calls = 0;
    const done = deferred();
    const { c, registry } = controller(() => {
      calls++;
      if (calls < 3) return Promise.reject(new Error('boom'));
      done.resolve();
      return Promise.resolve({});
    });
    await c.start();
    c.queue.add('k');
    await done.promise;
    await tick();
    expect(calls).toBe(3);
    expect(c.queue.numRequeues('k')).toBe(0);
    const text = await registry.metrics();
    expect(text).toContain('controller_runtime_reconcile_total{controller="test",result="error"} 2');
    expect(text).toContain('controller_runtime_reconcile_total{controller="test",result="success"} 1');
    expect(text).toContain('controller_runtime_reconcile_errors_total{controller="test"} 2');
    expect(text).toContain('controller_runtime_reconcile_time_seconds_count{controller="test"} 3');
    expect(text).toContain('controller_runtime_active_workers{controller="test"} 0');
    await c.stop();
  });

  it('never retries a TerminalError', async () => {
    let calls = 0;
    const { c, registry } = controller(() => {
      calls++;
      return Promise.reject(new TerminalError('invalid spec'));
    });
    await c.start();
    c.queue.add('k');
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).toBe(1);
    expect(c.queue.numRequeues('k')).toBe(0);
    expect(await registry.metrics()).toContain(
      'controller_runtime_terminal_reconcile_errors_total{controller="test"} 1',
    );
    await c.stop();
  });

  it('requeues after the requested delay', async () => {
    const times: number[] = [];
    const { c } = controller(() => {
      times.push(Date.now());
      return Promise.resolve(times.length < 2 ? { requeueAfterMs: 60 } : {});
    });
    await c.start();
    c.queue.add('k');
    await new Promise((r) => setTimeout(r, 200));
    expect(times).toHaveLength(2);
    expect((times[1] ?? 0) - (times[0] ?? 0)).toBeGreaterThanOrEqual(55);
    await c.stop();
  });

  it('starts workers only after every informer has synced', async () => {
    let synced = false;
    let calls = 0;
    const { c } = controller(
      () => {
        calls++;
        return Promise.resolve({});
      },
      { synced: () => synced },
    );
    const starting = c.start();
    c.queue.add('k');
    await new Promise((r) => setTimeout(r, 30));
    expect(calls).toBe(0);
    synced = true;
    await starting;
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toBe(1);
    await c.stop();
  });

  it('stop waits for the reconcile in progress and aborts its signal', async () => {
    let sawAbort = false;
    const entered = deferred();
    const c = new Controller({
      name: 'stop',
      reconcile: async (_key, ctx) => {
        entered.resolve();
        await new Promise((r) => ctx.signal.addEventListener('abort', r, { once: true }));
        await new Promise((r) => setTimeout(r, 10));
        sawAbort = true;
        return {};
      },
    });
    await c.start();
    c.queue.add('k');
    await entered.promise;
    await c.stop();
    expect(sawAbort).toBe(true);
  });
});
