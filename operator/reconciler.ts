/**
 * The policy reconciler (leader only). Level-triggered with a single key: every relevant change enqueues
 * "cluster"; a reconcile compiles the whole desired state from the caches (pure, deterministic, fast: see
 * bench/compile.ts) and converges the cluster to it:
 *   - writes (server-side apply, one field manager) only objects whose managed fields differ from the cache;
 *   - deletes managed objects that are no longer desired (uid precondition; never objects we did not create);
 *   - recreates the per-namespace baseline the moment it goes (its deletion is a watch event like any other);
 *     it carries no finalizer, so a controller that is gone (uninstalled, crashed, scaled to zero) never
 *     blocks a namespace's deletion, and the finalizer earlier versions set is removed;
 *   - writes each AgentPolicy's status through /status only when it changed;
 *   - requeues exactly at the next grant expiry.
 * An unchanged world therefore costs one compile and zero writes.
 *
 * One reconcile is four steps; only the I/O ones live here, the rest are pure functions:
 *   1. observe — the informer caches of policies, pods, namespaces, services, NetworkPolicies (this file);
 *   2. compile — desired state and per-policy reports (compiler/compile.ts), foreign NetworkPolicies that
 *      overlap a policy's agents (overlap.ts), acknowledged revisions and the status itself (policy-status.ts);
 *   3. apply — `converge`/`prune` here, writing only what `upToDate` (managed.ts) says differs;
 *   4. report — status writes, foreign-problem log lines and metrics (`writeStatuses`/`reportForeignProblems` here).
 */
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
import { owningPolicy, policyRef, upToDate } from './managed.ts';
import { PROBE_TTL_MS, type CredentialStore } from './credentials.ts';
import { acknowledgedRevisions, policyStatus } from './policy-status.ts';
import { foreignOverlaps } from './overlap.ts';
import { untilAborted, type AgentEntitlementObject, type LeaderTask } from './runtime.ts';
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

  let controller: Controller | undefined;
  const enqueue = (): void => controller?.queue.add(KEY);
  // Every write of a term goes through the fenced client (lease checked before each one, the term's signal on
  // each request); reads and the informers use the plain client.
  let writer: WriteClient = client;
  let term: LeaderTerm | undefined;
  const stillLeading = (): boolean => term?.holds() ?? true;

  const reconcile = async (): Promise<{ requeueAfterMs?: number }> => {
    if (!stillLeading()) throw new LeadershipLostError('reconcile', 'cluster');
    const now = options.now?.() ?? new Date();
    const named = options.credentials
      ? await options.credentials.unlabelled(policies.list())
      : { unlabelled: [], missing: 0 };
    const output = compile(
      {
        policies: policies.list(),
        pods: pods.list(),
        namespaces: namespaces.list(),
        services: services.list(),
        configMaps: caBundles.list(),
        credentialSecrets: options.credentials?.compileInputs() ?? [],
        unlabelledCredentialSecrets: named.unlabelled,
      },
      { ...options.compileOptions, now },
    );
    const errors = new Map<string, string[]>(); // policy key → messages
    const fail = (policyKey: string | undefined, message: string): void => {
      if (!policyKey) return;
      errors.set(policyKey, [...(errors.get(policyKey) ?? []), message]);
    };

    await converge(output, fail);
    await writeStatuses(output, errors, now);
    reportForeignProblems(output);

    managedObjects.set({ kind: 'AgentEntitlement' }, output.entitlements.length);
    managedObjects.set({ kind: 'NetworkPolicy' }, output.networkPolicies.length);
    managedObjects.set({ kind: 'CiliumNetworkPolicy' }, output.ciliumNetworkPolicies.length);
    if (errors.size > 0) throw new Error(`${errors.size} policies could not be fully programmed`);
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
    const write = async (
      resource: ResourceRef,
      desired: KubeObject,
      current: KubeObject | undefined,
    ): Promise<void> => {
      if (upToDate(desired, current)) return;
      try {
        await applyObject(writer, resource, desired);
      } catch (err) {
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
      const offs = [...informers, entitlements].map((i) =>
        (i as Informer).on({ add: enqueue, update: enqueue, delete: enqueue }),
      );
      if (options.credentials) offs.push(options.credentials.onChange(enqueue));
      await controller.start();
      enqueue();
      await untilAborted(signal);
      for (const off of offs) off();
      await controller.stop();
      await Promise.all(informers.map((i) => i.stop()));
      controller = undefined;
      term = undefined;
      writer = client;
    },
  };
}
