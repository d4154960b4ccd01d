/**
 * Compiler golden files: each case compiles manifests (test/fixtures/compiler, test/fixtures/render, examples/)
 * at a fixed moment and compares everything the compiler produces (AgentEntitlements, NetworkPolicies,
 * CiliumNetworkPolicies, reports, skipped pods, next expiry) with test/golden/compiler/<case>.yaml, so any change
 * in generated policy shows up as a reviewable diff. UPDATE_GOLDEN=1 rewrites them; a missing one fails.
 */
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { readDocuments } from '../../cli/render.ts';
import { collectManifests } from '../../operator/compiler/documents.ts';
import { compile } from '../../operator/compiler/index.ts';
import type { CompileOptions } from '../../operator/compiler/types.ts';
import { expectGolden } from '../support/golden.ts';

const root = new URL('../../', import.meta.url).pathname;
const goldenDir = `${root}test/golden/compiler/`;
const NOW = new Date('2026-06-01T12:00:00Z');
const CLUSTER = 'test/fixtures/render/cluster.yaml';

interface GoldenCase {
  name: string;
  files: string[];
  options?: Omit<CompileOptions, 'now'>;
}

const CASES: GoldenCase[] = [
  { name: 'single-namespace-isolation', files: ['examples/isolated-agents.yaml', CLUSTER] },
  { name: 'services', files: ['examples/support-agent.yaml', CLUSTER] },
  { name: 'cidrs', files: ['test/fixtures/compiler/cidrs.yaml'] },
  {
    name: 'cross-namespace-consent',
    files: ['test/fixtures/render/policies.yaml', 'examples/mcp-tools-agent.yaml', CLUSTER],
  },
  { name: 'cross-namespace-no-consent', files: ['test/fixtures/compiler/cross-namespace-no-consent.yaml', CLUSTER] },
  { name: 'mcp-tools', files: ['examples/mcp-tools-agent.yaml', CLUSTER] },
  { name: 'expiry', files: ['test/fixtures/compiler/expiry.yaml'] },
  { name: 'tls', files: ['test/fixtures/compiler/tls.yaml'] },
  {
    name: 'agent-to-agent',
    files: ['examples/agent-to-agent.yaml', 'test/fixtures/compiler/agent-to-agent-pods.yaml'],
  },
  { name: 'credentials', files: ['test/fixtures/compiler/credentials.yaml'] },
  { name: 'inbound-mixed-pods', files: ['test/fixtures/compiler/inbound-mixed-pods.yaml'] },
  { name: 'hosts-kubernetes', files: ['examples/research-agent.yaml', CLUSTER] },
  { name: 'cilium', files: ['examples/research-agent.yaml', CLUSTER], options: { networkProvider: 'cilium' } },
];

function render(c: GoldenCase): string {
  const manifests = collectManifests(c.files.flatMap((f) => readDocuments(`${root}${f}`)));
  const out = compile(manifests, { now: NOW, ...c.options });
  return stringify(
    {
      entitlements: out.entitlements,
      networkPolicies: out.networkPolicies,
      ciliumNetworkPolicies: out.ciliumNetworkPolicies,
      reports: out.reports,
      skippedPods: out.skippedPods,
      nextExpiry: out.nextExpiry ?? null,
    },
    { lineWidth: 0, aliasDuplicateObjects: false },
  );
}

describe('compiler golden files', () => {
  it('credentials: the entitlement names Secrets, keys and versions, never a value', () => {
    const text = render({ name: 'credentials', files: ['test/fixtures/compiler/credentials.yaml'] });
    for (const value of ['sk-golden-test-not-a-real-key', 'search-golden-test-key', 'unlabelled-golden-test-key'])
      expect(text).not.toContain(value);
    expect(text).toContain('version: sha256:');
  });

  it.each(CASES.map((c) => [c.name, c] as const))('%s', (name, c) => {
    expectGolden(`${goldenDir}${name}.yaml`, render(c));
  });

  it('has a case for every golden file and every compiler fixture', () => {
    const goldens = readdirSync(goldenDir).map((f) => f.replace(/\.yaml$/, ''));
    expect(goldens.sort()).toEqual(CASES.map((c) => c.name).sort());
    const used = new Set(CASES.flatMap((c) => c.files));
    const fixtures = readdirSync(`${root}test/fixtures/compiler`).map((f) => `test/fixtures/compiler/${f}`);
    expect(fixtures.filter((f) => !used.has(f))).toEqual([]);
  });
});
