/**
 * Property test of the compiler's revision: for random policy sets (same-named policies in several namespaces,
 * overlapping selectors) and random edits, a pod's `spec.revision` changes if and only if the rest of its compiled
 * entitlement changes. The generator is a seeded PRNG, so a failing seed reproduces exactly.
 */
import { describe, expect, it } from 'vitest';
import type { AgentEntitlement, AgentPolicy, EgressRule } from '../../lib/api/types.generated.ts';
import { canonicalJSON } from '../../operator/compiler/canonical.ts';
import { compile } from '../../operator/compiler/compile.ts';
import { entitlementRevision } from '../../operator/compiler/entitlement.ts';
import type { PodInput } from '../../operator/compiler/types.ts';
import { NOW, agentPod, namespace, policy } from '../support/compiler-fixtures.ts';

/** mulberry32: small, seedable, good enough to drive a generator. */
function prng(seed: number): { int(n: number): number; pick<T>(xs: readonly T[]): T; chance(p: number): boolean } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int: (n) => Math.floor(next() * n),
    pick: (xs) => xs[Math.floor(next() * xs.length)] as (typeof xs)[number],
    chance: (p) => next() < p,
  };
}

type Rng = ReturnType<typeof prng>;

const NAMESPACES = ['team-a', 'team-b', 'team-c'];
const POLICY_NAMES = ['agent-egress', 'shared', 'orders']; // the same names in every namespace
const AGENTS = ['alpha', 'beta', 'gamma'];
const HOSTS = ['api.example.com', 'orders.example.com', '*.llm.example.net', 'docs.example.org'];
const CIDRS = ['203.0.113.0/24', '198.51.100.7/32', '10.20.0.0/16'];

function randomRule(rng: Rng, name: string): EgressRule {
  const port = rng.pick([80, 443, 8080, 5432]);
  const to = rng.chance(0.6) ? { hosts: [rng.pick(HOSTS)] } : { cidrs: [rng.pick(CIDRS)] };
  return {
    name,
    to,
    ports: [{ port }],
    ...(rng.chance(0.4)
      ? { http: [{ methods: [rng.pick(['GET', 'POST'])], paths: [{ type: 'PathPrefix', value: `/v${rng.int(3)}/` }] }] }
      : {}),
    ...(rng.chance(0.3) ? { audience: `aud-${rng.int(3)}` } : {}),
  };
}

function randomPolicy(rng: Rng, ns: string, name: string): AgentPolicy {
  const rules = Array.from({ length: 1 + rng.int(3) }, (_, i) => randomRule(rng, `r${i}`));
  return policy(ns, name, {
    agent: rng.pick(AGENTS),
    egress: rules,
    ...(rng.chance(0.3) ? { mode: 'Audit' as const } : {}),
    ...(rng.chance(0.3) ? { tokenTTL: rng.pick(['1m', '5m', '10m']) } : {}),
  });
}

interface World {
  policies: AgentPolicy[];
  pods: PodInput[];
}

function randomWorld(rng: Rng): World {
  const policies: AgentPolicy[] = [];
  for (const ns of NAMESPACES)
    for (const name of POLICY_NAMES) if (rng.chance(0.7)) policies.push(randomPolicy(rng, ns, name));
  const pods: PodInput[] = [];
  for (const ns of NAMESPACES)
    for (let i = 0; i < 4; i++) pods.push(agentPod(ns, `pod-${i}`, rng.pick(AGENTS), { ip: `10.9.${pods.length}.1` }));
  return { policies, pods };
}

/** One random edit, of a kind that may or may not change what some pods are granted. */
function edit(rng: Rng, world: World): World {
  const policies = world.policies.map((p) => structuredClone(p));
  const target = policies.length > 0 ? rng.pick(policies) : undefined;
  switch (rng.int(8)) {
    case 0: // revoke one rule
      if (target && (target.spec.egress?.length ?? 0) > 0)
        target.spec.egress?.splice(rng.int(target.spec.egress.length), 1);
      break;
    case 1: // add a rule
      target?.spec.egress?.push(randomRule(rng, `n${rng.int(1000)}`));
      break;
    case 2: // change a port
      if (target?.spec.egress?.[0]?.ports[0]) target.spec.egress[0].ports[0].port = rng.pick([80, 443, 8080, 9090]);
      break;
    case 3: // change which agents it selects
      if (target) target.spec.agentSelector = { matchLabels: { 'agentfence.io/agent': rng.pick(AGENTS) } };
      break;
    case 4: // delete a policy
      if (target) policies.splice(policies.indexOf(target), 1);
      break;
    case 5: // a same-named policy appears in another namespace
      policies.push(randomPolicy(rng, rng.pick(NAMESPACES), rng.pick(POLICY_NAMES)));
      break;
    case 6: // mode or token lifetime
      if (target) {
        if (rng.chance(0.5)) target.spec.mode = target.spec.mode === 'Audit' ? 'Enforce' : 'Audit';
        else target.spec.tokenTTL = rng.pick(['1m', '5m', '10m']);
      }
      break;
    default: // a no-op rewrite: same content, new object
      break;
  }
  // Keep at most one policy per namespace/name (the API server would).
  const unique = new Map(policies.map((p) => [`${p.metadata.namespace}/${p.metadata.name}`, p]));
  return { policies: [...unique.values()], pods: world.pods };
}

