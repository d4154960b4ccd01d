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
 */
import type { Registry } from 'prom-client';
import { LABEL_MANAGED_BY, MANAGED_BY, AGENT_POLICY } from '../lib/api/constants.ts';
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
import { compileSelector } from './compiler/selectors.ts';
import type { CompileOptions, CompileOutput, Namespace, NetworkPolicy, PodInput, Service } from './compiler/types.ts';
import { policyStatus } from './policy-status.ts';
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

/** True when every field present in `desired` has the same value in `current` (defaults the server adds are ignored). */
export function isSubset(desired: unknown, current: unknown): boolean {
  if (desired === current) return true;
  if (Array.isArray(desired)) {
    return (
      Array.isArray(current) && desired.length === current.length && desired.every((d, i) => isSubset(d, current[i]))
    );
  }
  if (desired !== null && typeof desired === 'object') {
    if (current === null || typeof current !== 'object' || Array.isArray(current)) return false;
    return Object.entries(desired).every(
      ([k, v]) => v === undefined || isSubset(v, (current as Record<string, unknown>)[k]),
    );
  }
  return false;
}

/** The fields we own on a managed object: labels, annotations, ownerReferences, finalizers and the payload. */
function managedView(obj: KubeObject): Record<string, unknown> {
  const { metadata, ...rest } = obj;
  const view: Record<string, unknown> = { ...rest, metadata: {} };
  const meta = view.metadata as Record<string, unknown>;
  for (const k of ['labels', 'annotations', 'ownerReferences', 'finalizers'] as const)
    if (metadata[k] !== undefined) meta[k] = metadata[k];
  delete view.status;
  delete view.apiVersion;
  delete view.kind;
  return view;
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
  const informers = [policies, pods, namespaces, services, netpols, ...(cilium ? [cilium] : [])];
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
    const output = compile(
      { policies: policies.list(), pods: pods.list(), namespaces: namespaces.list(), services: services.list() },
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
    if (output.nextExpiry) return { requeueAfterMs: Math.max(0, Date.parse(output.nextExpiry) - now.getTime()) + 10 };
    return {};
  };

  /** Applies what differs, deletes what is no longer desired. */
  const converge = async (
    output: CompileOutput,
    fail: (policy: string | undefined, message: string) => void,
  ): Promise<void> => {
    const policyOf = (obj: KubeObject): string | undefined => {
      const owner = obj.metadata.ownerReferences?.find((o) => o.kind === AGENT_POLICY.kind);
      const label = obj.metadata.labels?.['agentfence.io/policy'];
      const ns = obj.metadata.labels?.['agentfence.io/policy-namespace'] ?? obj.metadata.namespace;
      return owner ? `${obj.metadata.namespace ?? ''}/${owner.name}` : label ? `${ns ?? ''}/${label}` : undefined;
    };
    const write = async (
      resource: ResourceRef,
      desired: KubeObject,
      current: KubeObject | undefined,
    ): Promise<void> => {
      if (current && isSubset(managedView(desired), managedView(current))) return;
      try {
        await applyObject(writer, resource, desired);
      } catch (err) {
        if (isLeadershipLoss(err, term?.signal)) throw err;
        const message = `${desired.kind ?? ''} ${objectKey(desired)}: ${err instanceof Error ? err.message : String(err)}`;
        logger.warn('apply failed', { kind: desired.kind, key: objectKey(desired), err });
        fail(policyOf(desired), message);
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
      await prune(R.networkPolicies, np, fail, policyOf(np));
    }
    const wantedAEs = wanted(output.entitlements);
    for (const ae of entitlements.list()) {
      if (ae.metadata.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY || wantedAEs.has(objectKey(ae))) continue;
      await prune(RESOURCES.agentEntitlements, ae, fail, undefined);
    }
    if (cilium) {
      const wantedCnps = wanted(output.ciliumNetworkPolicies);
      for (const cnp of cilium.list())
        if (!wantedCnps.has(objectKey(cnp))) await prune(R.cilium, cnp, fail, policyOf(cnp));
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
    // Acknowledged revisions, per policy: sidecars of pods this policy selects that enforce their current revision.
    const inSync = new Map<string, number>();
    for (const ae of entitlements.list()) {
      if (ae.status?.inSync !== true || ae.status.enforcedRevision !== ae.spec.revision) continue;
      for (const p of ae.spec.policies ?? []) {
        const k = `${ae.metadata.namespace ?? ''}/${p}`;
        inSync.set(k, (inSync.get(k) ?? 0) + 1);
      }
    }
    const overlaps = foreignOverlaps(output);
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

  /** Foreign NetworkPolicies with egress rules that select pods a policy also selects (NetworkPolicies are unions). */
  const foreignOverlaps = (output: CompileOutput): Map<string, string[]> => {
    const result = new Map<string, string[]>();
    const selectedBy = new Map<string, string[]>(); // pod key → policy keys
    for (const ae of output.entitlements) {
      selectedBy.set(
        `${ae.metadata.namespace ?? ''}/${ae.spec.podName}`,
        (ae.spec.policies ?? []).map((p) => `${ae.metadata.namespace ?? ''}/${p}`),
      );
    }
    for (const np of netpols.list()) {
      if (np.metadata.labels?.[LABEL_MANAGED_BY] === MANAGED_BY) continue;
      const hasEgress = np.spec.policyTypes.includes('Egress') && (np.spec.egress?.length ?? 0) > 0;
      if (!hasEgress) continue;
      for (const pod of pods.list()) {
        if (
          pod.metadata.namespace !== np.metadata.namespace ||
          !compileSelector(np.spec.podSelector)(pod.metadata.labels ?? {})
        )
          continue;
        for (const policyKey of selectedBy.get(objectKey(pod)) ?? []) {
          const list = result.get(policyKey) ?? [];
          const name = objectKey(np);
          if (!list.includes(name)) list.push(name);
          result.set(policyKey, list);
        }
      }
    }
    return result;
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
        informers: [...informers, entitlements],
        logger,
        registry,
      });
      const offs = [...informers, entitlements].map((i) =>
        (i as Informer).on({ add: enqueue, update: enqueue, delete: enqueue }),
      );
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

function policyRef(obj: KubeObject): { apiVersion: string; kind: string; name: string; namespace?: string } {
  const owner = obj.metadata.ownerReferences?.[0];
  if (owner)
    return {
      apiVersion: owner.apiVersion,
      kind: owner.kind,
      name: owner.name,
      ...(obj.metadata.namespace ? { namespace: obj.metadata.namespace } : {}),
    };
  return {
    apiVersion: obj.apiVersion ?? '',
    kind: obj.kind ?? '',
    name: obj.metadata.name ?? '',
    ...(obj.metadata.namespace ? { namespace: obj.metadata.namespace } : {}),
  };
}
