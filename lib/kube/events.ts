/**
 * Records events.k8s.io/v1 Events for `kubectl describe` and `kubectl get events`. Recording is fire-and-forget:
 * it never throws into the caller and never blocks a reconcile; failures are logged and counted. Identical events
 * (same object, type, reason, action and note) within the aggregation window become one Event whose
 * `series.count` grows, instead of one object per reconcile.
 */
import type { Registry } from 'prom-client';
import { silentLogger, type Logger } from '../log.ts';
import { counter } from '../metrics.ts';
import { isNotFound, resourcePath, type KubeClient } from './client.ts';
import { microTime } from './conditions.ts';

const EVENTS = { group: 'events.k8s.io', version: 'v1', resource: 'events' };
const NOTE_MAX = 1024;

export interface ObjectReference {
  apiVersion: string;
  kind: string;
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
}

export type EventType = 'Normal' | 'Warning';

export interface EventRecorderOptions {
  client: Pick<KubeClient, 'request'>;
  /** e.g. 'agentfence.io/operator'. */
  reportingController: string;
  /** This replica, e.g. the pod name. */
  reportingInstance: string;
  /** Repeats within this window are aggregated into one Event; default 10 min. */
  aggregateWindowMs?: number;
  /** Distinct events remembered for aggregation; the oldest are forgotten first. */
  maxEntries?: number;
  logger?: Logger;
  registry?: Registry;
  now?: () => number;
}

interface Entry {
  name: string;
  namespace: string;
  body: Record<string, unknown>;
  firstMs: number;
  lastMs: number;
  count: number;
  written: number;
  created: boolean;
  chain: Promise<void>;
}

export class EventRecorder {
  readonly #o: EventRecorderOptions;
  readonly #entries = new Map<string, Entry>();
  readonly #pending = new Set<Promise<void>>();
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #errors: import('prom-client').Counter<'type'> | undefined;

  constructor(options: EventRecorderOptions) {
    this.#o = options;
    this.#logger = (options.logger ?? silentLogger).child({ component: 'event-recorder' });
    this.#now = options.now ?? Date.now;
    this.#errors = options.registry
      ? counter(options.registry, {
          name: 'events_write_errors_total',
          help: 'Events that could not be written to the API server.',
          labelNames: ['type'],
        })
      : undefined;
  }

  normal(regarding: ObjectReference, reason: string, action: string, note: string): void {
    this.event(regarding, 'Normal', reason, action, note);
  }

  warning(regarding: ObjectReference, reason: string, action: string, note: string): void {
    this.event(regarding, 'Warning', reason, action, note);
  }

  event(regarding: ObjectReference, type: EventType, reason: string, action: string, note: string): void {
    try {
      this.#record(regarding, type, reason, action, note.slice(0, NOTE_MAX));
    } catch (err) {
      this.#logger.error('event not recorded', { err, reason });
    }
  }

  /** Resolves when every write started so far has finished (successfully or not). */
  async flush(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending]);
  }

  #record(regarding: ObjectReference, type: EventType, reason: string, action: string, note: string): void {
    const now = this.#now();
    const namespace = regarding.namespace || 'default';
    const key = [regarding.uid ?? `${namespace}/${regarding.name}`, regarding.kind, type, reason, action, note].join(
      '\u0000',
    );
    let entry = this.#entries.get(key);
    if (entry && now - entry.firstMs > (this.#o.aggregateWindowMs ?? 10 * 60_000)) {
      this.#entries.delete(key);
      entry = undefined;
    }
    if (entry) {
      entry.count++;
      entry.lastMs = now;
      // Move to the back: the Map's insertion order is our LRU order.
      this.#entries.delete(key);
      this.#entries.set(key, entry);
    } else {
      entry = {
        name: eventName(regarding.name, now),
        namespace,
        body: {
          apiVersion: 'events.k8s.io/v1',
          kind: 'Event',
          eventTime: microTime(now),
          reportingController: this.#o.reportingController,
          reportingInstance: this.#o.reportingInstance,
          type,
          reason,
          action,
          note,
          regarding,
        },
        firstMs: now,
        lastMs: now,
        count: 1,
        written: 0,
        created: false,
        chain: Promise.resolve(),
      };
      this.#entries.set(key, entry);
      const max = this.#o.maxEntries ?? 4096;
      while (this.#entries.size > max) {
        const oldest = this.#entries.keys().next().value;
        if (oldest === undefined) break;
        this.#entries.delete(oldest);
      }
    }
    const target = entry;
    // One write at a time per event; a write that finds its count already sent does nothing, so bursts coalesce.
    const next = target.chain
      .then(() => this.#sync(target))
      .catch((err: unknown) => {
        this.#errors?.inc({ type });
        this.#logger.warn('event write failed', { err, reason, object: `${namespace}/${regarding.name}` });
      });
    target.chain = next;
    this.#pending.add(next);
    void next.finally(() => this.#pending.delete(next));
  }

  async #sync(entry: Entry): Promise<void> {
    if (entry.written >= entry.count) return;
    const count = entry.count;
    if (entry.created) {
      try {
        await this.#o.client.request('PATCH', resourcePath(EVENTS, { namespace: entry.namespace, name: entry.name }), {
          contentType: 'application/merge-patch+json',
          body: { series: { count, lastObservedTime: microTime(entry.lastMs) } },
        });
        entry.written = count;
        return;
      } catch (err) {
        if (!isNotFound(err)) throw err;
        // The Event expired (the API server's event TTL); start a new one.
        entry.name = eventName((entry.body.regarding as ObjectReference).name, this.#now());
        entry.created = false;
      }
    }
    const series = count > 1 ? { series: { count, lastObservedTime: microTime(entry.lastMs) } } : {};
    await this.#o.client.request('POST', resourcePath(EVENTS, { namespace: entry.namespace }), {
      body: { ...entry.body, metadata: { name: entry.name, namespace: entry.namespace }, ...series },
    });
    entry.created = true;
    entry.written = count;
  }
}

function eventName(objectName: string, now: number): string {
  // client-go's scheme (<object>.<hex time>), plus randomness so two replicas never collide.
  const suffix = `${now.toString(16)}${Math.floor(Math.random() * 0xffff)
    .toString(16)
    .padStart(4, '0')}`;
  return `${objectName.slice(0, 253 - suffix.length - 1)}.${suffix}`;
}
