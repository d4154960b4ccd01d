/**
 * A keyed work queue with client-go semantics:
 * - stingy: a key added many times before a worker takes it is processed once;
 * - a key is never handed to two workers at once; a key added while it is being processed is queued again
 *   when that processing is `done`, so the newest state is always reconciled once more;
 * - per-key exponential backoff (`addRateLimited`) reset by `forget`, and `addAfter` for exact requeues.
 * Concurrency is bounded by the number of workers that call `get` (see Controller).
 */
import type { Registry } from 'prom-client';
import { DURATION_BUCKETS, counter, gauge, histogram } from '../metrics.ts';
import { MAX_TIMER_MS } from '../sleep.ts';

export interface BackoffOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Fraction of random extra delay, 0..1; spreads retries of keys that failed together. */
  jitter?: number;
  random?: () => number;
}

/** Per-key exponential backoff: base·2^failures (+ jitter), capped. 5 ms → 1000 s (~16 min) by default. */
export class ItemBackoff {
  readonly #failures = new Map<string, number>();
  readonly #base: number;
  readonly #max: number;
  readonly #jitter: number;
  readonly #random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.#base = options.baseDelayMs ?? 5;
    this.#max = options.maxDelayMs ?? 1_000_000;
    this.#jitter = options.jitter ?? 0.1;
    this.#random = options.random ?? Math.random;
  }

  /** The delay for this failure of `key`, and counts it. */
  when(key: string): number {
    const failures = this.#failures.get(key) ?? 0;
    this.#failures.set(key, failures + 1);
    // 2^failures overflows to Infinity long after it passed the cap; Math.min handles that.
    const raw = Math.min(this.#base * 2 ** failures, this.#max);
    return Math.min(raw * (1 + this.#jitter * this.#random()), this.#max);
  }

  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  forget(key: string): void {
    this.#failures.delete(key);
  }
}

/**
 * An overall token bucket for retries (golang.org/x/time/rate's reservation semantics: tokens may go negative and
 * the deficit is the delay). Per-key backoff alone lets a mass failure of thousands of keys retry all at once.
 */
export class TokenBucket {
  readonly #qps: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #last: number;

  constructor(qps: number, burst: number, now: () => number = () => performance.now()) {
    this.#qps = qps;
    this.#burst = burst;
    this.#now = now;
    this.#tokens = burst;
    this.#last = now();
  }

  /** Takes one token; returns how long to wait (ms) before using it. */
  reserve(): number {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) / 1000) * this.#qps);
    this.#last = now;
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : (-this.#tokens / this.#qps) * 1000;
  }
}

export interface WorkQueueOptions {
  name: string;
  registry?: Registry;
  backoff?: BackoffOptions;
  /** Overall retry rate: the delay is the larger of the per-key backoff and this bucket's. Default 10 qps, burst 100. */
  retryRate?: { qps: number; burst: number };
  now?: () => number;
}

export class WorkQueue {
  readonly name: string;
  readonly #queue: string[] = [];
  /** Keys that need processing: queued, or re-added while being processed. */
  readonly #dirty = new Set<string>();
  readonly #processing = new Set<string>();
  readonly #delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  readonly #addedAt = new Map<string, number>();
  readonly #startedAt = new Map<string, number>();
  readonly #waiters: ((key: string | undefined) => void)[] = [];
  readonly #idleWaiters: (() => void)[] = [];
  readonly #backoff: ItemBackoff;
  readonly #bucket: TokenBucket;
  readonly #now: () => number;
  #shuttingDown = false;
  readonly #metrics: {
    depth?: import('prom-client').Gauge<'name'>;
    adds?: import('prom-client').Counter<'name'>;
    retries?: import('prom-client').Counter<'name'>;
    queueDuration?: import('prom-client').Histogram<'name'>;
    workDuration?: import('prom-client').Histogram<'name'>;
  } = {};

  constructor(options: WorkQueueOptions) {
    this.name = options.name;
    this.#backoff = new ItemBackoff(options.backoff);
    this.#now = options.now ?? (() => performance.now());
    this.#bucket = new TokenBucket(options.retryRate?.qps ?? 10, options.retryRate?.burst ?? 100, this.#now);
    const r = options.registry;
    if (r) {
      const labelNames = ['name'] as const;
      this.#metrics = {
        depth: gauge(r, { name: 'workqueue_depth', help: 'Keys waiting in the work queue.', labelNames }),
        adds: counter(r, { name: 'workqueue_adds_total', help: 'Keys added to the work queue.', labelNames }),
        retries: counter(r, {
          name: 'workqueue_retries_total',
          help: 'Keys re-added with backoff after a failure.',
          labelNames,
        }),
        queueDuration: histogram(r, {
          name: 'workqueue_queue_duration_seconds',
          help: 'Time a key waits in the queue before a worker takes it.',
          labelNames,
          buckets: DURATION_BUCKETS,
        }),
        workDuration: histogram(r, {
          name: 'workqueue_work_duration_seconds',
          help: 'Time a worker spends on a key.',
          labelNames,
          buckets: DURATION_BUCKETS,
        }),
      };
      this.#metrics.depth?.set({ name: this.name }, 0);
    }
  }

  add(key: string): void {
    if (this.#shuttingDown || this.#dirty.has(key)) return;
    this.#metrics.adds?.inc({ name: this.name });
    this.#dirty.add(key);
    this.#addedAt.set(key, this.#now());
    // Being processed: it goes back into the queue when the worker calls done().
    if (this.#processing.has(key)) return;
    this.#push(key);
  }

  /** Adds `key` after `ms`; when a key is already waiting, the earlier time wins. */
  addAfter(key: string, requestedMs: number): void {
    if (this.#shuttingDown) return;
    if (requestedMs <= 0) {
      this.add(key);
      return;
    }
    // setTimeout fires after 1 ms for anything above 2^31-1 ms (24.8 days): a policy expiring in years drove a
    // reconcile loop. Waking up early instead is harmless, since reconciles are level-triggered.
    const ms = Math.min(requestedMs, MAX_TIMER_MS);
    const at = this.#now() + ms;
    const existing = this.#delayed.get(key);
    if (existing && existing.at <= at) return;
    if (existing) clearTimeout(existing.timer);
    const timer = setTimeout(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, ms);
    // A pending requeue must not keep a process alive that is otherwise done.
    timer.unref();
    this.#delayed.set(key, { at, timer });
  }

  addRateLimited(key: string): void {
    if (this.#shuttingDown) return;
    this.#metrics.retries?.inc({ name: this.name });
    this.addAfter(key, Math.max(this.#backoff.when(key), this.#bucket.reserve()));
  }

  forget(key: string): void {
    this.#backoff.forget(key);
  }

  numRequeues(key: string): number {
    return this.#backoff.failures(key);
  }

  /** Keys waiting for a worker (not delayed, not in progress). */
  len(): number {
    return this.#queue.length;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** The next key to process, or undefined once the queue is shutting down. Pair every key with done(). */
  get(): Promise<string | undefined> {
    if (this.#shuttingDown) return Promise.resolve(undefined);
    const key = this.#queue.shift();
    if (key !== undefined) return Promise.resolve(this.#take(key));
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  done(key: string): void {
    if (!this.#processing.delete(key)) return;
    const started = this.#startedAt.get(key);
    this.#startedAt.delete(key);
    if (started !== undefined) this.#metrics.workDuration?.observe({ name: this.name }, (this.#now() - started) / 1000);
    if (this.#dirty.has(key) && !this.#shuttingDown) this.#push(key);
    if (this.#processing.size === 0) for (const idle of this.#idleWaiters.splice(0)) idle();
  }

  /**
   * Stops handing out keys and drops delayed and queued ones (reconcile is level-triggered: whoever runs next
   * relists and sees the same state), then waits until every key in progress is done.
   */
  async shutdown(): Promise<void> {
    this.#shuttingDown = true;
    for (const { timer } of this.#delayed.values()) clearTimeout(timer);
    this.#delayed.clear();
    this.#queue.length = 0;
    this.#metrics.depth?.set({ name: this.name }, 0);
    for (const waiter of this.#waiters.splice(0)) waiter(undefined);
    if (this.#processing.size > 0) await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  #push(key: string): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      waiter(this.#take(key));
      return;
    }
    this.#queue.push(key);
    this.#metrics.depth?.set({ name: this.name }, this.#queue.length);
  }

  #take(key: string): string {
    this.#metrics.depth?.set({ name: this.name }, this.#queue.length);
    this.#dirty.delete(key);
    this.#processing.add(key);
    const added = this.#addedAt.get(key);
    this.#addedAt.delete(key);
    const now = this.#now();
    if (added !== undefined) this.#metrics.queueDuration?.observe({ name: this.name }, (now - added) / 1000);
    this.#startedAt.set(key, now);
    return key;
  }
}
