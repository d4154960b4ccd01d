/**
 * Runs a level-triggered reconciler over a WorkQueue, controller-runtime style:
 * - workers start only once every informer has synced (a half-filled cache would look like deletions);
 * - error ⇒ per-key backoff; TerminalError ⇒ no retry; requeueAfterMs ⇒ forget + exact requeue; success ⇒ forget;
 * - every reconcile gets a reconcileID in its logger and is counted in controller_runtime_* metrics.
 */
import { randomUUID } from 'node:crypto';
import type { Registry } from 'prom-client';
import { silentLogger, type Logger } from '../log.ts';
import { DURATION_BUCKETS, counter, gauge, histogram } from '../metrics.ts';
import { WorkQueue, type BackoffOptions } from './workqueue.ts';
import { sleep } from '../sleep.ts';
import { LeadershipLostError } from './fenced.ts';

/** An error that retrying cannot fix (invalid spec, forbidden): logged and counted, never requeued. */
export class TerminalError extends Error {
  override readonly name = 'TerminalError';
}

export interface ReconcileResult {
  /** Reconcile this key again after this long, even if nothing changes (polling outside state, expiries). */
  requeueAfterMs?: number;
}

export interface ReconcileContext {
  reconcileID: string;
  logger: Logger;
  /** Aborted when the controller stops; long reconciles should pass it to their requests. */
  signal: AbortSignal;
}

/** Returns `{}` when converged. */
export type Reconcile = (key: string, ctx: ReconcileContext) => Promise<ReconcileResult>;

export interface Syncable {
  hasSynced(): boolean;
}

export interface ControllerOptions {
  name: string;
  reconcile: Reconcile;
  /** Workers; a key never runs on two at once whatever this is. */
  concurrency?: number;
  /** Informers whose caches must be full before the first reconcile. */
  informers?: readonly Syncable[];
  registry?: Registry;
  logger?: Logger;
  backoff?: BackoffOptions;
  /** How often hasSynced() is polled while waiting. */
  syncPollMs?: number;
}

type Outcome = 'success' | 'error' | 'requeue_after' | 'cancelled';

export class Controller {
  readonly name: string;
  readonly queue: WorkQueue;
  readonly #options: ControllerOptions;
  readonly #logger: Logger;
  readonly #abort = new AbortController();
  readonly #workers: Promise<void>[] = [];
  #started = false;
  readonly #metrics: {
    total?: import('prom-client').Counter<'controller' | 'result'>;
    errors?: import('prom-client').Counter<'controller'>;
    terminal?: import('prom-client').Counter<'controller'>;
    time?: import('prom-client').Histogram<'controller'>;
    active?: import('prom-client').Gauge<'controller'>;
  } = {};

  constructor(options: ControllerOptions) {
    this.name = options.name;
    this.#options = options;
    this.#logger = (options.logger ?? silentLogger).child({ controller: options.name });
    this.queue = new WorkQueue({
      name: options.name,
      ...(options.registry ? { registry: options.registry } : {}),
      ...(options.backoff ? { backoff: options.backoff } : {}),
    });
    const r = options.registry;
    if (r) {
      this.#metrics = {
        total: counter(r, {
          name: 'controller_runtime_reconcile_total',
          help: 'Reconciles per controller and result.',
          labelNames: ['controller', 'result'],
        }),
        errors: counter(r, {
          name: 'controller_runtime_reconcile_errors_total',
          help: 'Reconciles that returned an error.',
          labelNames: ['controller'],
        }),
        terminal: counter(r, {
          name: 'controller_runtime_terminal_reconcile_errors_total',
          help: 'Reconciles that returned a terminal (not retried) error.',
          labelNames: ['controller'],
        }),
        time: histogram(r, {
          name: 'controller_runtime_reconcile_time_seconds',
          help: 'Time per reconcile.',
          labelNames: ['controller'],
          buckets: DURATION_BUCKETS,
        }),
        active: gauge(r, {
          name: 'controller_runtime_active_workers',
          help: 'Workers currently running a reconcile.',
          labelNames: ['controller'],
        }),
      };
      this.#metrics.active?.set({ controller: this.name }, 0);
    }
  }

  /** Waits for the informers, then starts the workers; resolves once they run (or the controller was stopped). */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    const informers = this.#options.informers ?? [];
    const poll = this.#options.syncPollMs ?? 50;
    while (!informers.every((i) => i.hasSynced())) {
      if (this.#abort.signal.aborted) return;
      await sleep(poll, this.#abort.signal);
    }
    if (this.#abort.signal.aborted) return;
    const concurrency = Math.max(1, this.#options.concurrency ?? 1);
    this.#logger.info('starting workers', { workers: concurrency });
    for (let i = 0; i < concurrency; i++) this.#workers.push(this.#work());
  }

  /** Stops taking keys, aborts the reconcile signal, and waits for reconciles in progress to return. */
  async stop(): Promise<void> {
    this.#abort.abort();
    await this.queue.shutdown();
    await Promise.all(this.#workers);
    this.#logger.info('stopped');
  }

  async #work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      this.#metrics.active?.inc({ controller: this.name });
      try {
        await this.#reconcileOne(key);
      } finally {
        this.#metrics.active?.dec({ controller: this.name });
        this.queue.done(key);
      }
    }
  }

  async #reconcileOne(key: string): Promise<void> {
    const reconcileID = randomUUID();
    const logger = this.#logger.child({ key, reconcileID });
    const started = performance.now();
    let outcome: Outcome;
    try {
      const result = await this.#options.reconcile(key, { reconcileID, logger, signal: this.#abort.signal });
      const after = result.requeueAfterMs;
      this.queue.forget(key);
      if (after !== undefined && after > 0) {
        this.queue.addAfter(key, after);
        outcome = 'requeue_after';
      } else {
        outcome = 'success';
      }
      logger.debug('reconciled', { outcome, requeueAfterMs: after });
    } catch (err) {
      if (this.#abort.signal.aborted || err instanceof LeadershipLostError) {
        // Stopping, or this replica lost the lease mid-reconcile (its writes were refused on purpose): not a
        // failure to retry here — the next leader reconciles the key from its own caches.
        outcome = 'cancelled';
        logger.info('reconcile cancelled', { reason: this.#abort.signal.aborted ? 'stopping' : 'leadership_lost' });
        this.#metrics.total?.inc({ controller: this.name, result: outcome });
        return;
      }
      outcome = 'error';
      this.#metrics.errors?.inc({ controller: this.name });
      if (err instanceof TerminalError) {
        this.#metrics.terminal?.inc({ controller: this.name });
        this.queue.forget(key);
        logger.error('reconcile failed permanently', { err });
      } else {
        this.queue.addRateLimited(key);
        logger.warn('reconcile failed, will retry', { err, retries: this.queue.numRequeues(key) });
      }
    }
    this.#metrics.total?.inc({ controller: this.name, result: outcome });
    this.#metrics.time?.observe({ controller: this.name }, (performance.now() - started) / 1000);
  }
}
