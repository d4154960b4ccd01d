/**
 * Entitlement distribution: every controller replica keeps the current AgentEntitlement of every pod (fed by its
 * informer) and streams each connected sidecar the full snapshot of its own pod — on every change and as a
 * heartbeat. Full snapshots, never deltas: a missed event can never leave a sidecar with a stale grant, and an
 * entitlement that disappears is a narrowing to nothing (the SPIFFE Workload API rule).
 *
 * The wire format (Server-Sent Events):
 *   event: snapshot   data: {"revision": "sha256:…", "entitlement": <AgentEntitlement>, "heartbeatMs": 15000}
 *   event: heartbeat  data: {"revision": "sha256:…", "heartbeatMs": 15000}   (every heartbeatMs; revision "" when none)
 * `heartbeatMs` tells the sidecar how often to expect an event: a stream silent for about twice that is stale (a
 * paused or half-open replica) and the sidecar reconnects, possibly to another replica. A heartbeat confirms that
 * the revision it names is still current, so a sidecar that failed closed during an outage re-arms on it.
 * A sidecar whose pod has no entitlement gets an empty snapshot (no grants) so it can tell "nothing allowed"
 * from "controller unreachable".
 *
 * Two sources, one rule for which one a sidecar gets:
 *  - the record: the AgentEntitlements the replica's informer observes. Every replica serves it; a non-leader
 *    serves only it.
 *  - the compiled result: the leader's reconciler publishes each compile's entitlements here the moment they are
 *    computed, before it writes them to the API server (the record follows at the pace of the API server, about
 *    10 ms per object). While a publication is current it is what this replica's sidecars get — a managed
 *    entitlement absent from it is a narrowing to nothing, even if its object still exists — so a write that
 *    fails or lands late can neither delay a narrowing nor bring back an older revision. A publication carries
 *    the term's `holds()`, checked before every delivery: while the term does not hold a fresh lease (deposed,
 *    paused past its lease, a renewal late under load) nothing of it is delivered — a sidecar that connects gets
 *    the record — and the sidecars it reached keep what they hold (pushing them the lagging record would widen
 *    again what was just narrowed). When the term ends, `withdraw()` brings every sidecar to the record.
 *
 * Credentials: a snapshot whose rules name credentials also carries their values, and only theirs —
 *   "credentials": [{"secret": "openai-api", "key": "token", "version": "sha256:…", "value": "…"}]
 * — each only when the Secret the hub holds is at the version the entitlement was compiled against (a replica
 * whose Secret cache lags sends none until it catches up, then re-sends the snapshot). The AgentEntitlement
 * itself names the Secret, key and version, never the value: the value exists only on this authenticated stream
 * of the pod the grant is for.
 */
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import type { CredentialSource } from '../credentials.ts';

/** A credential value delivered with a snapshot (see the file comment). */
export interface DeliveredCredential {
  secret: string;
  key: string;
  version: string;
  value: string;
}

export interface StreamSink {
  /** Writes one SSE event; returns false when the connection is gone. */
  send(event: 'snapshot' | 'heartbeat', data: string): boolean;
  close(): void;
}

interface Subscriber {
  podUID: string;
  sink: StreamSink;
  lastRevision: string | undefined;
  /** The credentials the last snapshot carried. */
  lastCredentials: DeliveredCredential[];
}

export interface PodKey {
  namespace: string;
  podName: string;
  podUID: string;
}

const key = (namespace: string, podName: string): string => `${namespace}/${podName}`;
const credentialId = (c: { secret: string; key: string; version: string }): string =>
  `${c.secret}/${c.key}@${c.version}`;
const compare = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** The entitlement a pod gets when none is compiled yet: nothing allowed. */
export function emptyEntitlement(pod: PodKey): AgentEntitlement {
  return {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: pod.podName, namespace: pod.namespace },
    spec: { podName: pod.podName, podUID: pod.podUID, agent: '', spiffeID: '', revision: '', egress: [] },
  };
}

/** The leader's compile output, delivered while its term holds. */
interface Publication {
  entitlements: Map<string, AgentEntitlement>;
  holds: () => boolean;
}

export class EntitlementHub {
  /** The record: what the informer observes. */
  private readonly entitlements = new Map<string, AgentEntitlement>();
  private publication: Publication | undefined;
  private readonly subscribers = new Map<string, Set<Subscriber>>();
  private readonly recordWaiters = new Map<string, Set<() => void>>();
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly heartbeatMs: number;

