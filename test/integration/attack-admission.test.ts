/**
 * Adversarial variants of "an identity without a fence" on the real API server, beyond the ones the webhook suite
 * covers: each is an ordinary API call a tenant could make, and each must be refused (naming the reason or rule)
 * or, where admission does not see it, refused by the token exchange's fence check.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { localInjectorConfig, startLocalController } from '../../localcluster/controller.ts';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import type { InjectorConfig } from '../../webhook/inject.ts';
import { mutatingWebhookConfiguration, podIntegrityBinding, podIntegrityPolicy } from '../../webhook/manifests.ts';
import { cluster, eventually, run, runOrThrow } from '../support/cluster.ts';
import { injectedPod, serviceAccountToken } from '../support/identity-server.ts';
import { kubeRequest } from '../support/kube-request.ts';

const testId = randomBytes(3).toString('hex');
const scope = { 'agentfence-attack-test': testId };
let client: KubeClient;
let operator: RunningOperator;
let ns: string;
let systemNs: string;
let injector: InjectorConfig;
let controllerCa: string;

const named = (obj: Record<string, unknown>, name: string): Record<string, unknown> => ({
  ...obj,
  metadata: { ...(obj.metadata as object), name },
});

function pod(name: string, spec: Record<string, unknown> = {}, metadata: Record<string, unknown> = {}): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { 'agentfence.io/inject': 'true' }, ...metadata },
    spec: {
      serviceAccountName: 'support-agent',
      containers: [{ name: 'agent', image: 'registry.example/agent:1' }],
      ...spec,
    },
  });
}

/** A projected token for the operator's audience in a volume of the app's own. */
const operatorTokenVolume = (audience = 'agentfence.io/operator'): { name: string; projected: unknown } => ({
  name: 'mine',
  projected: { sources: [{ serviceAccountToken: { audience, expirationSeconds: 3600, path: 't' } }] },
});

async function exchange(podName: string, namespace: string): Promise<{ status: number; error?: string }> {
  const stored = JSON.parse(await runOrThrow(['get', 'pod', podName, '-n', namespace, '-o', 'json'])) as {
    metadata: { name: string; uid: string };
  };
  // The same TokenRequest the kubelet makes for a projected volume: a token bound to this pod, for our audience.
  const token = await serviceAccountToken(namespace, 'support-agent', stored);
  return eventually(async () => {
    const res = await fetchWithCA(controllerCa)(`${operator.serving.url}/v1/identity`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    const body = (await res.json()) as { error?: string };
    return body.error === 'keys_unavailable' ? undefined : { status: res.status, ...body };
  }, 'a verdict from the token exchange');
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  systemNs = `af-atk-system-${testId}`;
  await runOrThrow(['create', 'namespace', systemNs]);
  ns = `atk-${testId}`;
  await runOrThrow(
    ['apply', '-f', '-'],
    stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: scope } }),
  );
  await eventually(
    async () => ((await run(['get', 'serviceaccount', 'default', '-n', ns])).code === 0 ? true : undefined),
    'default SA',
  );
  await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', ns]);
  await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', systemNs]);
  const started = await startLocalController({
    client,
    namespace: systemNs,
    podName: 'atk-0',
    injector: (url) => ({ ...localInjectorConfig(url, 'test'), image: 'ghcr.io/agentfence/agentfence:test' }),
    reconciler: false, // the tests write AgentEntitlements themselves
  });
  operator = started.operator;
  injector = started.injector;
  controllerCa = started.caPem;
  const webhook = mutatingWebhookConfiguration({
    clientConfig: { url: `${operator.serving.url}/mutate-pods` },
    caBundle: Buffer.from(started.caPem).toString('base64'),
    excludeNamespaces: ['kube-system', systemNs],
    namespaceMatchLabels: scope,
  });
  await runOrThrow(['apply', '--server-side', '-f', '-'], JSON.stringify(named(webhook, `agentfence-atk-${testId}`)));
  await runOrThrow(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify(named(podIntegrityPolicy(), `agentfence-atk-integrity-${testId}`)),
  );
  const binding = podIntegrityBinding({
    excludeNamespaces: ['kube-system', systemNs],
    namespaceMatchLabels: scope,
  }) as {
    spec: Record<string, unknown>;
  };
  await runOrThrow(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify({
      ...named(binding, `agentfence-atk-integrity-${testId}`),
      spec: { ...binding.spec, policyName: `agentfence-atk-integrity-${testId}` },
    }),
  );
  await eventually(
    async () => {
      const out = await run(['create', '--dry-run=server', '-o', 'json', '-f', '-'], pod('canary'));
      return out.code === 0 && out.stdout.includes('agentfence-sidecar') ? true : undefined;
    },
    'webhook active',
    30_000,
  );
  // The admission policy loads on its own schedule: wait until it refuses a label change on a plain pod.
  await runOrThrow(['apply', '-f', '-'], pod('plain', {}, { labels: {} }));
  await eventually(async () => {
    const res = await run(['label', 'pod', 'plain', '-n', ns, 'agentfence.io/inject=true', '--dry-run=server']);
    return res.code !== 0 ? true : undefined;
  }, 'admission policy active');
  await runOrThrow(['apply', '-f', '-'], pod('agent-a'));
});

