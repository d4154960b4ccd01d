/**
 * The client against the real API server: in-cluster configuration from a service-account token and CA file (as a
 * pod sees them), token rotation, errors that carry the server's status and message, and WATCH streaming. (A real
 * 410 needs an etcd compaction, minutes away here; the informer's 410 handling is unit-tested with a scripted stream.)
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  clientFromKubeconfig,
  clientInCluster,
  KubeApiError,
  type KubeClient,
  type WatchEvent,
} from '../../lib/kube/client.ts';
import { cluster, createNamespace } from '../support/cluster.ts';

let admin: KubeClient;
let ns: string;
let dir: string;

beforeAll(async () => {
  admin = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('kube-client');
  dir = await mkdtemp(join(tmpdir(), 'kube-client-'));
});

afterAll(async () => {
  admin.close();
  await rm(dir, { recursive: true, force: true });
});

async function serviceAccountToken(name: string): Promise<string> {
  await admin.request('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, {
    body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name } },
  });
  const review = await admin.request<{ status: { token: string } }>(
    'POST',
    `/api/v1/namespaces/${ns}/serviceaccounts/${name}/token`,
    { body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { expirationSeconds: 600 } } },
  );
  return review.status.token;
}

describe('KubeClient (real API server)', () => {
  it('works in-cluster from token and CA files, re-reads a rotated token, and reports 401/403 with the server message', async () => {
    const token = await serviceAccountToken('reader');
    const tokenPath = join(dir, 'token');
    const caPath = join(dir, 'ca.crt');
    await writeFile(tokenPath, `${token}\n`);
    await writeFile(caPath, cluster().caPem);
    const url = new URL(cluster().server);
    let clock = 0;
    const client = await clientInCluster({
      host: url.hostname,
      port: url.port,
      tokenPath,
      caPath,
      tokenCacheMs: 1000,
      now: () => clock,
    });
    try {
      const version = await client.get<{ major: string }>('/version');
      expect(version.major).toBe('1');
      const forbidden = await client.get(`/api/v1/namespaces/${ns}/secrets`).catch((e: unknown) => e);
      expect(forbidden).toBeInstanceOf(KubeApiError);
      expect((forbidden as KubeApiError).status).toBe(403);
      expect((forbidden as KubeApiError).reason).toBe('Forbidden');
      expect((forbidden as KubeApiError).message).toContain(`system:serviceaccount:${ns}:reader`);

      // The kubelet rotates the projected token file; the client must pick up the new one after its cache period.
      await writeFile(tokenPath, 'not-a-token');
      expect((await client.get<{ major: string }>('/version')).major).toBe('1'); // still cached
      clock += 1000;
      const unauthorized = await client.get('/version').catch((e: unknown) => e);
      expect((unauthorized as KubeApiError).status).toBe(401);
    } finally {
      client.close();
    }
  });

  it('streams WATCH events from a resourceVersion and stops cleanly on abort', async () => {
    const path = `/api/v1/namespaces/${ns}/configmaps`;
    const list = await admin.list(path);
    const events: WatchEvent[] = [];
    const abort = new AbortController();
    const watching = admin.watch(
      path,
      { resourceVersion: list.metadata.resourceVersion, timeoutSeconds: 30 },
      (e) => {
        // The namespace controller's kube-root-ca.crt may arrive too: only ours counts.
        if ((e.object as { metadata?: { name?: string } }).metadata?.name !== 'w') return;
        events.push(e);
        abort.abort();
      },
      abort.signal,
    );
    await admin.request('POST', path, { body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'w' } } });
    await watching; // resolves quietly once aborted
    expect(events[0]?.type).toBe('ADDED');
    expect(events).toHaveLength(1);
  });
});
