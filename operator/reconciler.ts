/**
 * The policy reconciler (leader only). Level-triggered with a single key: every relevant change enqueues
 * "cluster"; a reconcile compiles the whole desired state from the caches (pure, deterministic, fast: see
 * bench/compile.ts) and converges the cluster to it:
 *   - hands the compiled entitlements to the distribution hub before writing anything: sidecars get them from
 *     memory, fenced by the term (distribution/hub.ts); the objects written after are the record;
 *   - writes (server-side apply, one field manager) only objects whose managed fields differ from the newer of
 *     the cache and what our own last write of it returned (the cache lags our writes);
 *   - fails (and so retries with backoff) when any write failed, owned by a policy or not;
 *   - deletes managed objects that are no longer desired (uid precondition; never objects we did not create);
 *   - recreates the per-namespace baseline the moment it goes (its deletion is a watch event like any other);
 *     it carries no finalizer, so a controller that is gone (uninstalled, crashed, scaled to zero) never
 *     blocks a namespace's deletion, and the finalizer earlier versions set is removed;
 *   - writes each AgentPolicy's status through /status only when it changed;
 *   - requeues exactly at the next grant expiry.
 * An unchanged world therefore costs one compile and zero writes.
 *
 * One reconcile is these steps; only the I/O ones live here, the rest are pure functions:
 *   1. observe — the informer caches of policies, pods, namespaces, services, NetworkPolicies (this file);
 *   2. compile — desired state and per-policy reports (compiler/compile.ts), foreign NetworkPolicies that
 *      overlap a policy's agents (overlap.ts), acknowledged revisions and the status itself (policy-status.ts);
 *   3. publish, then apply — the hub gets the entitlements; `converge`/`prune` here write only what `upToDate` and
 *      `newerCopy` (managed.ts) say differs;
 *   4. report — status writes, foreign-problem log lines and metrics (`writeStatuses`/`reportForeignProblems` here).
 */
import { performance } from 'node:perf_hooks';
import type { Registry } from 'prom-client';
import { LABEL_CA_BUNDLE, LABEL_MANAGED_BY, MANAGED_BY } from '../lib/api/constants.ts';
import type { AgentPolicy } from '../lib/api/types.generated.ts';
import type { Logger } from '../lib/log.ts';
import { gauge } from '../lib/metrics.ts';
import { applyObject, deleteObject, writeStatus } from '../lib/kube/apply.ts';
import { fencedClient, isLeadershipLoss, LeadershipLostError } from '../lib/kube/fenced.ts';
import type { LeaderTerm } from '../lib/kube/leader.ts';
import {
  CONTENT_TYPE,
  KubeApiError,
  resourcePath,
  type KubeClient,
  type KubeObject,
  type ResourceRef,
  type WriteClient,
} from '../lib/kube/client.ts';
import { Controller } from '../lib/kube/controller.ts';
import type { EventRecorder } from '../lib/kube/events.ts';
import { Informer, objectKey } from '../lib/kube/informer.ts';
import { compile } from './compiler/compile.ts';
import type {
  CompileOptions,
  CompileOutput,
  ConfigMapInput,
  Namespace,
  NetworkPolicy,
  PodInput,
  Service,
} from './compiler/types.ts';
import { newerCopy, owningPolicy, policyRef, upToDate } from './managed.ts';
import { PROBE_TTL_MS, type CredentialStore } from './credentials.ts';
import { acknowledgedRevisions, policyStatus } from './policy-status.ts';
import { foreignOverlaps } from './overlap.ts';
import { untilAborted, type AgentEntitlementObject, type LeaderTask } from './runtime.ts';
import type { EntitlementHub } from './distribution/hub.ts';
import { RESOURCES } from '../lib/kube/resources.ts';

/**
 * Set on baselines by earlier versions; removed wherever found. A finalizer could only delay a deletion that
 * whoever may delete NetworkPolicies in the namespace can defeat anyway (NetworkPolicies are additive: an
 * allow-all policy next to the baseline opens it just the same), at the price of namespaces stuck Terminating
 * whenever the controller is not running. Recreating the baseline on its delete event is the protection.
 */
export const LEGACY_BASELINE_FINALIZER = 'agentfence.io/protect-baseline';
const KEY = 'cluster';

const R = {
  policies: RESOURCES.agentPolicies,
  pods: RESOURCES.pods,
  namespaces: RESOURCES.namespaces,
  services: RESOURCES.services,
  configmaps: RESOURCES.configmaps,
  networkPolicies: RESOURCES.networkPolicies,
  cilium: RESOURCES.ciliumNetworkPolicies,
};

