/**
 * The assembled controller against the real API server: it elects a leader, creates signing keys, exchanges a
 * real pod-bound token from a sidecar identity client, streams the pod its AgentEntitlement and records the
 * sidecar's acknowledged revision in the AgentEntitlement status.
 */
import { startLocalController } from '../../localcluster/controller.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { silentLogger } from '../../lib/log.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import { IdentityClient } from '../../sidecar/identity-client.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';
import { createAgentPod, serviceAccountToken } from '../support/identity-server.ts';
import type { InjectorConfig } from '../../webhook/inject.ts';

/** Reads the first Server-Sent Event of a stream over TLS, then hangs up. */
function firstEvent(url: string, token: string): Promise<{ event: string; data: unknown }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ca: caPem, headers: { authorization: `Bearer ${token}` } }, (res) => {
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        const end = buffer.indexOf('\n\n');
        if (end < 0) return;
        const block = buffer.slice(0, end);
        req.destroy();
        resolve({
          event: /^event: (.*)$/m.exec(block)?.[1] ?? '',
          data: JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null') as unknown,
        });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

let client: KubeClient;
let ns: string;
let system: string;
let operator: RunningOperator;
let caPem: string;
let injector: InjectorConfig;
let dir: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  system = await createNamespace('af-system');
  ns = await createNamespace('runtime');
  await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', ns]);
  // The test writes the AgentEntitlement itself: no reconciler to race it.
  const started = await startLocalController({ client, namespace: system, reconciler: false });
  operator = started.operator;
  caPem = started.caPem;
  injector = started.injector;
  dir = await mkdtemp(join(tmpdir(), 'agentfence-runtime-'));
});

afterAll(async () => {
  await operator.stop();
  client.close();
  await rm(dir, { recursive: true, force: true });
});

describe('controller runtime', () => {
  it('leads, creates keys, becomes ready, and serves identity and entitlements to a sidecar', async () => {
    await eventually(() => (operator.isLeader() ? true : undefined), 'leadership');
    await eventually(
      async () => ((await fetch(`${operator.health.url}/readyz`)).status === 200 ? true : undefined),
      'readiness',
    );

    const pod = await createAgentPod(ns, 'agent-0', { injector });
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, await serviceAccountToken(ns, 'support-agent', pod));
    const identity = new IdentityClient({
      controllerUrl: operator.serving.url,
      tokenFile,
      fetch: fetchWithCA(caPem),
      logger: silentLogger,
    });
    await identity.start();
    expect(identity.current()?.spiffeID).toBe(`spiffe://cluster.local/ns/${ns}/agent/support-agent`);

    // The entitlement stream, authenticated by the identity token: the first event is the pod's snapshot.
    const first = await firstEvent(`${operator.serving.url}/v1/entitlements/stream`, identity.identityToken() ?? '');
    expect(first.event).toBe('snapshot');
    expect(first.data).toMatchObject({
      revision: 'sha256:feed',
      entitlement: { spec: { podName: 'agent-0', podUID: pod.metadata.uid } },
    });

    const ack = await fetchWithCA(caPem)(`${operator.serving.url}/v1/entitlements/ack`, {
      method: 'POST',
      headers: { authorization: `Bearer ${identity.identityToken() ?? ''}`, 'content-type': 'application/json' },
      body: JSON.stringify({ revision: 'sha256:feed' }),
    });
    expect(ack.status).toBe(204);
    const status = await eventually(async () => {
      const ae = JSON.parse(await runOrThrow(['get', 'ae', 'agent-0', '-n', ns, '-o', 'json'])) as {
        status?: { inSync?: boolean; enforcedRevision?: string };
      };
      return ae.status?.inSync === true ? ae.status : undefined;
    }, 'AgentEntitlement status inSync');
    expect(status.enforcedRevision).toBe('sha256:feed');
    identity.stop();
  });
});
