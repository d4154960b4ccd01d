/**
 * A list+watch cache for one resource that never gives up:
 * - LIST (paginated), then WATCH from the list's resourceVersion with bookmarks;
 * - 410 Gone (HTTP or in-stream) ⇒ relist; a relist diffs against the cache, so unchanged objects (same
 *   resourceVersion) produce no events and vanished ones produce deletes;
 * - stream end ⇒ re-watch from the last resourceVersion; any other failure ⇒ retry with capped exponential
 *   backoff and jitter; a watch silent for longer than `staleAfterMs` is torn down (half-open connections);
 * - handlers run synchronously and are meant only to enqueue; a throwing handler is logged, never propagated;
 * - every `resyncPeriodMs` each cached object is re-delivered as update(obj, obj).
 */
import type { Registry } from 'prom-client';
import { silentLogger, type Logger } from '../log.ts';
import { counter, gauge } from '../metrics.ts';
import {
  isGone,
  KubeApiError,
  resourcePath,
  type KubeClient,
  type KubeObject,
  type KubeStatus,
  type ResourceRef,
  type WatchEvent,
} from './client.ts';
import { ItemBackoff } from './workqueue.ts';
import { sleep } from '../sleep.ts';

export interface EventHandlers<T extends KubeObject> {
  add?(obj: T): void;
  update?(oldObj: T, newObj: T): void;
  delete?(obj: T): void;
}

export interface InformerOptions {
  client: Pick<KubeClient, 'list' | 'watch'>;
  resource: ResourceRef;
  /** Watch one namespace; all namespaces when absent. */
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** Name in logs and metrics; defaults to the resource. */
  name?: string;
  logger?: Logger;
  registry?: Registry;
  pageSize?: number;
  /** Server-side watch timeout; each watch lasts this long ±10 % (spreads reconnects), then resumes from its RV. */
  watchTimeoutSeconds?: number;
  /** Re-deliver every cached object this often; 0 disables. */
  resyncPeriodMs?: number;
  /** Tear the watch down when nothing (not even a bookmark) arrived for this long. */
  staleAfterMs?: number;
  backoff?: { baseDelayMs?: number; maxDelayMs?: number };
  /**
   * Cap on the retry delay while the API server cannot be reached at all (refused, reset, timed out: no HTTP
   * answer) or says it is not ready (503, or 429 after the client's own Retry-After retries: refused before any
   * work), default 2 s. Such a retry costs the server next to nothing, and after an API-server restart the cache
   * must not sit out a long backoff: policy edits reach sidecars through it. A restarting kube-apiserver answers
   * 503 ("before all known HTTP paths have been installed") and 429 ("storage is (re)initializing") for a moment
   * after it listens (test/integration/apiserver-restart.test.ts). Other HTTP errors keep the full backoff.
   */
  unreachableMaxDelayMs?: number;
}

/** The store key: `namespace/name`, or `name` for cluster-scoped objects (client-go's MetaNamespaceKeyFunc). */
export function objectKey(obj: KubeObject): string {
  const { namespace, name } = obj.metadata;
  return namespace ? `${namespace}/${name ?? ''}` : (name ?? '');
}

const RELIST_AFTER_FAILURES = 3;

/** No HTTP answer at all, or the server saying it is not ready yet (see unreachableMaxDelayMs). */
function notServing(err: unknown): boolean {
  return !(err instanceof KubeApiError) || err.status === 503 || err.status === 429;
}

/** Thrown inside the loop to relist: the watch's resourceVersion is too old. */
class Expired extends Error {}

