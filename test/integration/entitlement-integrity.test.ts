/**
 * The entitlement-integrity ValidatingAdmissionPolicy on the real kube-apiserver: an AgentEntitlement decides
 * which credential Secrets a sidecar receives, so RBAC to write AgentEntitlements must not be enough to write one.
 * Only the controller's identity creates, changes or deletes them; the control plane may delete them (garbage
 * collection when their pod goes). The local control plane's kube-controller-manager runs with the admin
 * credentials (--use-service-account-credentials=false), so here its garbage collection arrives as `admin`.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import { LOCAL_ADMIN_USER } from '../../localcluster/controlplane.ts';
import {
  CONTROL_PLANE_DELETERS,
  ENTITLEMENT_INTEGRITY_RULE,
  entitlementIntegrityBinding,
  entitlementIntegrityPolicy,
} from '../../webhook/manifests.ts';
import { eventually, run, runOrThrow } from '../support/cluster.ts';

const testId = randomBytes(3).toString('hex');
const scope = { 'agentfence-ae-integrity-test': testId };
const policyName = `agentfence-ae-integrity-${testId}`;
const ns = `ae-int-${testId}`;
const controller = `system:serviceaccount:${ns}:ctrl`;
const writer = `system:serviceaccount:${ns}:writer`;
const LOCAL_GC = LOCAL_ADMIN_USER;
const refusal = new RegExp(`\\[${ENTITLEMENT_INTEGRITY_RULE}\\]`);

function entitlement(name: string, extra: { labels?: Record<string, string>; owner?: { name: string; uid: string } }) {
  return JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: {
      name,
      namespace: ns,
      ...(extra.labels ? { labels: extra.labels } : {}),
      ...(extra.owner
        ? {
            ownerReferences: [
              { apiVersion: 'v1', kind: 'Pod', name: extra.owner.name, uid: extra.owner.uid, controller: true },
            ],
          }
        : {}),
    },
    spec: {
      podName: name,
      podUID: extra.owner?.uid ?? '0b7f6c2e-1111-2222-3333-444455556666',
      agent: 'a',
      spiffeID: `spiffe://cluster.local/ns/${ns}/agent/a`,
      revision: 'sha256:abc',
      expiresAt: '2030-01-01T00:00:00Z',
      egress: [],
    },
  });
}

const as = (user: string, args: string[], input?: string) => run([`--as=${user}`, ...args], input);
const managed = { [LABEL_MANAGED_BY]: MANAGED_BY };

async function agentPod(name: string): Promise<string> {
  await runOrThrow(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace: ns },
      spec: { containers: [{ name: 'agent', image: 'registry.example/agent:1' }] },
    }),
  );
  return (await runOrThrow(['get', 'pod', name, '-n', ns, '-o', 'jsonpath={.metadata.uid}'])).trim();
}

beforeAll(async () => {
  await runOrThrow(
    ['apply', '-f', '-'],
    JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: scope } }),
  );
  await runOrThrow(['create', 'serviceaccount', 'ctrl', '-n', ns]);
  await runOrThrow(['create', 'serviceaccount', 'writer', '-n', ns]);
  // Both may write AgentEntitlements (and their status) as far as RBAC is concerned.
  await runOrThrow([
    'create',
    'role',
    'ae-writer',
    '-n',
    ns,
    '--verb=get,list,watch,create,update,patch,delete',
    '--resource=agententitlements.agentfence.io,agententitlements.agentfence.io/status',
  ]);
  await runOrThrow([
    'create',
    'rolebinding',
    'ae-writer',
    '-n',
    ns,
    '--role=ae-writer',
    `--serviceaccount=${ns}:ctrl`,
    `--serviceaccount=${ns}:writer`,
  ]);
});

afterAll(async () => {
  await run(['delete', 'validatingadmissionpolicybinding', policyName, '--ignore-not-found']);
  await run(['delete', 'validatingadmissionpolicy', policyName, '--ignore-not-found']);
  await run(['delete', 'namespace', ns, '--wait=false']);
});

describe('only the controller writes AgentEntitlements', () => {
  it('without the policy, RBAC alone lets any writer create a managed entitlement (the hole)', async () => {
    const res = await as(writer, ['create', '--dry-run=server', '-f', '-'], entitlement('forged', { labels: managed }));
    expect(res.code, res.stderr).toBe(0);
  });

  it('with the policy installed, a writer with RBAC is refused creating one, labelled or not', async () => {
    const policy = { ...entitlementIntegrityPolicy({ controller, deleters: [...CONTROL_PLANE_DELETERS, LOCAL_GC] }) };
    const binding = entitlementIntegrityBinding({ namespaceMatchLabels: scope }) as { spec: object };
    await runOrThrow(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify({ ...policy, metadata: { ...(policy.metadata as object), name: policyName } }),
    );
    await runOrThrow(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify({
        ...binding,
        metadata: { name: policyName },
        spec: { ...binding.spec, policyName },
      }),
    );
    // The API server loads policies asynchronously: wait until the forged create is refused.
    const refused = await eventually(
      async () => {
        const res = await as(
          writer,
          ['create', '--dry-run=server', '-f', '-'],
          entitlement('forged', { labels: managed }),
        );
        return res.code !== 0 ? res.stderr : undefined;
      },
      'entitlement policy active',
      30_000,
    );
    expect(refused).toMatch(refusal);
    expect(refused).toContain(controller);
    const unlabelled = await as(writer, ['create', '-f', '-'], entitlement('forged2', {}));
    expect(unlabelled.code).not.toBe(0);
    expect(unlabelled.stderr).toMatch(refusal);
    // No exception for cluster admins either.
    const admin = await run(['create', '-f', '-'], entitlement('forged3', { labels: managed }));
    expect(admin.code).not.toBe(0);
    expect(admin.stderr).toMatch(refusal);
    expect((await run(['get', 'agententitlements', '-n', ns, '-o', 'name'])).stdout.trim()).toBe('');
  });

  it("refuses edits, status writes and deletion of the controller's entitlement; the controller may do all", async () => {
    const uid = await agentPod('agent-1');
    const made = await as(
      controller,
      ['create', '-f', '-'],
      entitlement('agent-1', { labels: managed, owner: { name: 'agent-1', uid } }),
    );
    expect(made.code, made.stderr).toBe(0);
    const attempts: string[][] = [
      ['patch', 'agententitlement', 'agent-1', '-n', ns, '--type=merge', '-p', '{"spec":{"agent":"b"}}'],
      ['label', 'agententitlement', 'agent-1', '-n', ns, 'extra=1'],
      [
        'patch',
        'agententitlement',
        'agent-1',
        '-n',
        ns,
        '--subresource=status',
        '--type=merge',
        '-p',
        '{"status":{"enforcedRevision":"sha256:abc"}}',
      ],
      ['delete', 'agententitlement', 'agent-1', '-n', ns],
    ];
    for (const args of attempts) {
      const res = await as(writer, args);
      expect(res.code, args.join(' ')).not.toBe(0);
      expect(res.stderr, args.join(' ')).toMatch(refusal);
    }
    // The cluster admin's identity may delete here (it is this control plane's garbage collector) but not edit.
    const adminEdit = await run(attempts[0] ?? []);
    expect(adminEdit.code).not.toBe(0);
    expect(adminEdit.stderr).toMatch(refusal);
    const spec = await runOrThrow(['get', 'agententitlement', 'agent-1', '-n', ns, '-o', 'jsonpath={.spec.agent}']);
    expect(spec).toBe('a');
    // The controller edits, writes status (the sidecar's acknowledgement path) and deletes.
    for (const args of attempts) {
      const res = await as(controller, args);
      expect(res.code, `${args.join(' ')}: ${res.stderr}`).toBe(0);
    }
  });

  it('deleting the pod still garbage-collects its entitlement', async () => {
    const uid = await agentPod('agent-2');
    const made = await as(
      controller,
      ['create', '-f', '-'],
      entitlement('agent-2', { labels: managed, owner: { name: 'agent-2', uid } }),
    );
    expect(made.code, made.stderr).toBe(0);
    await runOrThrow(['delete', 'pod', 'agent-2', '-n', ns, '--wait=false']);
    await eventually(
      async () => ((await run(['get', 'agententitlement', 'agent-2', '-n', ns])).code !== 0 ? true : undefined),
      'entitlement garbage-collected',
      30_000,
    );
  });
});
