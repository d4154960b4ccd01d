/**
 * The Helm chart, checked with the real tools: `helm lint`; `helm template` against golden output for default
 * and non-default values; the rendered objects applied server-side to the real API server; and the controller
 * run with the chart's own ServiceAccount token (TokenRequest) and RBAC — proving those permissions suffice.
 * Refresh the golden files with UPDATE_GOLDEN=1.
 */
import { startLocalController } from '../../localcluster/controller.ts';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify } from 'yaml';
import { KubeClient, clientFromKubeconfig } from '../../lib/kube/client.ts';
import { renderKubeconfig } from '../../localcluster/kubeconfig.ts';
import { type RunningOperator } from '../../operator/runtime.ts';
import { cluster, createNamespace, eventually, run, runOrThrow } from '../support/cluster.ts';
import { kubeRequest } from '../support/kube-request.ts';
import { expectGolden } from '../support/golden.ts';
import {
  CONTROL_PLANE_DELETERS,
  ENTITLEMENT_VAP_NAME,
  entitlementIntegrityBinding,
  entitlementIntegrityPolicy,
  mutatingWebhookConfiguration,
  podIntegrityBinding,
  podIntegrityPolicy,
  VAP_NAME,
} from '../../webhook/manifests.ts';
import { CONTROLLER } from '../../operator/defaults.ts';
import { loadOperatorConfig } from '../../cli/operator.ts';

const run$ = promisify(execFile);
const chartDir = new URL('../../charts/agentfence', import.meta.url).pathname;
const goldenDir = new URL('../golden/chart/', import.meta.url).pathname;
const RELEASE_NS = 'agentfence-system';
const ENTITLEMENT_TEST_BINDING = 'agentfence-entitlement-integrity-chart-test';

function helm(): string {
  const bin = cluster().binaries.helm;
  if (!bin) throw new Error('helm binary not available (build it with hack/build-k8s-binaries.sh)');
  return bin;
}

async function template(values: string[]): Promise<string> {
  const { stdout } = await run$(helm(), [
    'template',
    'agentfence',
    chartDir,
    '--namespace',
    RELEASE_NS,
    '--kube-version',
    '1.36.0',
    ...values,
  ]);
  return stdout;
}

const CUSTOM = [
  '--set',
  'controller.replicas=3',
  '--set',
  'networkProvider=cilium',
  '--set',
  'dns.mode=node-local',
  '--set',
  'certificates.mode=cert-manager',
  '--set',
  'serviceMonitor.enabled=true',
  '--set',
  'trustDomain=prod.example.com',
  '--set',
  'sidecar.maxStaleness=30s',
  '--set',
  'sidecar.acceptInjections[0].version=0.0.9',
  '--set',
  'sidecar.acceptInjections[0].image=registry.example/agentfence:0.0.9',
];

/** The controller container's arguments in a rendering. */
function controllerArgs(rendered: string): string[] {
  const deployment = parseAllDocuments(rendered)
    .map((d) => d.toJS() as { kind?: string; spec?: { template: { spec: { containers: { args: string[] }[] } } } })
    .find((d) => d.kind === 'Deployment');
  return deployment?.spec?.template.spec.containers[0]?.args ?? [];
}

function golden(name: string, actual: string): void {
  expectGolden(`${goldenDir}${name}`, actual);
}

