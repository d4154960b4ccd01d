/**
 * The API server calls the real webhook over TLS (url + caBundle): labelled pods are injected, unlabelled pods
 * never reach it, refusals carry their reason to kubectl, dry-run behaves like a real create, and the
 * ValidatingAdmissionPolicy keeps injected pods injected — all on the real kube-apiserver.
 */
import { localInjectorConfig, startLocalController } from '../../localcluster/controller.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';
import type { InjectorConfig } from '../../webhook/inject.ts';
import { injectedPod, serviceAccountToken } from '../support/identity-server.ts';
import { kubeRequest } from '../support/kube-request.ts';
import { randomBytes } from 'node:crypto';
import type { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import { mutatingWebhookConfiguration, podIntegrityBinding, podIntegrityPolicy } from '../../webhook/manifests.ts';
import { cluster, eventually, run, runOrThrow } from '../support/cluster.ts';

const testId = randomBytes(3).toString('hex');
const scope = { 'agentfence-webhook-test': testId };
let client: KubeClient;
let operator: RunningOperator;
let registry: Registry;
let webhookStopped = false;
let ns: string;
let vapOnly: string;
let systemNs: string;
let injector: InjectorConfig;
let controllerCa: string;

const named = (obj: Record<string, unknown>, name: string): Record<string, unknown> => ({
  ...obj,
  metadata: { ...(obj.metadata as object), name },
});

function pod(name: string, labels: Record<string, string>, spec: Record<string, unknown> = {}, namespace = ns): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels },
    spec: {
      serviceAccountName: 'support-agent',
      containers: [{ name: 'agent', image: 'registry.example/agent:1' }],
      ...spec,
    },
  });
}

async function admissions(result: string): Promise<number> {
  const metric = await registry.getSingleMetric('agentfence_webhook_admissions_total')?.get();
  return (metric?.values ?? []).filter((v) => v.labels.result === result).reduce((s, v) => s + v.value, 0);
}

async function labelledNamespace(prefix: string): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await runOrThrow(
    ['apply', '-f', '-'],
    stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: scope } }),
  );
  await eventually(
    async () => ((await run(['get', 'serviceaccount', 'default', '-n', name])).code === 0 ? true : undefined),
    'default SA',
  );
  await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', name]);
  return name;
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  const system = `af-wh-system-${testId}`;
  await runOrThrow(['create', 'namespace', system]);
  ns = await labelledNamespace('wh');
  systemNs = system;
  const started = await startLocalController({
    client,
    namespace: system,
    podName: 'wh-0',
    // One configuration for the webhook and the token exchange, as in the operator.
    injector: (url) => ({ ...localInjectorConfig(url, 'test'), image: 'ghcr.io/agentfence/agentfence:test' }),
    reconciler: false, // the tests write AgentEntitlements themselves
  });
  operator = started.operator;
  injector = started.injector;
  controllerCa = started.caPem;
  registry = started.registry;
  const ca = { certPem: started.caPem };
  const caBundle = Buffer.from(ca.certPem).toString('base64');
  const webhook = mutatingWebhookConfiguration({
    clientConfig: { url: `${operator.serving.url}/mutate-pods` },
    caBundle,
    excludeNamespaces: ['kube-system', system],
    namespaceMatchLabels: scope,
  });
  await runOrThrow(['apply', '--server-side', '-f', '-'], JSON.stringify(named(webhook, `agentfence-test-${testId}`)));
  await runOrThrow(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify(named(podIntegrityPolicy(), `agentfence-pod-integrity-${testId}`)),
  );
  const binding = podIntegrityBinding({ excludeNamespaces: ['kube-system', system], namespaceMatchLabels: scope }) as {
    spec: Record<string, unknown>;
  };
  await runOrThrow(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify({
      ...named(binding, `agentfence-pod-integrity-${testId}`),
      spec: { ...binding.spec, policyName: `agentfence-pod-integrity-${testId}` },
    }),
  );
  // The API server loads admission configuration asynchronously: wait until a dry-run pod comes back injected.
  await eventually(
    async () => {
      const out = await run(
        ['create', '--dry-run=server', '-o', 'json', '-f', '-'],
        pod('canary', { 'agentfence.io/inject': 'true' }),
      );
      return out.code === 0 && out.stdout.includes('agentfence-sidecar') ? true : undefined;
    },
    'webhook active',
    30_000,
  );
  // A namespace the policy covers but the webhook does not: labelled pods arrive there uninjected.
  vapOnly = await labelledNamespace('vaponly');
  await runOrThrow(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify(
      named(
        {
          ...webhook,
          webhooks: (webhook.webhooks as object[]).map((w) => ({
            ...w,
            namespaceSelector: {
              matchExpressions: [
                { key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: [vapOnly, 'kube-system', system] },
              ],
              matchLabels: scope,
            },
          })),
        },
        `agentfence-test-${testId}`,
      ),
    ),
  );
});

