/**
 * Writes with the semantics the architecture fixes: server-side apply under one field manager for objects we own,
 * status only through the /status subresource and only when it changed, deletes guarded by a uid precondition so
 * we never delete a same-named successor of the object we meant.
 */
import {
  CONTENT_TYPE,
  isNotFound,
  resourcePath,
  type KubeObject,
  type WriteClient,
  type ResourceRef,
} from './client.ts';
import { deepEqual, mergePatch } from './json.ts';

export const FIELD_MANAGER = 'agentfence';

export interface ApplyOptions {
  fieldManager?: string;
  /** Take ownership of conflicting fields from other managers; on by default for the objects we own. */
  force?: boolean;
  dryRun?: boolean;
}

/**
 * Server-side apply: sends the fully specified intent (apiVersion, kind, name, namespace and every field we
 * manage); fields we stop sending are removed when no other manager owns them. Returns the object as stored.
 */
export function applyObject<T extends KubeObject>(
  client: WriteClient,
  resource: ResourceRef,
  intent: T,
  options: ApplyOptions = {},
): Promise<T> {
  const { name, namespace } = intent.metadata;
  if (!name) throw new Error('applyObject: metadata.name is required');
  if (!intent.apiVersion || !intent.kind) throw new Error('applyObject: apiVersion and kind are required');
  return client.request<T>('PATCH', resourcePath(resource, { namespace, name }), {
    // SSA accepts JSON as the YAML body; JSON keeps our serialisation exact.
    contentType: CONTENT_TYPE.apply,
    body: intent,
    query: {
      fieldManager: options.fieldManager ?? FIELD_MANAGER,
      force: options.force ?? true,
      ...(options.dryRun ? { dryRun: 'All' } : {}),
    },
  });
}

export interface StatusWriteResult<T> {
  /** False when the status was already as desired and no request was sent. */
  written: boolean;
  object: T;
}

/**
 * Makes `current.status` equal to `status` via a merge patch on /status, or sends nothing when they are already
 * equal. The patch carries current's resourceVersion: a status computed from a stale object fails with 409
 * (retry with fresh state) instead of silently overwriting a newer one.
 */
export async function writeStatus<T extends KubeObject>(
  client: WriteClient,
  resource: ResourceRef,
  current: T,
  status: unknown,
): Promise<StatusWriteResult<T>> {
  if (deepEqual(current.status, status)) return { written: false, object: current };
  const { name, namespace, resourceVersion } = current.metadata;
  const diff = mergePatch(current.status ?? {}, status) ?? {};
  const object = await client.request<T>('PATCH', resourcePath(resource, { namespace, name, subresource: 'status' }), {
    contentType: CONTENT_TYPE.mergePatch,
    body: { metadata: { resourceVersion }, status: current.status === undefined ? status : diff },
  });
  return { written: true, object };
}

export interface DeleteOptions {
  /** Only delete the object with this uid (not a later one with the same name). */
  uid?: string;
  resourceVersion?: string;
  propagationPolicy?: 'Background' | 'Foreground' | 'Orphan';
}

/** Deletes with preconditions; returns false when the object was already gone. A failed precondition is a 409. */
export async function deleteObject(
  client: WriteClient,
  resource: ResourceRef,
  where: { namespace?: string; name: string },
  options: DeleteOptions = {},
): Promise<boolean> {
  const preconditions: Record<string, string> = {};
  if (options.uid) preconditions.uid = options.uid;
  if (options.resourceVersion) preconditions.resourceVersion = options.resourceVersion;
  try {
    await client.request('DELETE', resourcePath(resource, where), {
      body: {
        apiVersion: 'v1',
        kind: 'DeleteOptions',
        propagationPolicy: options.propagationPolicy ?? 'Background',
        ...(Object.keys(preconditions).length > 0 ? { preconditions } : {}),
      },
    });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}