afterAll(async () => {
  await run(['delete', 'mutatingwebhookconfiguration', `agentfence-atk-${testId}`]);
  await run(['delete', 'validatingadmissionpolicybinding', `agentfence-atk-integrity-${testId}`]);
  await run(['delete', 'validatingadmissionpolicy', `agentfence-atk-integrity-${testId}`]);
  await operator.stop();
  client.close();
});

describe('identity without a fence: variants', () => {
  it("refuses an app volume that projects a token for the operator's audience (it would get the agent's identity)", async () => {
    for (const audience of ['agentfence.io/operator', 'AgentFence.io/Operator']) {
      const res = await run(
        ['apply', '-f', '-'],
        pod('self-minted', {
          containers: [
            {
              name: 'agent',
              image: 'registry.example/agent:1',
              volumeMounts: [{ name: 'mine', mountPath: '/var/run/mine' }],
            },
          ],
          volumes: [operatorTokenVolume(audience)],
        }),
      );
      expect(res.code, audience).not.toBe(0);
      expect(res.stderr).toContain(`projects a service-account token for audience agentfence.io/operator`);
    }
    // Another audience is the app's own business.
    await runOrThrow(
      ['apply', '--dry-run=server', '-f', '-'],
      pod('other-audience', { volumes: [operatorTokenVolume('vault')] }),
    );
  });

  it('the token exchange refuses a pod that holds a second operator-audience token, wherever it came from', async () => {
    // In a namespace admission does not cover, the pod is created as the webhook would render it plus the app's
    // own operator-audience volume: before the fix its token (indistinguishable from the sidecar's) was accepted.
    // Rendered by the webhook's own injection as it was before the fix (the volume is the app's, so it comes
    // first), then the sidecar's part checked as injected: only the extra volume can make the difference.
    const base = injectedPod(systemNs, 'self-minted', { injector });
    const rendered = structuredClone(base);
    rendered.spec.volumes = [operatorTokenVolume(), ...(base.spec.volumes ?? [])];
    rendered.spec.containers = [
      {
        name: 'app',
        image: 'registry.example/agent:1',
        env: base.spec.containers[0]?.env ?? [],
        volumeMounts: [{ name: 'mine', mountPath: '/var/run/mine' }],
      },
    ];
    expect((await kubeRequest('POST', `/api/v1/namespaces/${systemNs}/pods`, rendered)).status).toBe(201);
    expect(await exchange('self-minted', systemNs)).toMatchObject({ status: 403, error: 'pod_not_fenced' });
    // The control: the same pod without that volume passes the fence check (no entitlement here, so the next
    // check answers).
    expect(
      (await kubeRequest('POST', `/api/v1/namespaces/${systemNs}/pods`, injectedPod(systemNs, 'clean', { injector })))
        .status,
    ).toBe(201);
    expect(await exchange('clean', systemNs)).toMatchObject({ status: 503, error: 'entitlement_pending' });
  });

  it("the app's own API token cannot mint an operator-audience token for its pod (RBAC default; see README)", async () => {
    // What automountServiceAccountToken gives the app: a token for the API server, as its service account.
    const stored = JSON.parse(await runOrThrow(['get', 'pod', 'agent-a', '-n', ns, '-o', 'json'])) as {
      metadata: { name: string; uid: string };
    };
    const apiToken = await serviceAccountToken(ns, 'support-agent', stored, [
      (JSON.parse(await runOrThrow(['get', '--raw', '/.well-known/openid-configuration'])) as { issuer: string })
        .issuer,
    ]);
    const mint = await kubeRequest(
      'POST',
      `/api/v1/namespaces/${ns}/serviceaccounts/support-agent/token`,
      {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenRequest',
        spec: {
          audiences: ['agentfence.io/operator'],
          boundObjectRef: { kind: 'Pod', apiVersion: 'v1', name: 'agent-a', uid: stored.metadata.uid },
        },
      },
      apiToken,
    );
    expect(mint.status).toBe(403);
  });

  it('refuses capabilities spelled in lower case or with CAP_, and the sidecar UID set only at pod level', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [
        { containers: [{ name: 'agent', image: 'x', securityContext: { capabilities: { add: ['cap_sys_admin'] } } }] },
        'adds SYS_ADMIN',
      ],
      [
        {
          initContainers: [
            { name: 'init', image: 'x', securityContext: { capabilities: { add: ['CAP_SYS_PTRACE'] } } },
          ],
        },
        'adds SYS_PTRACE',
      ],
      [{ securityContext: { runAsUser: 15001 } }, 'runs as UID 15001'],
      [{ initContainers: [{ name: 'setup', image: 'x', securityContext: { privileged: true } }] }, 'is privileged'],
    ];
    for (const [spec, message] of cases) {
      const res = await run(['apply', '-f', '-'], pod('variant', spec));
      expect(res.code, message).not.toBe(0);
      expect(res.stderr).toContain(message);
    }
  });

  it('refuses a copy of the sidecar among the app containers, even with a copied injection annotation', async () => {
    const stored = JSON.parse(await runOrThrow(['get', 'pod', 'agent-a', '-n', ns, '-o', 'json'])) as {
      metadata: { annotations: Record<string, string> };
    };
    const res = await run(
      ['apply', '-f', '-'],
      pod(
        'copy',
        {
          containers: [
            { name: 'agent', image: 'registry.example/agent:1' },
            { name: 'agentfence-sidecar', image: 'registry.example/evil:1' },
          ],
        },
        { annotations: stored.metadata.annotations },
      ),
    );
    expect(res.code).not.toBe(0);
    expect(res.stderr).toContain('already named agentfence-sidecar');
  });

  it('refuses server-side dry-run updates exactly like real ones', async () => {
    const label = await run(['label', 'pod', 'plain', '-n', ns, 'agentfence.io/inject=true', '--dry-run=server']);
    expect(label.stderr).toContain('[inject-label-added]');
    const relabel = await run([
      'label',
      'pod',
      'agent-a',
      '-n',
      ns,
      '--overwrite',
      'agentfence.io/agent=payments-agent',
      '--dry-run=server',
    ]);
    expect(relabel.stderr).toContain('[agent-label-changed]');
  });

  it('refuses a raw merge-patch that renames the agent or removes its label', async () => {
    const path = `/api/v1/namespaces/${ns}/pods/agent-a`;
    for (const value of ['payments-agent', null]) {
      const res = await kubeRequest('PATCH', path, { metadata: { labels: { 'agentfence.io/agent': value } } });
      expect(res.status, String(value)).toBe(403);
      expect(JSON.stringify(res.body)).toContain('[agent-label-changed]');
    }
  });

  it('refuses identity changes through the pods/status subresource (its update keeps metadata changes)', async () => {
    const status = `/api/v1/namespaces/${ns}/pods/agent-a/status`;
    const attempts: [Record<string, unknown>, string][] = [
      [{ metadata: { labels: { 'agentfence.io/agent': 'payments-agent' } } }, '[agent-label-changed]'],
      [{ metadata: { labels: { 'agentfence.io/inject': null } } }, '[inject-label-removed]'],
      [{ metadata: { annotations: { 'agentfence.io/injected': '{}' } } }, '[injected-annotation-changed]'],
    ];
    for (const [patch, rule] of attempts) {
      const res = await kubeRequest('PATCH', status, patch);
      expect(res.status, rule).toBe(403);
      expect(JSON.stringify(res.body)).toContain(rule);
    }
    const plain = await kubeRequest('PATCH', `/api/v1/namespaces/${ns}/pods/plain/status`, {
      metadata: { labels: { 'agentfence.io/inject': 'true' } },
    });
    expect(plain.status).toBe(403);
    expect(JSON.stringify(plain.body)).toContain('[inject-label-added]');
    const after = (await kubeRequest('GET', `/api/v1/namespaces/${ns}/pods/agent-a`)).body as {
      metadata: { labels: Record<string, string> };
    };
    expect(after.metadata.labels['agentfence.io/agent']).toBe('support-agent');
    // A status update that leaves our labels alone still works (the kubelet writes status all the time).
    const ok = await kubeRequest('PATCH', status, { metadata: { labels: { team: 'support' } } });
    expect(ok.status).toBe(200);
  });

  it('refuses ephemeral containers through raw PATCH and PUT of the subresource, any shape', async () => {
    const path = `/api/v1/namespaces/${ns}/pods/agent-a/ephemeralcontainers`;
    const harmless = { name: 'dbg', image: 'busybox', targetContainerName: 'agent' };
    const patch = await kubeRequest('PATCH', path, { spec: { ephemeralContainers: [harmless] } });
    expect(patch.status).toBe(403);
    expect(JSON.stringify(patch.body)).toContain('[ephemeral-containers]');
    const current = (await kubeRequest('GET', `/api/v1/namespaces/${ns}/pods/agent-a`)).body as {
      spec: Record<string, unknown>;
    };
    const put = await kubeRequest('PUT', path, {
      ...current,
      spec: {
        ...current.spec,
        ephemeralContainers: [{ ...harmless, name: 'dbg2', targetContainerName: 'agentfence-sidecar' }],
      },
    });
    expect(put.status).toBe(403);
    expect(JSON.stringify(put.body)).toContain('[ephemeral-containers]');
    const after = (await kubeRequest('GET', `/api/v1/namespaces/${ns}/pods/agent-a`)).body as {
      spec: { ephemeralContainers?: unknown[] };
    };
    expect(after.spec.ephemeralContainers).toBeUndefined();
  });
});
