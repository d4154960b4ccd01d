/**
 * The RFC 6902 patch from the pod the API server sent to the pod we want. Injection only ever changes these
 * paths, so each one that differs becomes one `add` (which creates or replaces), and one that disappeared a
 * `remove`. Coarse on purpose: whole lists are replaced, so the patch cannot misapply against list indexes.
 */
import { deepEqual } from '../lib/kube/json.ts';
import type { Pod } from './inject.ts';

export interface PatchOperation {
  op: 'add' | 'remove';
  path: string;
  value?: unknown;
}

const PATHS: readonly (readonly string[])[] = [
  ['metadata', 'labels'],
  ['metadata', 'annotations'],
  ['spec', 'initContainers'],
  ['spec', 'containers'],
  ['spec', 'volumes'],
];

function at(obj: unknown, path: readonly string[]): unknown {
  let cur = obj;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

export function podPatch(original: Pod, mutated: Pod): PatchOperation[] {
  const ops: PatchOperation[] = [];
  for (const path of PATHS) {
    const before = at(original, path);
    const after = at(mutated, path);
    if (deepEqual(before, after)) continue;
    const pointer = `/${path.join('/')}`;
    if (after === undefined) ops.push({ op: 'remove', path: pointer });
    else ops.push({ op: 'add', path: pointer, value: after });
  }
  return ops;
}
