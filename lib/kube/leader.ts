/**
 * Leader election on a coordination.k8s.io/v1 Lease, with client-go's rules:
 * - a lease is free when it has no holder, or when its record has not changed for leaseDuration as measured by
 *   *our* clock since we observed it (never by comparing the holder's timestamps with our clock: clocks skew);
 * - every write is a PUT carrying the resourceVersion we read, so two candidates can never both win;
 * - the leader renews every retryPeriod and steps down (aborting onStartedLeading's signal) if it could not renew
 *   for renewDeadline, which is shorter than leaseDuration, so it stops before anyone else may start;
 * - stop() releases the lease (empty holder) so a successor takes over at its next retry, not after expiry.
 * After losing the lease the elector becomes a candidate again.
 * - the work gets a LeaderTerm: `holds()` is true only while the lease was renewed within renewDeadline by our own
 *   clock, checked synchronously before each write. A leader paused (SIGSTOP, a long GC, a frozen VM) past its
 *   lease wakes up with I/O callbacks running before any timer, so the step-down timer alone comes too late; the
 *   check does not (see lib/kube/fenced.ts).
 */
import type { Registry } from 'prom-client';
import { silentLogger, type Logger } from '../log.ts';
import { gauge } from '../metrics.ts';
import { sleep } from '../sleep.ts';
import { isConflict, isNotFound, resourcePath, type KubeClient, type KubeObject } from './client.ts';
import { microTime } from './conditions.ts';
import { deepEqual } from './json.ts';

const LEASES = { group: 'coordination.k8s.io', version: 'v1', resource: 'leases' };

export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

export interface Lease extends KubeObject {
  spec?: LeaseSpec;
}

export interface LeaderElectorOptions {
  client: Pick<KubeClient, 'request'>;
  namespace: string;
  name: string;
  /** Unique per replica (the pod name, plus a random suffix when several electors share a pod). */
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** Called on becoming leader; `signal` aborts when leadership ends. Not awaited; errors are logged. */
  onStartedLeading: (signal: AbortSignal, term: LeaderTerm) => void | Promise<void>;
  onStoppedLeading?: () => void;
  onNewLeader?: (identity: string) => void;
  /** Release the lease on stop(); only safe when the work stops with it. Default true. */
  releaseOnStop?: boolean;
  logger?: Logger;
  registry?: Registry;
  now?: () => number;
}

/** One term of leadership, handed to the work. */
export interface LeaderTerm {
  /** Aborts when the term ends. */
  readonly signal: AbortSignal;
  /** True while the term lasts and the lease was renewed within renewDeadline (our clock): check before writing. */
  holds(): boolean;
}

export class LeaderElector {
  readonly #o: Required<Pick<LeaderElectorOptions, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'>> &
    LeaderElectorOptions;
  readonly #logger: Logger;
  readonly #now: () => number;
  readonly #path: string;
  readonly #stop = new AbortController();
  #observed: { spec: LeaseSpec; at: number } | undefined;
  #leader = false;
  #renewedAt = -Infinity;
  #knownLeader = '';
  #running: Promise<void> | undefined;
  readonly #isLeaderGauge: import('prom-client').Gauge<'lease'> | undefined;

  constructor(options: LeaderElectorOptions) {
    this.#o = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000, ...options };
    const { leaseDurationMs, renewDeadlineMs, retryPeriodMs } = this.#o;
    if (!(leaseDurationMs > renewDeadlineMs && renewDeadlineMs > retryPeriodMs * 1.2)) {
      throw new Error('leader election needs leaseDuration > renewDeadline > 1.2 × retryPeriod');
    }
    if (!options.identity) throw new Error('leader election needs a non-empty identity');
    this.#logger = (options.logger ?? silentLogger).child({ lease: `${options.namespace}/${options.name}` });
    this.#now = options.now ?? Date.now;
    this.#path = resourcePath(LEASES, { namespace: options.namespace, name: options.name });
    this.#isLeaderGauge = options.registry
      ? gauge(options.registry, {
          name: 'leader_election_master_status',
          help: '1 while this replica holds the lease.',
          labelNames: ['lease'],
        })
      : undefined;
  }

  isLeader(): boolean {
    return this.#leader;
  }

  /** The holder we last saw ('' when none). */
  get leader(): string {
    return this.#knownLeader;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  /** Stops campaigning; a leader aborts its work, releases the lease and calls onStoppedLeading. */
  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#running;
  }

