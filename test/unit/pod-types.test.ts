/** One Pod type (lib/kube/pod.ts); every narrower pod shape is derived from it and named for what it is. */
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, expectTypeOf, it } from 'vitest';
import type { Pod } from '../../lib/kube/pod.ts';
import type { IndexedPod } from '../../operator/compiler/cluster-index.ts';
import type { PodInput } from '../../operator/compiler/types.ts';
import type { PodIdentity } from '../../operator/identity/exchange.ts';
import type { AgentPod } from '../../operator/runtime.ts';
import type { Pod as WebhookPod } from '../../webhook/inject.ts';

const root = join(import.meta.dirname, '../..');

function sources(): { path: string; text: string }[] {
  const out: { path: string; text: string }[] = [];
  for (const dir of ['lib', 'operator', 'webhook', 'sidecar', 'cli', 'localcluster', 'bench', 'test']) {
    for (const entry of readdirSync(join(root, dir), { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
      const path = join(entry.parentPath, entry.name);
      out.push({ path: relative(root, path), text: readFileSync(path, 'utf8') });
    }
  }
  return out;
}

describe('pod types', () => {
  it('declares a type named Pod only in lib/kube/pod.ts, and no two things named PodView', () => {
    const declarations = sources().flatMap(({ path, text }) =>
      [...text.matchAll(/^export (?:interface|type) (Pod|PodView)\b/gm)].map((m) => `${path}: ${m[1] ?? ''}`),
    );
    expect(declarations).toEqual([join('lib', 'kube', 'pod.ts') + ': Pod']);
  });

  it('derives the narrow views from the one Pod', () => {
    // The webhook's pod is the Pod; the exchange's view accepts any Pod; the runtime's informer holds them.
    expectTypeOf<WebhookPod>().toEqualTypeOf<Pod>();
    expectTypeOf<Pod>().toExtend<PodIdentity>();
    expectTypeOf<AgentPod>().toExtend<PodIdentity>();
    expectTypeOf<PodInput['metadata']>().toEqualTypeOf<Pod['metadata']>();
    expectTypeOf<IndexedPod['pod']>().toEqualTypeOf<PodInput>();
    // A pod whose spec names a service account and node is a PodIdentity without a cast.
    const pod: Pod = {
      metadata: { name: 'a', namespace: 'n', uid: 'u' },
      spec: { containers: [{ name: 'agent' }], serviceAccountName: 'sa', nodeName: 'node-1' },
    };
    const identity: PodIdentity = pod;
    expect(identity.spec?.nodeName).toBe('node-1');
  });
});