type PolicyObject = KubeObject & AgentPolicy;
type NetworkPolicyObject = KubeObject & NetworkPolicy;

export interface ReconcilerOptions {
  client: KubeClient;
  logger: Logger;
  registry: Registry;
  events?: EventRecorder;
  /** Shared with the runtime (every replica needs them for identity and distribution). */
  entitlements: Informer<AgentEntitlementObject>;
  /** Credential Secrets (shared with the runtime, which streams their values); only names, keys and versions are compiled. */
  credentials?: CredentialStore;
  compileOptions: Omit<CompileOptions, 'now'>;
  /**
   * Where each compile's entitlements go the moment they are computed, before any write (the runtime's hub): the
   * sidecars get them from memory; the API objects written after are the record. Fenced by the term.
   */
  distribution?: Pick<EntitlementHub, 'publish' | 'withdraw' | 'connectedSidecars'>;
  now?: () => Date;
}

/**
 * Removes one finalizer from an object, test-then-remove, so a concurrent change to the list fails (409/422)
 * instead of removing someone else's entry. A no-op when the object does not carry it.
 */
export async function removeFinalizer(
  client: WriteClient,
  resource: ResourceRef,
  obj: KubeObject,
  finalizer: string,
): Promise<void> {
  const index = (obj.metadata.finalizers ?? []).indexOf(finalizer);
  if (index < 0) return;
  await client.request(
    'PATCH',
    resourcePath(resource, { namespace: obj.metadata.namespace, name: obj.metadata.name }),
    {
      contentType: CONTENT_TYPE.jsonPatch,
      body: [
        { op: 'test', path: `/metadata/finalizers/${index}`, value: finalizer },
        { op: 'remove', path: `/metadata/finalizers/${index}` },
      ],
    },
  );
}