  async #run(): Promise<void> {
    const stopped = (): boolean => this.#stop.signal.aborted;
    while (!stopped()) {
      if (!(await this.#tryAcquireOrRenew(this.#o.renewDeadlineMs))) {
        await sleep(this.#o.retryPeriodMs * (1 + Math.random() * 0.2), this.#stop.signal);
        continue;
      }
      const work = new AbortController();
      this.#setLeader(true);
      this.#logger.info('became leader', { identity: this.#o.identity });
      const term: LeaderTerm = {
        signal: work.signal,
        holds: () => !work.signal.aborted && this.#now() - this.#renewedAt < this.#o.renewDeadlineMs,
      };
      Promise.resolve()
        .then(() => this.#o.onStartedLeading(work.signal, term))
        .catch((err: unknown) => this.#logger.error('onStartedLeading failed', { err }));
      let lastRenew = this.#now();
      while (!stopped()) {
        await sleep(this.#o.retryPeriodMs, this.#stop.signal);
        if (stopped()) break;
        // A hung request must not keep us leading past the renew deadline: bound it by the time left.
        const left = lastRenew + this.#o.renewDeadlineMs - this.#now();
        if (await this.#tryAcquireOrRenew(Math.max(100, left))) {
          lastRenew = this.#now();
        } else if (this.#now() - lastRenew >= this.#o.renewDeadlineMs) {
          this.#logger.warn('lost leadership: could not renew within the deadline', {
            renewDeadlineMs: this.#o.renewDeadlineMs,
          });
          break;
        }
      }
      work.abort();
      this.#setLeader(false);
      if (stopped() && (this.#o.releaseOnStop ?? true)) await this.#release();
      this.#safe(() => this.#o.onStoppedLeading?.());
    }
  }

  #setLeader(leader: boolean): void {
    this.#leader = leader;
    this.#isLeaderGauge?.set({ lease: `${this.#o.namespace}/${this.#o.name}` }, leader ? 1 : 0);
  }

  async #tryAcquireOrRenew(timeoutMs: number): Promise<boolean> {
    const now = this.#now();
    const id = this.#o.identity;
    const desired = (previous: LeaseSpec): LeaseSpec => {
      const taking = previous.holderIdentity !== id;
      return {
        holderIdentity: id,
        leaseDurationSeconds: Math.ceil(this.#o.leaseDurationMs / 1000),
        acquireTime: taking ? microTime(now) : (previous.acquireTime ?? microTime(now)),
        renewTime: microTime(now),
        leaseTransitions: (previous.leaseTransitions ?? 0) + (taking && previous.holderIdentity ? 1 : 0),
      };
    };
    try {
      let lease: Lease;
      try {
        lease = await this.#o.client.request<Lease>('GET', this.#path, { timeoutMs });
      } catch (err) {
        if (!isNotFound(err)) throw err;
        const created = await this.#o.client.request<Lease>(
          'POST',
          resourcePath(LEASES, { namespace: this.#o.namespace }),
          {
            timeoutMs,
            body: {
              apiVersion: 'coordination.k8s.io/v1',
              kind: 'Lease',
              metadata: { name: this.#o.name, namespace: this.#o.namespace },
              spec: desired({}),
            },
          },
        );
        this.#observe(created.spec ?? {}, now);
        this.#renewedAt = now;
        return true;
      }
      const spec = lease.spec ?? {};
      this.#observe(spec, now);
      const holder = spec.holderIdentity ?? '';
      const durationMs = (spec.leaseDurationSeconds ?? 0) * 1000;
      const observedAt = this.#observed?.at ?? now;
      if (holder && holder !== id && observedAt + durationMs > now) return false;
      const updated = await this.#o.client.request<Lease>('PUT', this.#path, {
        timeoutMs,
        body: { ...lease, spec: desired(spec) },
      });
      this.#observe(updated.spec ?? {}, now);
      // The time we *sent* the renewal: the lease is valid from when the server stored it, which is later.
      this.#renewedAt = now;
      return true;
    } catch (err) {
      // 409: another candidate wrote first. Anything else: the API server is unreachable; a leader keeps
      // retrying until its renew deadline.
      if (!isConflict(err)) this.#logger.warn('lease update failed', { err });
      return false;
    }
  }

  #observe(spec: LeaseSpec, now: number): void {
    if (!this.#observed || !deepEqual(this.#observed.spec, spec)) this.#observed = { spec, at: now };
    const holder = spec.holderIdentity ?? '';
    if (holder !== this.#knownLeader) {
      this.#knownLeader = holder;
      if (holder) this.#safe(() => this.#o.onNewLeader?.(holder));
    }
  }

  async #release(): Promise<void> {
    try {
      const lease = await this.#o.client.request<Lease>('GET', this.#path);
      if (lease.spec?.holderIdentity !== this.#o.identity) return;
      const now = microTime(this.#now());
      await this.#o.client.request('PUT', this.#path, {
        body: {
          ...lease,
          spec: {
            leaseDurationSeconds: 1,
            acquireTime: now,
            renewTime: now,
            leaseTransitions: lease.spec.leaseTransitions ?? 0,
          },
        },
      });
      this.#logger.info('released lease');
    } catch (err) {
      // The lease then simply expires after leaseDuration.
      this.#logger.warn('lease release failed', { err });
    }
  }

  #safe(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#logger.error('leader election callback threw', { err });
    }
  }
}
