/** `agentfence render` and the manifest reader behind it: workloads to pods, CRD-schema validation, errors. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { loadRenderConfig, renderCommand } from '../../cli/render.ts';
import { agentPolicySpec } from '../../lib/api/schema.ts';
import { validateSchema } from '../../lib/api/validate.ts';

const root = new URL('../../', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'agentfence-render-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function render(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await renderCommand({ argv, env: {}, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('agentfence render', () => {
  it('synthesizes pods from workload templates and prints entitlements and NetworkPolicies', async () => {
    const out = await render(['-f', join(root, 'examples'), '-f', join(root, 'test/fixtures/render/workloads.yaml')]);
    expect(out.code).toBe(0);
    const docs = parseAllDocuments(out.stdout).map(
      (d) => d.toJS() as { kind: string; metadata: { name: string; namespace: string }; spec: Record<string, unknown> },
    );
    const entitlements = docs.filter((d) => d.kind === 'AgentEntitlement');
    expect(entitlements.map((e) => `${e.metadata.namespace}/${e.metadata.name}`)).toEqual([
      'agents/nightly-coder',
      'agents/planner',
    ]);
    const planner = entitlements.find((e) => e.metadata.name === 'planner');
    expect(planner?.spec).toMatchObject({
      agent: 'planner',
      serviceAccountName: 'planner',
      podUID: '',
      policies: ['planner'],
    });
    expect(
      docs.filter((d) => d.kind === 'NetworkPolicy').map((d) => `${d.metadata.namespace}/${d.metadata.name}`),
    ).toContain('agents/agentfence-baseline');
    // Problems the operator would put in status go to stderr, never into the YAML stream.
    expect(out.stderr).toContain('agents/planner rule llm-api: FQDNNotEnforcedAtL3');
    expect(out.stdout).not.toContain('FQDNNotEnforcedAtL3');
  });

  it('adds CiliumNetworkPolicies with --network-provider cilium and uses the trust domain', async () => {
    const out = await render([
      '-f',
      join(root, 'examples'),
      '-f',
      join(root, 'test/fixtures/render/workloads.yaml'),
      '--network-provider',
      'cilium',
      '--trust-domain',
      'prod.example',
    ]);
    expect(out.stdout).toContain('kind: CiliumNetworkPolicy');
    expect(out.stdout).toContain('matchName: api.anthropic.com');
    expect(out.stdout).toContain('spiffe://prod.example/ns/agents/agent/planner');
  });

  it('refuses invalid policies naming file, document index and field, and prints nothing', async () => {
    const bad = file(
      'bad.yaml',
      `apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: agentfence.io/v1alpha1
kind: AgentPolicy
metadata: {name: p, namespace: x}
spec:
  agentSelector: {}
  mode: Permissive
  egress:
    - name: r
      to: {hosts: [a.example.com], cidrs: [10.0.0.0/8]}
      ports: [{port: "443"}]
`,
    );
    let stdout = '';
    const run = renderCommand({ argv: ['-f', bad], env: {}, stdout: (t) => (stdout += t), stderr: () => undefined });
    await expect(run).rejects.toThrow(
      `${bad}: document 1 (AgentPolicy): spec.agentSelector: agentSelector must not be empty`,
    );
    await expect(
      renderCommand({ argv: ['-f', bad], env: {}, stdout: () => undefined, stderr: () => undefined }),
    ).rejects.toThrow(
      /spec\.mode: unsupported value "Permissive"[\s\S]*spec\.egress\[0\]\.to: to must name exactly one of hosts, services, agents or cidrs[\s\S]*spec\.egress\[0\]\.ports\[0\]\.port: must be of type integer \(got string\)/,
    );
    expect(stdout).toBe('');
  });

  it('exits non-zero with the error on stderr and an empty stdout from the real CLI', () => {
    const bad = file(
      'broken.yaml',
      'kind: AgentPolicy\napiVersion: agentfence.io/v1alpha1\nmetadata: {name: p}\n---\n{not: [closed\n',
    );
    const result = spawnSync(process.execPath, [join(root, 'bin/agentfence.mjs'), 'render', '-f', bad], {
      encoding: 'utf8',
    });
    expect(result.status).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain(`${bad}: document 1`);
  });

  it('refuses bad flags in the config loader', () => {
    expect(() => loadRenderConfig([], new Date())).toThrow('at least one -f');
    expect(() => loadRenderConfig(['-f', root, '--network-provider', 'calico'], new Date())).toThrow(
      'kubernetes or cilium',
    );
    expect(() => loadRenderConfig(['-f', join(dir, 'missing.yaml')], new Date())).toThrow('no such file');
    const config = loadRenderConfig(['-f', join(root, 'examples'), '--dns-address', '169.254.20.10'], new Date(0));
    expect(config).toMatchObject({
      dns: { kind: 'addresses', addresses: ['169.254.20.10'] },
      networkProvider: 'kubernetes',
      trustDomain: 'cluster.local',
    });
    expect(config !== 'help' && config.files.every((f) => f.endsWith('.yaml'))).toBe(true);
  });
  it('compiles with the chart defaults: the baseline lets agents reach the chart controller pods and port', () => {
    const chart = readFileSync(join(root, 'charts/agentfence/templates/deployment.yaml'), 'utf8');
    const config = loadRenderConfig(
      ['-f', join(root, 'examples'), '--values', join(root, 'charts/agentfence/values.yaml')],
      new Date(0),
    );
    if (config === 'help') throw new Error('help');
    expect(config.operator.namespace).toBe('agentfence-system');
    expect(config.operator.podLabels).toEqual({
      'app.kubernetes.io/name': 'agentfence',
      'app.kubernetes.io/component': 'controller',
    });
    expect(chart).toContain(`containerPort: ${config.operator.port}`);
    expect(config).toMatchObject({ trustDomain: 'cluster.local', networkProvider: 'kubernetes' });
    expect(config.dns).toBeUndefined(); // kube-dns pods
  });

  it('takes the install values (--values) and the release namespace, flags override values', () => {
    const values = file(
      'values.yaml',
      'trustDomain: prod.example\nnetworkProvider: cilium\ndns: {mode: node-local, nodeLocalIP: 169.254.20.10}\ncontroller: {replicas: 3}\n',
    );
    const config = loadRenderConfig(
      ['-f', join(root, 'examples'), '--values', values, '--namespace', 'fence'],
      new Date(0),
    );
    expect(config).toMatchObject({
      trustDomain: 'prod.example',
      networkProvider: 'cilium',
      dns: { kind: 'addresses', addresses: ['169.254.20.10'] },
      operator: { namespace: 'fence', port: 8443 },
    });
    const overridden = loadRenderConfig(
      ['-f', join(root, 'examples'), '--values', values, '--network-provider', 'kubernetes'],
      new Date(0),
    );
    expect(overridden).toMatchObject({ networkProvider: 'kubernetes', trustDomain: 'prod.example' });
    const bad = file('bad-values.yaml', 'dns: {mode: node-local}\n');
    expect(() => loadRenderConfig(['-f', root, '--values', bad], new Date(0))).toThrow('dns.nodeLocalIP');
    const wrong = file('wrong-values.yaml', 'trustDomain: [a]\n');
    expect(() => loadRenderConfig(['-f', root, '--values', wrong], new Date(0))).toThrow(
      'trustDomain must be a string',
    );
  });
});

describe('validateSchema over the CRD schema', () => {
  const selector = { matchLabels: { 'agentfence.io/agent': 'a' } };
  it('accepts a full valid spec', () => {
    const spec = {
      agentSelector: selector,
      mode: 'Audit',
      tokenTTL: '2m',
      expiresAt: '2030-01-01T00:00:00Z',
      egress: [
        { name: 'r', to: { services: [{ name: 'db', namespace: 'x' }] }, ports: [{ port: 5432, protocol: 'TCP' }] },
      ],
      ingress: [{ name: 'i', from: { pods: { podSelector: {} } }, ports: [{ port: 80 }] }],
    };
    expect(validateSchema(agentPolicySpec, spec, 'spec')).toEqual([]);
  });

  it.each([
    [{}, 'spec.agentSelector', 'Required value'],
    [{ agentSelector: selector, egres: [] }, 'spec.egres', 'unknown field "spec.egres"'],
    [
      { agentSelector: selector, egress: [{ name: 'r', to: {}, ports: [{ port: 1 }] }] },
      'spec.egress[0].to',
      'exactly one of hosts, services, agents or cidrs',
    ],
    [
      { agentSelector: selector, egress: [{ name: 'r', to: { cidrs: ['10.0.0.0/8'] }, ports: [{ port: 70000 }] }] },
      'spec.egress[0].ports[0].port',
      'less than or equal to 65535',
    ],
    [
      { agentSelector: selector, egress: [{ name: 'r', to: { cidrs: ['10.0.0.0/8'] }, ports: [] }] },
      'spec.egress[0].ports',
      'at least 1 items',
    ],
    [
      {
        agentSelector: selector,
        ingress: [{ name: 'i', from: { cidrs: ['10.0.0.0/8'], pods: { podSelector: {} } }, ports: [{ port: 1 }] }],
      },
      'spec.ingress[0].from',
      'exactly one of agents, users, pods or cidrs',
    ],
    [
      {
        agentSelector: selector,
        egress: [
          { name: 'r', to: { cidrs: ['1.0.0.0/8'] }, ports: [{ port: 1 }] },
          { name: 'r', to: { cidrs: ['1.0.0.0/8'] }, ports: [{ port: 1 }] },
        ],
      },
      'spec.egress[1]',
      'duplicate entry',
    ],
    [{ agentSelector: selector, expiresAt: 'tomorrow' }, 'spec.expiresAt', 'RFC 3339'],
  ])('refuses %j at %s', (spec, path, message) => {
    const errors = validateSchema(agentPolicySpec, spec, 'spec');
    expect(errors.find((e) => e.path === path)?.message).toContain(message);
  });
});
