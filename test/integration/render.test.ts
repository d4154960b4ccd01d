/**
 * `agentfence render` output against the real API server: everything it prints for the examples plus realistic
 * pods and Services is accepted by `kubectl apply`, and ownerReferences point at the real pods.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { run, runOrThrow } from '../support/cluster.ts';

const root = new URL('../../', import.meta.url).pathname;
const examples = join(root, 'examples');
const fixtures = join(root, 'test/fixtures/render/cluster.yaml');
const extraPolicies = join(root, 'test/fixtures/render/policies.yaml');

interface Obj {
  kind: string;
  metadata: { name: string; namespace: string; uid?: string; ownerReferences?: { kind: string; uid: string }[] };
  spec: Record<string, unknown>;
}

function render(args: string[]): { code: number; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [join(root, 'bin/agentfence.mjs'), 'render', ...args], {
    encoding: 'utf8',
  });
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

describe('agentfence render against a real API server', () => {
  let dir: string;
  let rendered: Obj[];
  let pods: Map<string, string>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentfence-render-'));
    // Namespaces and policies first (examples/ carries its namespaces), then the workloads they talk about.
    await runOrThrow(['apply', '-f', examples]);
    await runOrThrow(['apply', '-f', fixtures]);
    // Read the pods and Services back: the API server gave them uids and the Services cluster IPs.
    const live = await runOrThrow([
      'get',
      'pods,services',
      '--all-namespaces',
      '-l',
      'agentfence.io/fixture=render',
      '-o',
      'json',
    ]);
    writeFileSync(join(dir, 'live.json'), live);
    const items = (JSON.parse(live) as { items: Obj[] }).items;
    pods = new Map(
      items
        .filter((i) => i.kind === 'Pod')
        .map((p) => [`${p.metadata.namespace}/${p.metadata.name}`, p.metadata.uid ?? '']),
    );
    const result = render(['-f', examples, '-f', extraPolicies, '-f', join(dir, 'live.json')]);
    expect(result.code, result.stderr).toBe(0);
    rendered = parseAllDocuments(result.stdout).map((d) => d.toJS() as Obj);
    writeFileSync(join(dir, 'rendered.yaml'), result.stdout);
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('opens the callee side of a cross-namespace agents rule only by the callee namespace’s own consenting policy', async () => {
    await runOrThrow(['apply', '-f', join(dir, 'rendered.yaml')]);
    // Nothing in tools is written for the caller's policy...
    const written = await runOrThrow([
      'get',
      'networkpolicies',
      '-n',
      'tools',
      '-l',
      'agentfence.io/policy-namespace',
      '-o',
      'name',
    ]);
    expect(written.trim()).toBe('');
    // ...the callee side is tools' own policy, which admits the planner of namespace agents. The fixture's triage
    // pod carries no sidecar (injected before inbound gates, as far as the compiler can tell), so its app port is
    // opened by the policy's pre-gate NetworkPolicy, which selects only such pods.
    const callee = JSON.parse(
      await runOrThrow([
        'get',
        'networkpolicies',
        '-n',
        'tools',
        '-l',
        'agentfence.io/policy=triage-accepts-planner',
        '-o',
        'json',
      ]),
    ) as { items: Obj[] };
    const opening = callee.items.filter((np) => np.spec.ingress !== undefined);
    expect(opening.map((np) => (np.spec.podSelector as { matchExpressions?: unknown }).matchExpressions)).toEqual([
      [{ key: 'agentfence.io/inbound-gated', operator: 'DoesNotExist' }],
    ]);
    expect(opening[0]?.spec.ingress).toEqual([
      {
        from: [
          {
            namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'agents' } },
            podSelector: { matchLabels: { 'agentfence.io/agent': 'planner', 'agentfence.io/inject': 'true' } },
          },
        ],
        ports: [{ port: 8443, protocol: 'TCP' }],
      },
    ]);
    const caller = JSON.parse(
      await runOrThrow(['get', 'networkpolicy', 'agentfence-planner-to-triage', '-n', 'agents', '-o', 'json']),
    ) as Obj;
    expect(JSON.stringify(caller.spec.egress)).toContain('"kubernetes.io/metadata.name":"tools"');
  });

  it('owns the per-policy NetworkPolicy by the live AgentPolicy when rendered from live objects', async () => {
    const live = await runOrThrow(['get', 'agentpolicies,pods,services', '-n', 'support', '-o', 'json']);
    writeFileSync(join(dir, 'support.json'), live);
    const result = render(['-f', join(dir, 'support.json')]);
    expect(result.code, result.stderr).toBe(0);
    const applied = await run(['apply', '-f', '-'], result.stdout);
    expect(applied.code, applied.stderr).toBe(0);
    const np = JSON.parse(
      await runOrThrow(['get', 'networkpolicy', 'agentfence-support-agent', '-n', 'support', '-o', 'json']),
    ) as Obj;
    const policy = JSON.parse(await runOrThrow(['get', 'ap', 'support-agent', '-n', 'support', '-o', 'json'])) as Obj;
    expect(np.metadata.ownerReferences).toEqual([
      {
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        name: 'support-agent',
        uid: policy.metadata.uid,
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
  });

  it('prints objects the API server accepts with kubectl apply', async () => {
    expect(rendered.filter((o) => o.kind === 'AgentEntitlement').length).toBe(5);
    expect(rendered.filter((o) => o.kind === 'NetworkPolicy').length).toBeGreaterThanOrEqual(11);
    const result = await run(['apply', '-f', join(dir, 'rendered.yaml')]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const listed = await runOrThrow(['get', 'agententitlements,networkpolicies', '--all-namespaces', '-o', 'name']);
    expect(listed).toContain('agententitlement.agentfence.io/support-agent-0');
    expect(listed).toContain('networkpolicy.networking.k8s.io/agentfence-baseline');
  });

  it('owns each entitlement by its real pod and grants the Service cluster IP', async () => {
    await runOrThrow(['apply', '-f', join(dir, 'rendered.yaml')]);
    const ae = JSON.parse(await runOrThrow(['get', 'ae', 'support-agent-0', '-n', 'support', '-o', 'json'])) as Obj;
    expect(ae.metadata.ownerReferences?.[0]).toMatchObject({ kind: 'Pod', uid: pods.get('support/support-agent-0') });
    const svc = JSON.parse(await runOrThrow(['get', 'service', 'orders-api', '-n', 'commerce', '-o', 'json'])) as {
      spec: { clusterIP: string };
    };
    const egress = ae.spec.egress as { rule: string; cidrs?: string[] }[];
    expect(egress.find((r) => r.rule === 'orders-api')?.cidrs).toEqual([`${svc.spec.clusterIP}/32`]);
  });

  it('resolves the named target port per pod version in the stored NetworkPolicy', async () => {
    await runOrThrow(['apply', '-f', join(dir, 'rendered.yaml')]);
    const np = JSON.parse(
      await runOrThrow(['get', 'networkpolicy', 'agentfence-support-agent', '-n', 'support', '-o', 'json']),
    ) as {
      spec: { egress: { to: { podSelector: { matchLabels: Record<string, string> } }[]; ports: { port: number }[] }[] };
    };
    const byPort = np.spec.egress.map((r) => [r.to[0]?.podSelector.matchLabels, r.ports.map((p) => p.port)]);
    expect(byPort).toEqual([
      [{ app: 'orders-api', version: 'v1' }, [8080]],
      [{ app: 'orders-api', version: 'v2' }, [9000]],
      [{ app: 'postgres' }, [5432]],
    ]);
  });
});
