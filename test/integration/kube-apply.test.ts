/**
 * Writes against the real API server: server-side apply is idempotent and wins conflicts it forces, the status
 * writer sends nothing when nothing changed, guarded deletes refuse a same-named successor, and API errors carry
 * the server's status code and message.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { API_VERSION, AGENT_POLICY, GROUP, VERSION } from '../../lib/api/constants.ts';
import { applyObject, deleteObject, writeStatus } from '../../lib/kube/apply.ts';
import {
  clientFromKubeconfig,
  isConflict,
  KubeApiError,
  type KubeClient,
  type KubeObject,
} from '../../lib/kube/client.ts';
import { setCondition, type Condition } from '../../lib/kube/conditions.ts';
import { cluster, createNamespace } from '../support/cluster.ts';

const CONFIGMAPS = { group: '', version: 'v1', resource: 'configmaps' };
const POLICIES = { group: GROUP, version: VERSION, resource: AGENT_POLICY.plural };

interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
}
interface Policy extends KubeObject {
  status?: { observedGeneration?: number; conditions?: Condition[] };
}

let client: KubeClient;
let ns: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('kube-apply');
});

afterAll(() => client.close());

const cm = (name: string, data: Record<string, string>): ConfigMap => ({
  apiVersion: 'v1',
  kind: 'ConfigMap',
  metadata: { name, namespace: ns, labels: { 'app.kubernetes.io/managed-by': 'agentfence' } },
  data,
});

describe('server-side apply', () => {
  it('creates, then re-applying the same intent changes nothing (same resourceVersion)', async () => {
    const created = await applyObject(client, CONFIGMAPS, cm('idem', { a: '1' }));
    expect(created.metadata.uid).toBeTruthy();
    const again = await applyObject(client, CONFIGMAPS, cm('idem', { a: '1' }));
    expect(again.metadata.resourceVersion).toBe(created.metadata.resourceVersion);
    const changed = await applyObject(client, CONFIGMAPS, cm('idem', { a: '2' }));
    expect(changed.metadata.resourceVersion).not.toBe(created.metadata.resourceVersion);
    expect(changed.data).toEqual({ a: '2' });
  });

  it('takes back a field another manager changed, and removes fields it no longer sends', async () => {
    await applyObject(client, CONFIGMAPS, cm('conflict', { owned: 'ours', dropped: 'x' }));
    await applyObject(client, CONFIGMAPS, cm('conflict', { owned: 'theirs' }), {
      fieldManager: 'intruder',
      force: false,
    }).then(
      () => {
        throw new Error('a conflicting apply without force must fail');
      },
      (err: unknown) => expect(isConflict(err)).toBe(true),
    );
    await applyObject(client, CONFIGMAPS, cm('conflict', { owned: 'theirs' }), {
      fieldManager: 'intruder',
      force: true,
    });
    const reverted = await applyObject(client, CONFIGMAPS, cm('conflict', { owned: 'ours' }));
    expect(reverted.data).toEqual({ owned: 'ours' });
    const managers = (reverted.metadata as { managedFields?: { manager: string }[] }).managedFields?.map(
      (f) => f.manager,
    );
    expect(managers).toContain('agentfence');
  });

  it('reports API errors with the status code and the server message', async () => {
    const err = await client.get(`/api/v1/namespaces/${ns}/configmaps/missing`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KubeApiError);
    expect((err as KubeApiError).status).toBe(404);
    expect((err as KubeApiError).message).toBe('configmaps "missing" not found');
  });
});

describe('status writer', () => {
  it('patches /status only when the status changed', async () => {
    const policy = await applyObject<Policy>(client, POLICIES, {
      apiVersion: API_VERSION,
      kind: AGENT_POLICY.kind,
      metadata: { name: 'p', namespace: ns },
      spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'a' } } },
    });
    const status = (reason: string) => ({
      observedGeneration: policy.metadata.generation ?? 0,
      conditions: setCondition([], { type: 'Ready', status: 'True', reason, message: 'ok' }),
    });
    const first = await writeStatus(client, POLICIES, policy, status('Reconciled'));
    expect(first.written).toBe(true);
    expect(first.object.status?.conditions?.[0]?.reason).toBe('Reconciled');

    const unchanged = await writeStatus(client, POLICIES, first.object, structuredClone(first.object.status));
    expect(unchanged.written).toBe(false);
    const fresh = await client.get<Policy>(`/apis/${GROUP}/${VERSION}/namespaces/${ns}/agentpolicies/p`);
    expect(fresh.metadata.resourceVersion).toBe(first.object.metadata.resourceVersion);

    const changed = await writeStatus(client, POLICIES, fresh, { conditions: status('Changed').conditions });
    expect(changed.written).toBe(true);
    expect(changed.object.metadata.resourceVersion).not.toBe(fresh.metadata.resourceVersion);
    expect(changed.object.status?.conditions?.[0]?.reason).toBe('Changed');
    // Fields left out of the desired status are removed, not merged.
    expect(changed.object.status?.observedGeneration).toBeUndefined();
    // The spec is untouched by a status write.
    expect(changed.object.metadata.generation).toBe(policy.metadata.generation);
  });

  it('refuses to write a status computed from a stale object', async () => {
    const stale = await client.get<Policy>(`/apis/${GROUP}/${VERSION}/namespaces/${ns}/agentpolicies/p`);
    await writeStatus(client, POLICIES, stale, { observedGeneration: 7 });
    const err = await writeStatus(client, POLICIES, stale, { observedGeneration: 8 }).catch((e: unknown) => e);
    expect(isConflict(err)).toBe(true);
  });
});

describe('guarded delete', () => {
  it('deletes only the object with the expected uid', async () => {
    const first = await applyObject(client, CONFIGMAPS, cm('guarded', { v: '1' }));
    expect(
      await deleteObject(client, CONFIGMAPS, { namespace: ns, name: 'guarded' }, { uid: first.metadata.uid ?? '' }),
    ).toBe(true);
    const successor = await applyObject(client, CONFIGMAPS, cm('guarded', { v: '2' }));
    const err = await deleteObject(
      client,
      CONFIGMAPS,
      { namespace: ns, name: 'guarded' },
      { uid: first.metadata.uid ?? '' },
    ).catch((e: unknown) => e);
    expect(isConflict(err)).toBe(true);
    expect(await client.get<ConfigMap>(`/api/v1/namespaces/${ns}/configmaps/guarded`)).toMatchObject({
      metadata: { uid: successor.metadata.uid },
    });
    await deleteObject(client, CONFIGMAPS, { namespace: ns, name: 'guarded' }, { uid: successor.metadata.uid ?? '' });
    expect(await deleteObject(client, CONFIGMAPS, { namespace: ns, name: 'guarded' })).toBe(false);
  });
});