afterAll(async () => {
  await run(['delete', 'mutatingwebhookconfiguration', `agentfence-test-${testId}`]);
  await run(['delete', 'validatingadmissionpolicybinding', `agentfence-pod-integrity-${testId}`]);
  await run(['delete', 'validatingadmissionpolicy', `agentfence-pod-integrity-${testId}`]);
  if (!webhookStopped) await operator.stop();
  client.close();
});

interface StoredPod {
  metadata: { labels: Record<string, string>; annotations?: Record<string, string> };
  spec: {
    initContainers?: { name: string; restartPolicy?: string }[];
    containers: { name: string; env?: { name: string; value?: string }[] }[];
    volumes?: { name: string }[];
  };
}

describe('admission webhook on the real API server', () => {
  it('injects a labelled pod created through the API server', async () => {
    await runOrThrow(['apply', '-f', '-'], pod('agent-a', { 'agentfence.io/inject': 'true' }));
    const stored = JSON.parse(await runOrThrow(['get', 'pod', 'agent-a', '-n', ns, '-o', 'json'])) as StoredPod;
    expect(stored.spec.initContainers?.[0]).toMatchObject({ name: 'agentfence-sidecar', restartPolicy: 'Always' });
    expect(stored.metadata.labels['agentfence.io/agent']).toBe('support-agent'); // defaulted from the service account
    expect(stored.metadata.annotations?.['agentfence.io/injected']).toContain('"version":"test"');
    const env = Object.fromEntries((stored.spec.containers[0]?.env ?? []).map((e) => [e.name, e.value]));
    expect(env.HTTP_PROXY).toBe('http://127.0.0.1:15001');
    expect(stored.spec.volumes?.map((v) => v.name)).toEqual(
      expect.arrayContaining(['agentfence-token', 'agentfence-ca', 'agentfence-scratch']),
    );
  });

  it('never sees unlabelled pods', async () => {
    const before = (await admissions('injected')) + (await admissions('skipped')) + (await admissions('refused'));
    await runOrThrow(['apply', '-f', '-'], pod('plain', { app: 'web' }));
    const stored = JSON.parse(await runOrThrow(['get', 'pod', 'plain', '-n', ns, '-o', 'json'])) as StoredPod;
    expect(stored.spec.initContainers).toBeUndefined();
    const after = (await admissions('injected')) + (await admissions('skipped')) + (await admissions('refused'));
    expect(after).toBe(before);
  });

  it('refuses a hostNetwork agent pod with the reason in kubectl’s error', async () => {
    const res = await run(['apply', '-f', '-'], pod('host', { 'agentfence.io/inject': 'true' }, { hostNetwork: true }));
    expect(res.code).not.toBe(0);
    expect(res.stderr).toContain('agent pods cannot use hostNetwork');
    expect((await run(['get', 'pod', 'host', '-n', ns])).code).not.toBe(0);
  });

  it('warns through the API server, naming the container, when NO_PROXY cannot be read at admission', async () => {
    const res = await run(
      ['apply', '-f', '-'],
      pod(
        'envfrom',
        { 'agentfence.io/inject': 'true' },
        {
          containers: [
            {
              name: 'agent',
              image: 'registry.example/agent:1',
              envFrom: [{ configMapRef: { name: 'settings', optional: true } }],
              env: [{ name: 'no_proxy', valueFrom: { configMapKeyRef: { name: 'proxy', key: 'np', optional: true } } }],
            },
          ],
        },
      ),
    );
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/Warning: container agent: no_proxy is set through valueFrom/);
  });

  it('answers a dry-run create exactly like a real one, and stores nothing', async () => {
    const dry = await runOrThrow(
      ['create', '--dry-run=server', '-o', 'json', '-f', '-'],
      pod('dry', { 'agentfence.io/inject': 'true' }),
    );
    expect((JSON.parse(dry) as StoredPod).spec.initContainers?.[0]?.name).toBe('agentfence-sidecar');
    expect((await run(['get', 'pod', 'dry', '-n', ns])).code).not.toBe(0);
  });

  it('refuses removing the inject label or changing the agent label of an injected pod (ValidatingAdmissionPolicy)', async () => {
    const unlabel = await run(['label', 'pod', 'agent-a', '-n', ns, 'agentfence.io/inject-']);
    expect(unlabel.code).not.toBe(0);
    expect(unlabel.stderr).toContain('cannot be removed from an injected pod');
    const rename = await run(['label', 'pod', 'agent-a', '-n', ns, 'agentfence.io/agent=admin', '--overwrite']);
    expect(rename.code).not.toBe(0);
    expect(rename.stderr).toContain('cannot change');
    // Other labels stay editable.
    await runOrThrow(['label', 'pod', 'agent-a', '-n', ns, 'team=support']);
  });

  it('refuses a labelled pod that arrives without the sidecar (ValidatingAdmissionPolicy)', async () => {
    const res = await eventually(async () => {
      const r = await run(['apply', '-f', '-'], pod('bypass', { 'agentfence.io/inject': 'true' }, {}, vapOnly));
      return r.code !== 0 ? r : undefined;
    }, 'refusal of an uninjected labelled pod');
    expect(res.stderr).toContain('must carry the agentfence-sidecar container');
  });

  it('refuses adding the inject label or the injected annotation to an existing pod, naming the rule', async () => {
    const label = await run(['label', 'pod', 'plain', '-n', ns, 'agentfence.io/inject=true']);
    expect(label.code).not.toBe(0);
    expect(label.stderr).toContain('[inject-label-added]');
    const annotate = await run(['annotate', 'pod', 'plain', '-n', ns, 'agentfence.io/injected={"version":"test"}']);
    expect(annotate.code).not.toBe(0);
    expect(annotate.stderr).toContain('[injected-annotation-changed]');
    // On an injected pod the annotation can be neither changed nor removed.
    const change = await run(['annotate', 'pod', 'agent-a', '-n', ns, '--overwrite', 'agentfence.io/injected={}']);
    expect(change.stderr).toContain('[injected-annotation-changed]');
    const remove = await run(['annotate', 'pod', 'agent-a', '-n', ns, 'agentfence.io/injected-']);
    expect(remove.stderr).toContain('[injected-annotation-changed]');
    // Unrelated annotations stay editable.
    await runOrThrow(['annotate', 'pod', 'plain', '-n', ns, 'team=web']);
    await runOrThrow(['annotate', 'pod', 'agent-a', '-n', ns, 'team=support']);
  });

  it("refuses swapping the sidecar's image on a live pod; the app's image may change", async () => {
    const swap = await run(['set', 'image', 'pod/agent-a', '-n', ns, 'agentfence-sidecar=registry.example/fake:1']);
    expect(swap.code).not.toBe(0);
    expect(swap.stderr).toContain('[sidecar-changed]');
    await runOrThrow(['set', 'image', 'pod/agent-a', '-n', ns, 'agent=registry.example/agent:2']);
  });

  it('refuses kubectl debug ephemeral containers in agent pods (any profile, any target); other pods may have them', async () => {
    for (const args of [
      ['--target=agentfence-sidecar', '--profile=sysadmin'],
      ['--target=agent', '--profile=restricted'],
      ['--profile=general'],
    ]) {
      const res = await run(['debug', 'agent-a', '-n', ns, '--image=busybox', ...args]);
      expect(res.code, args.join(' ')).not.toBe(0);
      expect(res.stderr).toContain('[ephemeral-containers]');
    }
    const stored = JSON.parse(await runOrThrow(['get', 'pod', 'agent-a', '-n', ns, '-o', 'json'])) as {
      spec: { ephemeralContainers?: unknown[] };
    };
    expect(stored.spec.ephemeralContainers).toBeUndefined();
    // The rule is about agent pods only.
    await runOrThrow(['debug', 'plain', '-n', ns, '--image=busybox', '--profile=general']);
  });

  it('the token exchange issues identities only to pods carrying the sidecar exactly as injected', async () => {
    const exchange = async (pod: string, namespace: string): Promise<{ status: number; error?: string }> => {
      const stored = JSON.parse(await runOrThrow(['get', 'pod', pod, '-n', namespace, '-o', 'json'])) as {
        metadata: { name: string; uid: string };
      };
      const token = await serviceAccountToken(namespace, 'support-agent', stored);
      return eventually(async () => {
        const res = await fetchWithCA(controllerCa)(`${operator.serving.url}/v1/identity`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}` },
        });
        const body = (await res.json()) as { error?: string };
        // Signing keys load after leader election: wait for them, not for a verdict.
        return body.error === 'keys_unavailable' ? undefined : { status: res.status, ...body };
      }, 'a verdict from the token exchange');
    };
    // A pod injected by the webhook through the real API server (defaults and all) passes the fence check;
    // there is no AgentEntitlement (no reconciler here), so the next check answers.
    expect(await exchange('agent-a', ns)).toMatchObject({ status: 503, error: 'entitlement_pending' });

    // The admission policy does not cover the controller's namespace (excluded): there, label, annotation and a
    // sidecar can be written by hand or changed later. The exchange does not trust them.
    await runOrThrow(['create', 'serviceaccount', 'support-agent', '-n', systemNs]);
    const rendered = injectedPod(systemNs, 'handmade', { injector });
    expect((await kubeRequest('POST', `/api/v1/namespaces/${systemNs}/pods`, rendered)).status).toBe(201);
    expect(await exchange('handmade', systemNs)).toMatchObject({ status: 503, error: 'entitlement_pending' });
    await runOrThrow(['set', 'image', 'pod/handmade', '-n', systemNs, 'agentfence-sidecar=registry.example/fake:1']);
    expect(await exchange('handmade', systemNs)).toMatchObject({ status: 403, error: 'pod_not_fenced' });

    const bare = injectedPod(systemNs, 'labels-only', { injector });
    bare.spec.initContainers = [];
    bare.spec.volumes = [];
    // Without the injected volumes, the app containers' read-only trust-bundle mount goes too.
    for (const c of bare.spec.containers) delete c.volumeMounts;
    expect((await kubeRequest('POST', `/api/v1/namespaces/${systemNs}/pods`, bare)).status).toBe(201);
    expect(await exchange('labels-only', systemNs)).toMatchObject({ status: 403, error: 'pod_not_fenced' });
  });

  // Last: it stops the webhook.
  it('with the webhook down, refuses labelled pods and still creates unlabelled ones (failurePolicy: Fail, objectSelector)', async () => {
    await operator.stop();
    webhookStopped = true;
    const labelled = await run(['apply', '-f', '-'], pod('while-down', { 'agentfence.io/inject': 'true' }));
    expect(labelled.code).not.toBe(0);
    expect(labelled.stderr).toMatch(/failed calling webhook|connection refused/);
    expect((await run(['get', 'pod', 'while-down', '-n', ns])).code).not.toBe(0);
    const plain = await run(['apply', '-f', '-'], pod('plain-while-down', { app: 'web' }));
    expect(plain.code).toBe(0);
  });
});