function compileWorld(world: World): Map<string, AgentEntitlement> {
  const out = compile(
    { policies: world.policies, pods: world.pods, namespaces: NAMESPACES.map((n) => namespace(n)), services: [] },
    { now: NOW },
  );
  for (const ae of out.entitlements) {
    // The compiler's memoized digest agrees with the one definition, computed from the spec alone.
    if (ae.spec.revision !== entitlementRevision(ae.spec))
      throw new Error(`memoized revision differs for ${ae.metadata.name}`);
  }
  return new Map(out.entitlements.map((ae) => [`${ae.metadata.namespace}/${ae.metadata.name}`, ae]));
}

/** Everything the pod is granted: the compiled entitlement without its revision. */
function content(ae: AgentEntitlement): string {
  const spec: Partial<AgentEntitlement['spec']> = { ...ae.spec };
  delete spec.revision;
  return canonicalJSON({ metadata: ae.metadata, spec });
}

describe('entitlement revision (property)', () => {
  it(
    'changes if and only if the pod’s compiled entitlement changes, across 150 random worlds and edit chains',
    { timeout: 60_000 },
    () => {
      let changedPods = 0;
      let unchangedPods = 0;
      for (let seed = 1; seed <= 150; seed++) {
        const rng = prng(seed);
        let world = randomWorld(rng);
        let before = compileWorld(world);
        for (let step = 0; step < 6; step++) {
          world = edit(rng, world);
          const after = compileWorld(world);
          for (const [key, ae] of after) {
            const old = before.get(key);
            if (!old) continue;
            const contentChanged = content(old) !== content(ae);
            const revisionChanged = old.spec.revision !== ae.spec.revision;
            if (contentChanged !== revisionChanged) {
              throw new Error(
                `seed ${seed} step ${step} pod ${key}: content ${contentChanged ? 'changed' : 'unchanged'} but revision ${
                  revisionChanged ? 'changed' : 'unchanged'
                }`,
              );
            }
            if (contentChanged) changedPods++;
            else unchangedPods++;
          }
          before = after;
        }
      }
      // The generator exercises both sides of the "iff".
      expect(changedPods).toBeGreaterThan(200);
      expect(unchangedPods).toBeGreaterThan(200);
    },
  );

  it(
    'is a pure function of the pod’s own entitlement: a fresh compile of the same world gives the same revisions',
    { timeout: 60_000 },
    () => {
      for (let seed = 1000; seed < 1100; seed++) {
        const world = randomWorld(prng(seed));
        const a = compileWorld(world);
        // The same world with every other namespace's policies removed: this pod's revision must not move.
        for (const ns of NAMESPACES) {
          const alone = compileWorld({
            policies: world.policies.filter((p) => p.metadata.namespace === ns),
            pods: world.pods,
          });
          for (const [key, ae] of alone) {
            if (!key.startsWith(`${ns}/`)) continue;
            expect(ae.spec.revision, `seed ${seed} pod ${key}`).toBe(a.get(key)?.spec.revision);
          }
        }
      }
    },
  );

  it('differs for two namespaces whose same-named policies grant different things', () => {
    const world: World = {
      policies: [
        policy('team-a', 'agent-egress', { agent: 'alpha', egress: [randomRule(prng(1), 'orders')] }),
        policy('team-b', 'agent-egress', { agent: 'alpha', egress: [] }),
      ],
      pods: [
        agentPod('team-a', 'p', 'alpha', { ip: '10.0.0.1' }),
        agentPod('team-b', 'p', 'alpha', { ip: '10.0.0.2' }),
      ],
    };
    const out = compileWorld(world);
    expect(out.get('team-a/p')?.spec.egress).toHaveLength(1);
    expect(out.get('team-b/p')?.spec.egress).toHaveLength(0);
    expect(out.get('team-a/p')?.spec.revision).not.toBe(out.get('team-b/p')?.spec.revision);
  });
});