export function policyReconcilerTask(options: ReconcilerOptions): LeaderTask {
  const { client, logger, registry, entitlements } = options;
  const provider = options.compileOptions.networkProvider ?? 'kubernetes';
  const managed = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;
  const policies = new Informer<PolicyObject>({
    client,
    resource: R.policies,
    name: 'agentpolicies',
    logger,
    registry,
  });
  const pods = new Informer<KubeObject & PodInput>({ client, resource: R.pods, name: 'pods', logger, registry });
  const namespaces = new Informer<KubeObject & Namespace>({
    client,
    resource: R.namespaces,
    name: 'namespaces',
    logger,
    registry,
  });
  const services = new Informer<KubeObject & Service>({
    client,
    resource: R.services,
    name: 'services',
    logger,
    registry,
  });
  // Upstream CA bundles named by rules (caBundle): only ConfigMaps that opted in by label are listed.
  const caBundles = new Informer<KubeObject & ConfigMapInput>({
    client,
    resource: R.configmaps,
    name: 'ca-bundle-configmaps',
    labelSelector: `${LABEL_CA_BUNDLE}=true`,
    logger,
    registry,
  });
  // All NetworkPolicies, not only ours: foreign ones that widen agents' egress are reported.
  const netpols = new Informer<NetworkPolicyObject>({
    client,
    resource: R.networkPolicies,
    name: 'networkpolicies',
    logger,
    registry,
  });
  const cilium =
    provider === 'cilium'
      ? new Informer<KubeObject>({
          client,
          resource: R.cilium,
          labelSelector: managed,
          name: 'ciliumnetworkpolicies',
          logger,
          registry,
        })
      : undefined;
  const informers = [policies, pods, namespaces, services, caBundles, netpols, ...(cilium ? [cilium] : [])];
  const managedObjects = gauge(registry, {
    name: 'agentfence_managed_objects',
    help: 'Objects the operator writes, by kind.',
    labelNames: ['kind'],
  });

  const foreignProblems = gauge(registry, {
    name: 'agentfence_policy_foreign_problems',
    help: 'Problems of policies about objects in other namespaces (logged, never written to status), by reason.',
    labelNames: ['reason'],
  });
  const loggedForeign = new Map<string, string>(); // policy key → what was last logged
  /** Cluster-wide problems go to the log (once per change) and a metric, never into a policy's status. */
  const reportForeignProblems = (output: CompileOutput): void => {
    const counts = new Map<string, number>();
    const seen = new Set<string>();
    for (const r of output.reports) {
      const key = `${r.namespace}/${r.name}`;
      seen.add(key);
      for (const p of r.foreign) counts.set(p.reason, (counts.get(p.reason) ?? 0) + 1);
      const text = JSON.stringify(r.foreign);
      if (loggedForeign.get(key) === text) continue;
      loggedForeign.set(key, text);
      for (const p of r.foreign)
        logger.info('policy problem outside its namespace', {
          policy: key,
          rule: p.rule,
          reason: p.reason,
          detail: p.message,
        });
    }
    for (const key of loggedForeign.keys()) if (!seen.has(key)) loggedForeign.delete(key);
    foreignProblems.reset();
    for (const [reason, n] of counts) foreignProblems.set({ reason }, n);
  };

  /**
   * What our own writes returned, until the informer shows them (then dropped): a reconcile that runs before the
   * cache caught up compares with these, so an unchanged object is not written again (newerCopy in managed.ts).
   */
  const ownWrites = new Map<string, KubeObject>();

  let controller: Controller | undefined;
  const enqueue = (): void => controller?.queue.add(KEY);
  // Every write of a term goes through the fenced client (lease checked before each one, the term's signal on
  // each request); reads and the informers use the plain client.
  let writer: WriteClient = client;
  let term: LeaderTerm | undefined;
  const stillLeading = (): boolean => term?.holds() ?? true;

  /**
   * Compiles from the caches and publishes the entitlements to the hub, synchronously (so publications are in the
   * order of the cache states they were compiled from). Deliver before writing: a sidecar gets its new
   * entitlement now, not after every write before its own. The publication is bound to this term (not to
   * whichever term is current when it is delivered) and refused when the term no longer holds.
   */
  let inputsChanged = 0; // changes to the compile's inputs (policies, pods, namespaces, services, CA bundles) seen so far
  let compiledAt = -1; // the value of inputsChanged the last compile saw
  let lastCompileMs = 0;
  // Named Secrets that exist without the credential label: probed (async) by each reconcile, reused by the early
  // publisher, whose compile only needs them for the status report.
  let unlabelledSecrets: Awaited<ReturnType<CredentialStore['unlabelled']>>['unlabelled'] = [];
  const compileAndPublish = (now: Date): CompileOutput => {
    const started = performance.now();
    compiledAt = inputsChanged;
    const output = compile(
      {
        policies: policies.list(),
        pods: pods.list(),
        namespaces: namespaces.list(),
        services: services.list(),
        configMaps: caBundles.list(),
        credentialSecrets: options.credentials?.compileInputs() ?? [],
        unlabelledCredentialSecrets: unlabelledSecrets,
      },
      { ...options.compileOptions, now },
    );
    lastCompileMs = performance.now() - started;
    const publishedIn = term;
    const holds = publishedIn ? (): boolean => publishedIn.holds() : (): boolean => true;
    if (options.distribution && !options.distribution.publish(output.entitlements, holds))
      throw new LeadershipLostError('publish', 'entitlements');
    return output;
  };

  /**
   * A change to the compile's inputs is published without waiting for the reconcile, which may be busy writing
   * an earlier change (a thousand entitlements take seconds): after a pause of three times the last compile's
   * duration (so these compiles take at most a quarter of the CPU in a burst of changes), unless a reconcile
   * compiled it first or no sidecar is connected. Measured (bench:fleet, 5,000 pods): without these bounds the
   * extra compiles slowed the import to 190 s until all entitlements were written, against 85 s before and 81 s
   * with them.
   */
  // Every cache a compile reads, the credential Secrets included: compiled before that cache has synced, a
  // brokered rule would carry no version and be refused (credential_unavailable) until the next compile.
  const synced = (): boolean => informers.every((i) => i.hasSynced()) && (options.credentials?.hasSynced() ?? true);
  let publishTimer: NodeJS.Timeout | undefined;
  const schedulePublish = (): void => {
    inputsChanged++;
    if (publishTimer || !options.distribution || !term) return;
    publishTimer = setTimeout(
      () => {
        publishTimer = undefined;
        if (compiledAt === inputsChanged || !term?.holds() || !synced()) return;
        // No sidecar to deliver to (a bulk import, say): the reconcile's own compile is enough.
        if (options.distribution?.connectedSidecars() === 0) return;
        try {
          compileAndPublish(options.now?.() ?? new Date());
        } catch (err) {
          if (!(err instanceof LeadershipLostError)) logger.error('publishing entitlements failed', { err });
        }
      },
      Math.min(2000, 3 * lastCompileMs),
    );
    publishTimer.unref();
  };

  const reconcile = async (): Promise<{ requeueAfterMs?: number }> => {
    if (!stillLeading()) throw new LeadershipLostError('reconcile', 'cluster');
    if (!synced()) return { requeueAfterMs: 200 };
    const now = options.now?.() ?? new Date();
    // Compile and publish first: the sidecars get this compile now. The lookups of named Secrets that lack the
    // label (GETs, for the status only) come after, and only a changed answer costs a second compile.
    let output = compileAndPublish(now);
    const named = options.credentials
      ? await options.credentials.unlabelled(policies.list())
      : { unlabelled: [], missing: 0 };
    if (JSON.stringify(named.unlabelled) !== JSON.stringify(unlabelledSecrets)) {
      unlabelledSecrets = named.unlabelled;
      output = compileAndPublish(now);
    }
    const errors = new Map<string, string[]>(); // policy key → messages
    // Failures of objects no policy owns (AgentEntitlements belong to their pod) go into no status, but they
    // still fail the reconcile so it is retried with backoff: the sidecars already hold the compiled result and
    // the record must follow.
    let unowned = 0;
    const fail = (policyKey: string | undefined, message: string): void => {
      if (!policyKey) {
        unowned++;
        return;
      }
      errors.set(policyKey, [...(errors.get(policyKey) ?? []), message]);
    };

    await converge(output, fail);
    await writeStatuses(output, errors, now);
    reportForeignProblems(output);

    managedObjects.set({ kind: 'AgentEntitlement' }, output.entitlements.length);
    managedObjects.set({ kind: 'NetworkPolicy' }, output.networkPolicies.length);
    managedObjects.set({ kind: 'CiliumNetworkPolicy' }, output.ciliumNetworkPolicies.length);
    if (errors.size > 0 || unowned > 0)
      throw new Error(`${errors.size} policies and ${unowned} other objects could not be fully programmed`);
    // A named Secret that is missing or unlabelled gives no watch event when it is created or edited without the
    // label: look again after the probe's lifetime, so the status catches up.
    const probeAgainMs = named.missing > 0 ? PROBE_TTL_MS + 100 : undefined;
    const expiryMs = output.nextExpiry ? Math.max(0, Date.parse(output.nextExpiry) - now.getTime()) + 10 : undefined;
    const requeue = [probeAgainMs, expiryMs].filter((v): v is number => v !== undefined);
    return requeue.length > 0 ? { requeueAfterMs: Math.min(...requeue) } : {};
  };

  /** Applies what differs, deletes what is no longer desired. */
  const converge = async (
    output: CompileOutput,
    fail: (policy: string | undefined, message: string) => void,
  ): Promise<void> => {
    const write = async (resource: ResourceRef, desired: KubeObject, cached: KubeObject | undefined): Promise<void> => {
      const k = `${resource.resource}/${objectKey(desired)}`;
      const written = ownWrites.get(k);
      const current = written ? newerCopy(cached, written) : cached;
      if (written && current === cached) ownWrites.delete(k); // the cache has caught up with our write
      if (current && upToDate(desired, current)) return;
      try {
        ownWrites.set(k, await applyObject(writer, resource, desired));
      } catch (err) {
        ownWrites.delete(k);
        if (isLeadershipLoss(err, term?.signal)) throw err;
        const message = `${desired.kind ?? ''} ${objectKey(desired)}: ${err instanceof Error ? err.message : String(err)}`;
        logger.warn('apply failed', { kind: desired.kind, key: objectKey(desired), err });
        fail(owningPolicy(desired), message);
        if (stillLeading()) options.events?.warning(policyRef(desired), 'ApplyFailed', 'Apply', message);
      }
    };

    const desiredNetpols = output.networkPolicies;
    for (const np of desiredNetpols)
      await write(R.networkPolicies, np as unknown as KubeObject, netpols.get(objectKey(np as unknown as KubeObject)));
    for (const np of netpols.list())
      if (
        np.metadata.labels?.[LABEL_MANAGED_BY] === MANAGED_BY &&
        np.metadata.finalizers?.includes(LEGACY_BASELINE_FINALIZER)
      )
        await removeLegacyFinalizer(R.networkPolicies, np).catch((err: unknown) => {
          if (err instanceof KubeApiError && (err.status === 404 || err.status === 409)) return; // next round
          logger.warn('removing the legacy baseline finalizer failed', { key: objectKey(np), err });
        });
    for (const ae of output.entitlements)
      await write(
        RESOURCES.agentEntitlements,
        ae as unknown as KubeObject,
        entitlements.get(objectKey(ae as unknown as KubeObject)),
      );
    if (cilium)
      for (const cnp of output.ciliumNetworkPolicies)
        await write(R.cilium, cnp as unknown as KubeObject, cilium.get(objectKey(cnp as unknown as KubeObject)));

    // Prune: only objects carrying our managed-by label, and only by uid.
    const wanted = (list: readonly { metadata: { namespace?: string; name?: string } }[]): Set<string> =>
      new Set(list.map((o) => `${o.metadata.namespace ?? ''}/${o.metadata.name ?? ''}`));
    const wantedNetpols = wanted(desiredNetpols);
    for (const np of netpols.list()) {
      if (np.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY || wantedNetpols.has(objectKey(np))) continue;
      await prune(R.networkPolicies, np, fail, owningPolicy(np));
    }
    const wantedAEs = wanted(output.entitlements);
    for (const ae of entitlements.list()) {
      if (ae.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY || wantedAEs.has(objectKey(ae))) continue;
      await prune(RESOURCES.agentEntitlements, ae, fail, undefined);
    }
    if (cilium) {
      const wantedCnps = wanted(output.ciliumNetworkPolicies);
      for (const cnp of cilium.list())
        if (!wantedCnps.has(objectKey(cnp))) await prune(R.cilium, cnp, fail, owningPolicy(cnp));
    }
  };

  const removeLegacyFinalizer = (resource: ResourceRef, obj: KubeObject): Promise<void> =>
    removeFinalizer(writer, resource, obj, LEGACY_BASELINE_FINALIZER);

  const prune = async (
    resource: ResourceRef,
    obj: KubeObject,
    fail: (policy: string | undefined, message: string) => void,
    policy: string | undefined,
  ): Promise<void> => {
    ownWrites.delete(`${resource.resource}/${objectKey(obj)}`);
    try {
      await removeLegacyFinalizer(resource, obj);
      if (!obj.metadata.deletionTimestamp) {
        await deleteObject(
          writer,
          resource,
          { namespace: obj.metadata.namespace ?? '', name: obj.metadata.name ?? '' },
          obj.metadata.uid ? { uid: obj.metadata.uid } : {},
        );
      }
    } catch (err) {
      if (isLeadershipLoss(err, term?.signal)) throw err;
      if (err instanceof KubeApiError && (err.status === 404 || err.status === 409)) return; // gone or changed: next round
      logger.warn('prune failed', { key: objectKey(obj), err });
      fail(policy, `delete ${objectKey(obj)}: ${err instanceof Error ? err.message : String(err)}`);
    }
  };

  const writeStatuses = async (output: CompileOutput, errors: Map<string, string[]>, now: Date): Promise<void> => {
    const reports = new Map(output.reports.map((r) => [`${r.namespace}/${r.name}`, r]));
    const inSync = acknowledgedRevisions(entitlements.list());
    const overlaps = foreignOverlaps(output.entitlements, netpols.list(), pods.list());
    for (const policy of policies.list()) {
      const key = objectKey(policy);
      const expiresAt = policy.spec.expiresAt ? Date.parse(policy.spec.expiresAt) : undefined;
      const status = policyStatus(
        policy,
        {
          report: reports.get(key),
          inSync: inSync.get(key) ?? 0,
          applyErrors: errors.get(key) ?? [],
          foreignOverlaps: overlaps.get(key) ?? [],
          expired: expiresAt !== undefined && expiresAt <= now.getTime(),
        },
        now,
      );
      try {
        await writeStatus(writer, R.policies, policy, status);
      } catch (err) {
        if (err instanceof KubeApiError && (err.status === 404 || err.status === 409)) continue; // deleted or newer: next round
        throw err;
      }
    }
  };

  return {
    name: 'policy-reconciler',
    ready: () => true,
    async run(signal, leaderTerm) {
      term = leaderTerm;
      writer = leaderTerm ? fencedClient(client, leaderTerm) : client;
      for (const i of informers) i.start();
      controller = new Controller({
        name: 'agentpolicy',
        reconcile,
        informers: [...informers, entitlements, ...(options.credentials ? [options.credentials.informer] : [])],
        logger,
        registry,
      });
      const inputs = new Set<Informer>([policies, pods, namespaces, services, caBundles] as Informer[]);
      const offs = [...informers, entitlements].map((i) => {
        const changed = inputs.has(i)
          ? (): void => {
              schedulePublish();
              enqueue();
            }
          : enqueue;
        return (i as Informer).on({ add: changed, update: changed, delete: changed });
      });
      // A Secret rotation changes the compiled entitlements (their credential versions): published early too.
      if (options.credentials)
        offs.push(
          options.credentials.onChange(() => {
            schedulePublish();
            enqueue();
          }),
        );
      await controller.start();
      enqueue();
      await untilAborted(signal);
      clearTimeout(publishTimer);
      publishTimer = undefined;
      options.distribution?.withdraw(); // this term's compile is no longer delivered; the record is
      for (const off of offs) off();
      await controller.stop();
      await Promise.all(informers.map((i) => i.stop()));
      controller = undefined;
      term = undefined;
      writer = client;
    },
  };
}