  private readonly credentials: CredentialSource | undefined;

  constructor(heartbeatMs = 15_000, credentials?: CredentialSource) {
    this.heartbeatMs = heartbeatMs;
    this.credentials = credentials;
  }

  /** A credential Secret changed: re-sends snapshots whose delivered credentials differ (rotation, catch-up). */
  refreshCredentials(): void {
    for (const k of this.subscribers.keys()) this.push(k);
  }

  start(): void {
    this.heartbeat = setInterval(() => {
      this.beat();
    }, this.heartbeatMs);
    this.heartbeat.unref();
  }

  stop(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    for (const set of this.subscribers.values()) for (const s of set) s.sink.close();
    this.subscribers.clear();
  }

  /** Informer add/update. Pushes to the pod's sidecars only when what they get changed. */
  upsert(entitlement: AgentEntitlement): void {
    const k = key(entitlement.metadata.namespace ?? '', entitlement.spec.podName);
    this.entitlements.set(k, entitlement);
    this.push(k);
    for (const wake of this.recordWaiters.get(k) ?? []) wake();
  }

  /**
   * Resolves true once the record of this pod incarnation carries `revision` (at once if it does), false after
   * `timeoutMs`. A sidecar acknowledges a published revision before its object is written; its status can only
   * be recorded against the object that carries it.
   */
  whenRecorded(pod: PodKey, revision: string, timeoutMs: number): Promise<boolean> {
    const k = key(pod.namespace, pod.podName);
    const recorded = (): boolean => {
      const ae = this.entitlements.get(k);
      return ae?.spec.podUID === pod.podUID && ae.spec.revision === revision;
    };
    if (recorded()) return Promise.resolve(true);
    return new Promise((resolve) => {
      let set = this.recordWaiters.get(k);
      if (!set) {
        set = new Set();
        this.recordWaiters.set(k, set);
      }
      const waiters = set;
      const done = (result: boolean): void => {
        clearTimeout(timer);
        waiters.delete(wake);
        if (waiters.size === 0 && this.recordWaiters.get(k) === waiters) this.recordWaiters.delete(k);
        resolve(result);
      };
      const wake = (): void => {
        if (recorded()) done(true);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      timer.unref();
      waiters.add(wake);
    });
  }

  /**
   * The leader's compiled entitlements (the whole desired set of one compile), delivered at once to every
   * connected sidecar whose entitlement changed. Refused (false, nothing delivered) when `holds()` is false now;
   * never delivered while `holds()` is false later.
   */
  publish(entitlements: readonly AgentEntitlement[], holds: () => boolean): boolean {
    if (!holds()) return false;
    const map = new Map<string, AgentEntitlement>();
    for (const ae of entitlements) map.set(key(ae.metadata.namespace ?? '', ae.spec.podName), ae);
    this.publication = { entitlements: map, holds };
    for (const k of this.subscribers.keys()) this.push(k);
    return true;
  }

  /** The term ended: drop the publication; sidecars whose delivered revision differs from the record get the record. */
  withdraw(): void {
    if (!this.publication) return;
    this.publication = undefined;
    for (const k of this.subscribers.keys()) this.push(k);
  }

  /** True while a publication whose term holds is what this replica delivers. */
  publishing(): boolean {
    return this.current() !== undefined;
  }

  /** A publication exists but its term does not hold now: deliver nothing of it, and change nothing delivered. */
  private suspended(): boolean {
    return this.publication !== undefined && !this.publication.holds();
  }

  /** Informer delete: the sidecars get an empty snapshot (revoked). */
  remove(namespace: string, podName: string): void {
    const k = key(namespace, podName);
    this.entitlements.delete(k);
    this.push(k);
  }

  subscribe(pod: PodKey, sink: StreamSink): () => void {
    const k = key(pod.namespace, pod.podName);
    const subscriber: Subscriber = { podUID: pod.podUID, sink, lastRevision: undefined, lastCredentials: [] };
    let set = this.subscribers.get(k);
    if (!set) {
      set = new Set();
      this.subscribers.set(k, set);
    }
    set.add(subscriber);
    this.sendSnapshot(k, subscriber);
    return () => {
      set.delete(subscriber);
      if (set.size === 0) this.subscribers.delete(k);
    };
  }

  connectedSidecars(): number {
    let n = 0;
    for (const set of this.subscribers.values()) n += set.size;
    return n;
  }

  /** The entitlement for this pod incarnation; a stale one (other uid) counts as none. */
  entitlementFor(pod: PodKey): AgentEntitlement {
    return this.resolve(pod).entitlement;
  }

  /**
   * The entitlement for this pod incarnation, and whether the credential values its rules name may go with it:
   * only for the leader's compile (the publication) or a record object labelled as the controller's. A hand-written
   * (unmanaged) entitlement is served, but never with values: whoever may write one must not thereby read the
   * namespace's credential Secrets (docs/security-model.md, "Brokered credentials"). The label can be trusted
   * because the entitlement-integrity admission policy (webhook/manifests.ts) admits writes only from the controller.
   */
  private resolve(pod: PodKey): { entitlement: AgentEntitlement; brokered: boolean } {
    const k = key(pod.namespace, pod.podName);
    const recorded = this.entitlements.get(k);
    const managed = recorded?.metadata.labels?.[LABEL_MANAGED_BY] === MANAGED_BY;
    const publication = this.current();
    // While publishing, managed entitlements come only from the compile; unmanaged ones (written by hand) from the record.
    const published = publication !== undefined && (publication.entitlements.has(k) || managed);
    const found = published ? publication.entitlements.get(k) : recorded;
    if (!found || found.spec.podUID !== pod.podUID) return { entitlement: emptyEntitlement(pod), brokered: false };
    return { entitlement: found, brokered: published || managed };
  }

  /** The publication if its term holds now. */
  private current(): Publication | undefined {
    return this.publication?.holds() ? this.publication : undefined;
  }

  private push(k: string): void {
    if (this.suspended()) return; // the record may lag what the sidecars hold: wait for the term to resolve
    for (const subscriber of this.subscribers.get(k) ?? []) this.sendSnapshot(k, subscriber);
  }

  private sendSnapshot(k: string, subscriber: Subscriber): void {
    const [namespace = '', podName = ''] = k.split('/');
    const { entitlement, brokered } = this.resolve({ namespace, podName, podUID: subscriber.podUID });
    const revision = entitlement.spec.revision;
    let credentials = brokered ? this.credentialsFor(namespace, entitlement) : [];
    if (subscriber.lastRevision === revision) {
      // Same grants: a value already delivered stays. The Secret may have moved on ahead of the entitlement (a
      // rotation this replica saw first); the entitlement's next revision brings the new version, and dropping
      // the old value meanwhile would refuse the agent's requests for nothing. Not for an entitlement that may
      // carry none (no longer the controller's): its values are withdrawn.
      if (brokered) {
        const ids = new Set(credentials.map(credentialId));
        credentials = [...credentials, ...subscriber.lastCredentials.filter((c) => !ids.has(credentialId(c)))].sort(
          (a, b) => compare(credentialId(a), credentialId(b)),
        );
      }
      if (credentials.map(credentialId).join(',') === subscriber.lastCredentials.map(credentialId).join(',')) return;
    }
    subscriber.lastRevision = revision;
    subscriber.lastCredentials = credentials;
    const data = JSON.stringify({
      revision,
      entitlement,
      heartbeatMs: this.heartbeatMs,
      ...(credentials.length > 0 ? { credentials } : {}),
    });
    if (!subscriber.sink.send('snapshot', data)) subscriber.sink.close();
  }

  /** The values of the credentials this entitlement's rules name, at the versions it names; nothing else. */
  private credentialsFor(namespace: string, entitlement: AgentEntitlement): DeliveredCredential[] {
    if (!this.credentials) return [];
    const out = new Map<string, DeliveredCredential>();
    for (const rule of entitlement.spec.egress ?? []) {
      const c = rule.credentials;
      if (!c || c.version === '') continue;
      const id = credentialId(c);
      if (out.has(id)) continue;
      const value = this.credentials.value(namespace, c.secret, c.key, c.version);
      if (value !== undefined) out.set(id, { secret: c.secret, key: c.key, version: c.version, value });
    }
    return [...out.entries()].sort(([a], [b]) => compare(a, b)).map(([, c]) => c);
  }

  private beat(): void {
    for (const set of this.subscribers.values()) {
      for (const s of set) {
        const data = JSON.stringify({ revision: s.lastRevision ?? '', heartbeatMs: this.heartbeatMs });
        if (!s.sink.send('heartbeat', data)) s.sink.close();
      }
    }
  }
}