export class Informer<T extends KubeObject = KubeObject> {
  readonly name: string;
  readonly #o: InformerOptions;
  readonly #store = new Map<string, T>();
  readonly #handlers = new Set<EventHandlers<T>>();
  readonly #logger: Logger;
  readonly #backoff: ItemBackoff;
  #resourceVersion: string | undefined;
  #synced = false;
  #syncWaiters: (() => void)[] = [];
  #running: Promise<void> | undefined;
  #stop = new AbortController();
  #watchAbort: AbortController | undefined;
  #lastActivity = 0;
  #resyncTimer: NodeJS.Timeout | undefined;
  #watchdogTimer: NodeJS.Timeout | undefined;
  readonly #metrics: {
    restarts?: import('prom-client').Counter<'informer' | 'reason'>;
    listErrors?: import('prom-client').Counter<'informer'>;
    objects?: import('prom-client').Gauge<'informer'>;
  } = {};

  constructor(options: InformerOptions) {
    this.#o = options;
    this.name = options.name ?? [options.resource.resource, options.resource.group].filter(Boolean).join('.');
    this.#logger = (options.logger ?? silentLogger).child({ informer: this.name });
    this.#backoff = new ItemBackoff({
      baseDelayMs: options.backoff?.baseDelayMs ?? 500,
      maxDelayMs: options.backoff?.maxDelayMs ?? 30_000,
      jitter: 0.5,
    });
    const r = options.registry;
    if (r) {
      this.#metrics = {
        restarts: counter(r, {
          name: 'informer_watch_restarts_total',
          help: 'Watches restarted, by reason (expired, closed, error, stale).',
          labelNames: ['informer', 'reason'],
        }),
        listErrors: counter(r, {
          name: 'informer_list_errors_total',
          help: 'LIST requests that failed.',
          labelNames: ['informer'],
        }),
        objects: gauge(r, { name: 'informer_cached_objects', help: 'Objects in the cache.', labelNames: ['informer'] }),
      };
    }
  }

  /** Registers handlers; returns a function that removes them. Objects already cached are not replayed. */
  on(handlers: EventHandlers<T>): () => void {
    this.#handlers.add(handlers);
    return () => this.#handlers.delete(handlers);
  }

  start(): void {
    if (this.#running) return;
    this.#stop = new AbortController();
    this.#running = this.#loop();
    const resync = this.#o.resyncPeriodMs ?? 10 * 60_000;
    if (resync > 0) {
      this.#resyncTimer = setInterval(() => this.#resync(), resync);
      this.#resyncTimer.unref();
    }
    const stale = this.#o.staleAfterMs ?? ((this.#o.watchTimeoutSeconds ?? 300) + 60) * 1000;
    this.#watchdogTimer = setInterval(
      () => {
        if (this.#watchAbort && Date.now() - this.#lastActivity > stale) {
          this.#logger.warn('watch stale, restarting', { silentMs: Date.now() - this.#lastActivity });
          this.#metrics.restarts?.inc({ informer: this.name, reason: 'stale' });
          this.#watchAbort.abort();
        }
      },
      Math.max(100, Math.min(stale / 4, 10_000)),
    );
    this.#watchdogTimer.unref();
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    this.#watchAbort?.abort();
    clearInterval(this.#resyncTimer);
    clearInterval(this.#watchdogTimer);
    await this.#running;
    this.#running = undefined;
  }

  hasSynced(): boolean {
    return this.#synced;
  }

  waitForSync(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve) => this.#syncWaiters.push(resolve));
  }

  get(key: string): T | undefined {
    return this.#store.get(key);
  }

  list(): T[] {
    return [...this.#store.values()];
  }

  keys(): string[] {
    return [...this.#store.keys()];
  }

  /** The resourceVersion the cache is at (from the last list, event or bookmark). */
  get resourceVersion(): string | undefined {
    return this.#resourceVersion;
  }

  /** Aborts the current watch as if the connection dropped; for tests and operators' debugging hooks. */
  breakWatch(): void {
    this.#watchAbort?.abort();
  }

  async #loop(): Promise<void> {
    const signal = this.#stop.signal;
    // A function, not the property: the compiler would narrow `signal.aborted` across the awaits below.
    const stopped = (): boolean => signal.aborted;
    while (!stopped()) {
      try {
        if (this.#resourceVersion === undefined) await this.#relist(signal);
        const started = Date.now();
        const events = await this.#watch(signal);
        if (stopped()) break;
        this.#metrics.restarts?.inc({ informer: this.name, reason: 'closed' });
        // A watch that ends at once without a single event is a failure in disguise (e.g. a proxy closing it).
        if (events === 0 && Date.now() - started < 1000) await sleep(this.#backoff.when('watch'), signal);
        else this.#backoff.forget('watch');
      } catch (err) {
        if (stopped()) break;
        if (err instanceof Expired || isGone(err)) {
          this.#logger.info('resource version expired, relisting', { resourceVersion: this.#resourceVersion });
          this.#metrics.restarts?.inc({ informer: this.name, reason: 'expired' });
          this.#resourceVersion = undefined;
          // The first expiry relists at once; expiries with no healthy watch in between back off, so a server
          // that keeps answering 410 cannot drive a tight relist loop.
          const delay = this.#backoff.when('watch');
          if (this.#backoff.failures('watch') > 1) await sleep(delay, signal);
          continue;
        }
        const backoff = this.#backoff.when('watch');
        const delay = notServing(err) ? Math.min(backoff, this.#o.unreachableMaxDelayMs ?? 2_000) : backoff;
        this.#metrics.restarts?.inc({ informer: this.name, reason: 'error' });
        // A watch that keeps failing from the same resourceVersion may be stuck on it (e.g. "too large resource
        // version" after an etcd restore): start over from a fresh list.
        if (this.#backoff.failures('watch') % RELIST_AFTER_FAILURES === 0) this.#resourceVersion = undefined;
        // One failure is routine (an API server starting or rolling, a watch cache re-initializing after a CRD
        // is created): info. Failures in a row are worth a warning.
        const level = this.#backoff.failures('watch') > 1 ? 'warn' : 'info';
        this.#logger[level]('list/watch failed, retrying', {
          err,
          status: err instanceof KubeApiError ? err.status : undefined,
          retryInMs: Math.round(delay),
        });
        await sleep(delay, signal);
      }
    }
  }

  #path(): string {
    return resourcePath(this.#o.resource, { namespace: this.#o.namespace });
  }

  #selectors(): Record<string, string> {
    const q: Record<string, string> = {};
    if (this.#o.labelSelector) q.labelSelector = this.#o.labelSelector;
    if (this.#o.fieldSelector) q.fieldSelector = this.#o.fieldSelector;
    return q;
  }

  async #relist(signal: AbortSignal): Promise<void> {
    const items: T[] = [];
    let cont: string | undefined;
    let rv: string | undefined;
    try {
      do {
        const page = await this.#o.client.list<T>(this.#path(), {
          ...this.#selectors(),
          limit: this.#o.pageSize ?? 500,
          ...(cont ? { continue: cont } : {}),
        });
        items.push(...page.items);
        cont = page.metadata.continue || undefined;
        rv = page.metadata.resourceVersion;
        if (signal.aborted) return;
      } while (cont);
    } catch (err) {
      this.#metrics.listErrors?.inc({ informer: this.name });
      // A continue token that expired mid-pagination is a 410 as well: the caller starts over.
      throw err;
    }
    this.#replace(items);
    this.#resourceVersion = rv;
    // The backoff is not reset here but by a healthy watch: a server that lists fine but refuses every watch
    // (RBAC without the watch verb) must not make us relist every few seconds.
    this.#logger.debug('listed', { objects: items.length, resourceVersion: rv });
    if (!this.#synced) {
      this.#synced = true;
      for (const resolve of this.#syncWaiters.splice(0)) resolve();
    }
  }

  /** Replaces the cache with a fresh list, emitting only real differences. */
  #replace(items: readonly T[]): void {
    const fresh = new Map<string, T>();
    for (const obj of items) fresh.set(objectKey(obj), obj);
    for (const [key, old] of this.#store) {
      if (!fresh.has(key)) {
        this.#store.delete(key);
        this.#emit('delete', old);
      }
    }
    for (const [key, obj] of fresh) {
      const old = this.#store.get(key);
      this.#store.set(key, obj);
      if (!old) this.#emit('add', obj);
      else if (old.metadata.resourceVersion !== obj.metadata.resourceVersion) this.#emit('update', obj, old);
    }
    this.#metrics.objects?.set({ informer: this.name }, this.#store.size);
  }

  /** Runs one watch until the server ends it; returns how many events arrived. */
  async #watch(signal: AbortSignal): Promise<number> {
    // stop() may have run while the list was in flight; a listener added now would never fire.
    if (signal.aborted) return 0;
    const abort = new AbortController();
    const onStop = (): void => abort.abort();
    signal.addEventListener('abort', onStop, { once: true });
    this.#watchAbort = abort;
    this.#lastActivity = Date.now();
    let events = 0;
    const base = this.#o.watchTimeoutSeconds ?? 300;
    const timeoutSeconds = Math.max(1, Math.round(base * (0.9 + Math.random() * 0.2)));
    try {
      await this.#o.client.watch(
        this.#path(),
        {
          ...this.#selectors(),
          resourceVersion: this.#resourceVersion,
          allowWatchBookmarks: true,
          timeoutSeconds,
        },
        (event) => {
          events++;
          this.#lastActivity = Date.now();
          this.#apply(event);
        },
        abort.signal,
      );
    } finally {
      signal.removeEventListener('abort', onStop);
      if (this.#watchAbort === abort) this.#watchAbort = undefined;
    }
    // Broken by the watchdog or breakWatch() looks like any closed stream: resume from the last resourceVersion.
    return events;
  }

  #apply(event: WatchEvent): void {
    if (event.type === 'ERROR') {
      const status = event.object as KubeStatus;
      if (status.code === 410) throw new Expired(status.message ?? 'expired');
      throw new KubeApiError(status.code ?? 500, status.reason, status.message ?? 'watch error', 'WATCH', this.#path());
    }
    const obj = event.object as T;
    const rv = obj.metadata.resourceVersion;
    if (event.type === 'BOOKMARK') {
      if (rv) this.#resourceVersion = rv;
      return;
    }
    const key = objectKey(obj);
    const old = this.#store.get(key);
    if (event.type === 'DELETED') {
      this.#store.delete(key);
      this.#emit('delete', old ?? obj);
    } else {
      this.#store.set(key, obj);
      if (!old) this.#emit('add', obj);
      else if (old.metadata.resourceVersion !== rv) this.#emit('update', obj, old);
    }
    if (rv) this.#resourceVersion = rv;
    this.#metrics.objects?.set({ informer: this.name }, this.#store.size);
  }

  #resync(): void {
    if (!this.#synced) return;
    for (const obj of this.#store.values()) this.#emit('update', obj, obj);
  }

  #emit(kind: 'add' | 'update' | 'delete', obj: T, old?: T): void {
    for (const h of this.#handlers) {
      try {
        if (kind === 'add') h.add?.(obj);
        else if (kind === 'delete') h.delete?.(obj);
        else h.update?.(old ?? obj, obj);
      } catch (err) {
        this.#logger.error('event handler threw', { err, event: kind, key: objectKey(obj) });
      }
    }
  }
}