describe('Helm chart', () => {
  it('passes helm lint with default and non-default values', async () => {
    await run$(helm(), ['lint', chartDir]);
    await run$(helm(), ['lint', chartDir, ...CUSTOM]);
  });

  it('helm knows the Kubernetes version it was built for: template needs no --kube-version', async () => {
    // helm's default is set by ldflags from its client-go (hack/build-k8s-binaries.sh, as helm's Makefile does);
    // without them it is v1.20 and the chart's kubeVersion (>= 1.30) refuses to render.
    const { stdout } = await run$(helm(), ['template', 'agentfence', chartDir, '--namespace', RELEASE_NS]);
    expect(stdout).toContain('kind: Deployment');
  });

  it('installs the controller defaults that render, the demo and the CLI use (operator/defaults.ts)', async () => {
    const docs = parseAllDocuments(await template([])).map(
      (d) => d.toJS() as { kind?: string; metadata?: { name?: string }; spec?: Record<string, unknown> },
    );
    const deployment = docs.find((d) => d.kind === 'Deployment') as unknown as {
      metadata: { name: string };
      spec: {
        template: {
          metadata: { labels: Record<string, string> };
          spec: { serviceAccountName: string; containers: { args: string[]; ports: { containerPort: number }[] }[] };
        };
      };
    };
    expect(deployment.metadata.name).toBe(CONTROLLER.serviceName);
    expect(deployment.spec.template.metadata.labels).toMatchObject(CONTROLLER.podLabels);
    const [container] = deployment.spec.template.spec.containers;
    expect(container?.ports.map((p) => p.containerPort)).toEqual([CONTROLLER.port, CONTROLLER.adminPort]);
    expect(container?.args).toEqual(
      expect.arrayContaining([
        `--listen=0.0.0.0:${CONTROLLER.port}`,
        `--admin-listen=0.0.0.0:${CONTROLLER.adminPort}`,
        `--service-name=${CONTROLLER.serviceName}`,
        `--webhook-config-name=${CONTROLLER.webhookConfigName}`,
        `--cert-secret=${CONTROLLER.certSecretName}`,
      ]),
    );
    expect(docs.find((d) => d.kind === 'Service')?.metadata?.name).toBe(CONTROLLER.serviceName);
    expect(docs.find((d) => d.kind === 'MutatingWebhookConfiguration')?.metadata?.name).toBe(
      CONTROLLER.webhookConfigName,
    );
    // The cleanup hook's Role names exactly the controller's Secrets and Lease.
    const role = docs.find(
      (d) => d.kind === 'Role' && d.metadata?.name === 'agentfence-controller-cleanup',
    ) as unknown as {
      rules: { resources: string[]; resourceNames: string[] }[];
    };
    expect(role.rules.find((r) => r.resources.includes('secrets'))?.resourceNames).toEqual([
      CONTROLLER.keysSecretName,
      CONTROLLER.certSecretName,
    ]);
    expect(role.rules.find((r) => r.resources.includes('leases'))?.resourceNames).toEqual([CONTROLLER.leaseName]);
  });

  it('passes sidecar.acceptInjections to the controller as --accept-injection, which the controller parses into accepted injectors with the current sidecar settings', async () => {
    expect(controllerArgs(await template([])).filter((a) => a.startsWith('--accept-injection'))).toEqual([]);
    const args = controllerArgs(
      await template([
        '--set',
        'sidecar.acceptInjections[0].version=0.0.9',
        '--set',
        'sidecar.acceptInjections[0].image=registry.example/agentfence:0.0.9',
        '--set',
        'sidecar.acceptInjections[1].version=0.0.8',
        '--set',
        'sidecar.acceptInjections[1].image=registry.example/agentfence@sha256:' + 'ab'.repeat(32),
      ]),
    );
    // The rendered arguments as the controller reads them ($(POD_*) are the kubelet's to expand).
    const expanded = args
      .slice(1)
      .map((a) => a.replace('$(POD_NAMESPACE)', RELEASE_NS).replace('$(POD_NAME)', 'controller-0'));
    const config = loadOperatorConfig(expanded, {
      KUBERNETES_SERVICE_HOST: '10.0.0.1',
      KUBERNETES_SERVICE_PORT: '443',
    });
    if (config === 'help') throw new Error('unexpected help');
    const { injector, acceptedInjectors } = config.controller.runtime;
    expect(acceptedInjectors).toEqual([
      { ...injector, version: '0.0.9', image: 'registry.example/agentfence:0.0.9' },
      { ...injector, version: '0.0.8', image: `registry.example/agentfence@sha256:${'ab'.repeat(32)}` },
    ]);
  });

  it('refuses an acceptInjections entry that is not a version and an image', async () => {
    for (const bad of [
      ['sidecar.acceptInjections[0].version=1=2', 'sidecar.acceptInjections[0].image=img:1'],
      ['sidecar.acceptInjections[0].version=0.0.9', 'sidecar.acceptInjections[0].image=img 1'],
      ['sidecar.acceptInjections[0].version=0.0.9'],
      [
        'sidecar.acceptInjections[0].version=0.0.9',
        'sidecar.acceptInjections[0].image=img:1',
        'sidecar.acceptInjections[0].tag=x',
      ],
    ]) {
      const refused = await template(bad.flatMap((v) => ['--set', v])).then(
        () => undefined,
        (err: unknown) => String((err as { stderr?: unknown }).stderr),
      );
      expect(refused, bad.join(' ')).toMatch(/acceptInjections/);
    }
  });

  it('renders exactly the golden output (default values)', async () => {
    golden('default.yaml', await template([]));
  });

  it('renders exactly the golden output (cilium, node-local DNS, cert-manager, ServiceMonitor, 3 replicas)', async () => {
    const out = await template(CUSTOM);
    golden('custom.yaml', out);
    expect(out).toContain('kind: Certificate');
    expect(out).toContain('kind: ServiceMonitor');
    expect(out).toContain('ciliumnetworkpolicies');
    expect(out).toContain('--dns-ip=169.254.20.10');
  });

  it('renders the admission configuration exactly as webhook/manifests.ts defines it', async () => {
    const docs = parseAllDocuments(await template([])).map((d) => d.toJS() as { kind?: string });
    const excludeNamespaces = ['kube-system', 'kube-public', 'kube-node-lease', RELEASE_NS];
    expect(docs.find((d) => d.kind === 'MutatingWebhookConfiguration')).toEqual(
      mutatingWebhookConfiguration({
        clientConfig: {
          service: { name: 'agentfence-controller', namespace: RELEASE_NS, path: '/mutate-pods', port: 443 },
        },
        excludeNamespaces,
      }),
    );
    const find = (kind: string, name: string): unknown =>
      docs.find((d) => d.kind === kind && (d as { metadata?: { name?: string } }).metadata?.name === name);
    expect(find('ValidatingAdmissionPolicy', VAP_NAME)).toEqual(podIntegrityPolicy());
    expect(find('ValidatingAdmissionPolicyBinding', VAP_NAME)).toEqual(podIntegrityBinding({ excludeNamespaces }));
    const controller = `system:serviceaccount:${RELEASE_NS}:agentfence-controller`;
    expect(find('ValidatingAdmissionPolicy', ENTITLEMENT_VAP_NAME)).toEqual(
      entitlementIntegrityPolicy({ controller, deleters: [...CONTROL_PLANE_DELETERS, `${controller}-cleanup`] }),
    );
    expect(find('ValidatingAdmissionPolicyBinding', ENTITLEMENT_VAP_NAME)).toEqual(entitlementIntegrityBinding());
  });

  it('refuses bad values at install time with a readable message', async () => {
    const bad = await run$(helm(), [
      'template',
      'agentfence',
      chartDir,
      '--kube-version',
      '1.36.0',
      '--set',
      'networkProvider=calico',
    ]).catch((err: unknown) => err);
    expect(String((bad as { stderr?: unknown }).stderr)).toMatch(/networkProvider/);
  });
});

