/**
 * Pure helpers about the objects the reconciler manages: which fields it owns, whether the cached object
 * already carries the desired ones (so an unchanged world costs no write), and which AgentPolicy an object
 * belongs to (for status errors and Events).
 */
import { AGENT_POLICY } from '../lib/api/constants.ts';
import type { KubeObject } from '../lib/kube/client.ts';

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
export function managedView(obj: KubeObject): Record<string, unknown> {
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

/** True when the cached object already carries every field of the desired one that we own. */
export function upToDate(desired: KubeObject, current: KubeObject | undefined): boolean {
  return current !== undefined && isSubset(managedView(desired), managedView(current));
}

/**
 * The newer of two copies of one object by resourceVersion (etcd's revision, a decimal integer): the informer's
 * copy and the one our own last write returned. The cache lags our writes, and a reconcile that started before
 * it caught up would otherwise write the same content again (a no-op on the server that still costs a request).
 * Undefined when they cannot be compared (or the cache has none): the caller then writes.
 */
export function newerCopy<T extends KubeObject>(cached: T | undefined, written: T | undefined): T | undefined {
  if (!written) return cached;
  // Absent from the cache: not observed yet, or deleted since; only a write can tell.
  if (!cached) return undefined;
  const a = cached.metadata.resourceVersion ?? '';
  const b = written.metadata.resourceVersion ?? '';
  if (!/^\d{1,30}$/.test(a) || !/^\d{1,30}$/.test(b)) return undefined;
  return BigInt(b) > BigInt(a) ? written : cached;
}

/** The key (namespace/name) of the AgentPolicy a managed object belongs to: its owner, else its policy labels. */
export function owningPolicy(obj: KubeObject): string | undefined {
  const owner = obj.metadata.ownerReferences?.find((o) => o.kind === AGENT_POLICY.kind);
  const label = obj.metadata.labels?.['agentfence.io/policy'];
  const ns = obj.metadata.labels?.['agentfence.io/policy-namespace'] ?? obj.metadata.namespace;
  return owner ? `${obj.metadata.namespace ?? ''}/${owner.name}` : label ? `${ns ?? ''}/${label}` : undefined;
}

/** The object an Event about a failed apply is recorded on: the owner when there is one, else the object itself. */
export function policyRef(obj: KubeObject): { apiVersion: string; kind: string; name: string; namespace?: string } {
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