describe('chart objects on the real API server, and the controller under the chart RBAC', () => {
  let operator: RunningOperator | undefined;
  let client: KubeClient | undefined;

  beforeAll(async () => {
    const rendered = await template([]);
    await run(['create', 'namespace', RELEASE_NS]);
    // Hooks (the uninstall cleanup) are not part of an install: chart-lifecycle.test.ts runs them.
    const docs = parseAllDocuments(rendered)
      .map((d) => d.toJS() as { kind?: string; metadata?: { annotations?: Record<string, string> } } | null)
      .filter((d): d is { kind: string } => !!d?.kind && !d.metadata?.annotations?.['helm.sh/hook']);
    // Admission configurations would send every labelled pod of the other tests to a controller that is not
    // running here: check them with a server-side dry run; create everything else for real.
    const admission = new Set(['MutatingWebhookConfiguration', 'ValidatingAdmissionPolicyBinding']);
    const real = docs.filter((d) => !admission.has(d.kind) && d.kind !== 'CustomResourceDefinition');
    const dry = docs.filter((d) => admission.has(d.kind));
    await runOrThrow(
      ['apply', '--server-side', '--field-manager=helm-test', '-f', '-'],
      real.map((d) => stringify(d)).join('---\n'),
    );
    if (dry.length > 0) {
      await runOrThrow(
        ['apply', '--server-side', '--dry-run=server', '-f', '-'],
        dry.map((d) => stringify(d)).join('---\n'),
      );
    }
  });

  afterAll(async () => {
    await operator?.stop();
    client?.close();
    // The cluster-wide objects, so that a `helm install` in another test file does not meet them.
    for (const [kind, name] of [
      ['clusterrole', 'agentfence-controller'],
      ['clusterrolebinding', 'agentfence-controller'],
      ['validatingadmissionpolicy', 'agentfence-pod-integrity'],
      ['validatingadmissionpolicybinding', ENTITLEMENT_TEST_BINDING],
      ['validatingadmissionpolicy', 'agentfence-entitlement-integrity'],
    ] as const)
      await run(['delete', kind, name, '--ignore-not-found']);
    await run(['delete', 'namespace', RELEASE_NS, '--wait=false']);
  });

  it('runs the controller with the chart ServiceAccount token: caches sync, keys are created, it leads', async () => {
    const res = await kubeRequest(
      'POST',
      `/api/v1/namespaces/${RELEASE_NS}/serviceaccounts/agentfence-controller/token`,
      {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenRequest',
        spec: { expirationSeconds: 3600 },
      },
    );
    expect(res.status).toBe(201);
    const token = (res.body as { status: { token: string } }).status.token;
    const kubeconfig = `${cluster().kubeconfigPath}.chart-sa`;
    writeFileSync(kubeconfig, renderKubeconfig({ server: cluster().server, caPem: cluster().caPem, token }));
    client = await clientFromKubeconfig(kubeconfig);
    const sa = client;
    // The whole controller — reconciler included — under the chart's ServiceAccount and RBAC.
    operator = (
      await startLocalController({
        client: sa,
        namespace: RELEASE_NS,
        podName: 'agentfence-controller-0',
      })
    ).operator;
    await eventually(
      async () => ((await fetch(`${operator?.health.url ?? ''}/readyz`)).status === 200 ? true : undefined),
      'controller ready under chart RBAC',
      20_000,
    );
    expect(operator.isLeader()).toBe(true);
    const secret = await run(['get', 'secret', 'agentfence-signing-keys', '-n', RELEASE_NS]);
    expect(secret.code).toBe(0);
    // It can do its job: a policy and an agent pod become a NetworkPolicy and an AgentEntitlement.
    const ns = await createNamespace('chart-rbac');
    // ... under the chart's entitlement-integrity policy, bound here to this namespace only (the chart binds it
    // everywhere, which would refuse the other test files' controllers).
    await runOrThrow(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify({
        apiVersion: 'admissionregistration.k8s.io/v1',
        kind: 'ValidatingAdmissionPolicyBinding',
        metadata: { name: ENTITLEMENT_TEST_BINDING },
        spec: {
          policyName: ENTITLEMENT_VAP_NAME,
          validationActions: ['Deny'],
          matchResources: { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': ns } } },
        },
      }),
    );
    const forged = JSON.stringify({
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentEntitlement',
      metadata: { name: 'forged', namespace: ns, labels: { 'app.kubernetes.io/managed-by': 'agentfence' } },
      spec: {
        podName: 'forged',
        podUID: '0b7f6c2e-1111-2222-3333-444455556666',
        agent: 'a',
        spiffeID: `spiffe://cluster.local/ns/${ns}/agent/a`,
        revision: 'sha256:abc',
        expiresAt: '2030-01-01T00:00:00Z',
        egress: [],
      },
    });
    const refused = await eventually(async () => {
      const res = await run(['create', '--dry-run=server', '-f', '-'], forged);
      return res.code !== 0 ? res.stderr : undefined;
    }, 'entitlement-integrity policy active');
    expect(refused).toContain(`[entitlement-writer]`);
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: {
          name: 'agent-0',
          namespace: ns,
          labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'a' },
        },
        spec: { containers: [{ name: 'app', image: 'x' }] },
      }),
    );
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        metadata: { name: 'a', namespace: ns },
        spec: {
          agentSelector: { matchLabels: { 'agentfence.io/agent': 'a' } },
          egress: [{ name: 'r', to: { cidrs: ['10.9.0.0/16'] }, ports: [{ port: 443 }] }],
        },
      }),
    );
    await eventually(
      async () => ((await run(['get', 'networkpolicy', 'agentfence-a', '-n', ns])).code === 0 ? true : undefined),
      'NetworkPolicy written under chart RBAC',
    );
    await eventually(
      async () => ((await run(['get', 'agententitlement', 'agent-0', '-n', ns])).code === 0 ? true : undefined),
      'AgentEntitlement written under chart RBAC',
    );
    await eventually(async () => {
      const ap = JSON.parse(await runOrThrow(['get', 'ap', 'a', '-n', ns, '-o', 'json'])) as {
        status?: { observedGeneration?: number };
      };
      return ap.status?.observedGeneration === 1 ? true : undefined;
    }, 'status written under chart RBAC');
    // And the RBAC is least privilege: outside its namespace the controller may read Secrets (credentials rules
    // name them; its informer selects only those labelled agentfence.io/credential=true) and never write one.
    const labelled = await kubeRequest(
      'GET',
      '/api/v1/namespaces/default/secrets?labelSelector=agentfence.io%2Fcredential%3Dtrue',
      undefined,
      token,
    );
    expect(labelled.status).toBe(200);
    const create = await kubeRequest(
      'POST',
      '/api/v1/namespaces/default/secrets',
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'written-by-controller' } },
      token,
    );
    expect(create.status).toBe(403);
    const remove = await kubeRequest('DELETE', '/api/v1/namespaces/default/secrets/anything', undefined, token);
    expect(remove.status).toBe(403);
    const patch = await kubeRequest('PATCH', '/api/v1/namespaces/default/secrets/anything', {}, token);
    expect(patch.status).toBe(403);
  });
});
