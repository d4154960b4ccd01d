/**
 * The chart's life on the real API server, as an operator lives it: `helm install` where the CRDs already exist
 * (the test harness installed them, as `agentfence local-cluster` does) → the real controller CLI with the chart's
 * flags, ServiceAccount token and RBAC → labelled pods and a policy → `helm upgrade --force` keeps the webhook's
 * CA bundle → SIGTERM ends the controller → `helm uninstall` → the post-delete hook's `agentfence cleanup` under the
 * hook's own ServiceAccount and RBAC (there is no kubelet to run the Job: the test runs the same CLI with the same
 * args) → the agent namespaces delete, and nothing the chart or the controller created is left but the CRDs.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { renderKubeconfig } from '../../localcluster/kubeconfig.ts';
import { freePort } from '../../localcluster/controlplane.ts';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';
import { CONTROLLER } from '../../operator/defaults.ts';
import { cluster, eventually, run, runOrThrow } from '../support/cluster.ts';
import { kubeRequest } from '../support/kube-request.ts';

const run$ = promisify(execFile);
const chartDir = new URL('../../charts/agentfence', import.meta.url).pathname;
const cli = new URL('../../bin/agentfence.mjs', import.meta.url).pathname;
const RELEASE = 'agentfence';
const NS = 'af-lifecycle';
const AGENT_NAMESPACES: [string, string] = ['af-agents-a', 'af-agents-b'];
const work = mkdtempSync(join(tmpdir(), 'agentfence-chart-lifecycle-'));
const VALUES = [
  '--set',
  `webhook.excludeNamespaces={kube-system,kube-public,kube-node-lease,${AGENT_NAMESPACES.join(',')}}`,
];

function helm(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const bin = cluster().binaries.helm;
  if (!bin) throw new Error('helm binary not available (build it with hack/build-k8s-binaries.sh)');
  return run$(bin, [`--kubeconfig=${cluster().kubeconfigPath}`, ...args], {
    env: {
      PATH: '/usr/bin:/bin',
      // helm's discovery cache goes under $HOME/.kube: without HOME it would land in the working directory.
      HOME: work,
      HELM_CONFIG_HOME: join(work, 'helm-config'),
      HELM_CACHE_HOME: join(work, 'helm-cache'),
      HELM_DATA_HOME: join(work, 'helm-data'),
    },
  });
}

interface Doc {
  kind: string;
  metadata: { name: string; namespace?: string; annotations?: Record<string, string> };
  spec?: { template?: { spec?: { containers?: { args?: string[] }[] } } };
}

function docs(yaml: string): Doc[] {
  return parseAllDocuments(yaml)
    .map((d) => d.toJS() as Doc | null)
    .filter((d): d is Doc => !!d?.kind);
}

/** A kubeconfig for a ServiceAccount of the release, with a real token from the TokenRequest API. */
async function serviceAccountKubeconfig(sa: string): Promise<{ path: string; token: string }> {
  const res = await kubeRequest('POST', `/api/v1/namespaces/${NS}/serviceaccounts/${sa}/token`, {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    spec: { expirationSeconds: 3600 },
  });
  expect(res.status).toBe(201);
  const token = (res.body as { status: { token: string } }).status.token;
  const path = join(work, `${sa}.kubeconfig`);
  writeFileSync(path, renderKubeconfig({ server: cluster().server, caPem: cluster().caPem, token }));
  return { path, token };
}

interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function start(args: string[], kubeconfig: string): Running {
  const child = spawn(process.execPath, [cli, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, KUBECONFIG: kubeconfig }, // eslint-disable-line no-restricted-properties -- the child's PATH
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Every object of a kind carrying the controller's managed-by label, cluster-wide, as ns/name. */
async function managed(kind: string, extra: string[] = []): Promise<string[]> {
  const out = await runOrThrow([
    'get',
    kind,
    '-A',
    '-l',
    'app.kubernetes.io/managed-by=agentfence',
    ...extra,
    '-o',
    'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{"\\n"}{end}',
  ]);
  return out.split('\n').filter(Boolean);
}

let controller: Running | undefined;
/** The chart's controller flags, made runnable here (loopback ports). */
let controllerFlags: string[] = [];
let controllerKubeconfig = '';

beforeAll(async () => {
  for (const ns of AGENT_NAMESPACES) await runOrThrow(['create', 'namespace', ns]);
});

afterAll(async () => {
  controller?.child.kill('SIGKILL');
  await helm(['uninstall', RELEASE, '-n', NS, '--no-hooks']).catch(() => undefined);
  for (const kind of ['clusterrole', 'clusterrolebinding'])
    await run(['delete', kind, 'agentfence-controller-cleanup', '--ignore-not-found']);
  await run(['delete', 'namespace', NS, ...AGENT_NAMESPACES, '--ignore-not-found', '--wait=false']);
  rmSync(work, { recursive: true, force: true });
});

describe('helm install → controller → upgrade --force → uninstall → agent namespaces delete', () => {
  it('installs on a cluster where the CRDs already exist, and leaves those CRDs alone', async () => {
    const before = JSON.parse(await runOrThrow(['get', 'crd', 'agentpolicies.agentfence.io', '-o', 'json'])) as Doc;
    expect(before.metadata.annotations?.['meta.helm.sh/release-name']).toBeUndefined();
    const { stdout } = await helm(['install', RELEASE, chartDir, '-n', NS, '--create-namespace', ...VALUES]);
    expect(stdout).toContain('STATUS: deployed');
    expect(stdout).toContain('agentpolicies.agentfence.io was already in the cluster');
    const after = JSON.parse(await runOrThrow(['get', 'crd', 'agentpolicies.agentfence.io', '-o', 'json'])) as Doc;
    expect(after.metadata.annotations?.['meta.helm.sh/release-name']).toBeUndefined();
  });

  it('refuses a second release with a message naming the first', async () => {
    const err = (await helm(['install', 'second', chartDir, '-n', 'af-second', '--create-namespace']).catch(
      (e: unknown) => e,
    )) as { stderr?: string };
    expect(err.stderr).toContain(`already installed in this cluster as release "${RELEASE}" in namespace "${NS}"`);
    await run(['delete', 'namespace', 'af-second', '--wait=false']);
  });

  it('runs the real controller CLI with the chart flags, token and RBAC: it programs agent namespaces', async () => {
    const manifest = docs((await helm(['get', 'manifest', RELEASE, '-n', NS])).stdout);
    const deployment = manifest.find((d) => d.kind === 'Deployment');
    const args = deployment?.spec?.template?.spec?.containers?.[0]?.args ?? [];
    expect(args[0]).toBe('controller');
    const [admin, serving] = [await freePort(), await freePort()];
    const flags = args.slice(1).map((a) =>
      a
        .replace('$(POD_NAMESPACE)', NS)
        .replace('$(POD_NAME)', `${CONTROLLER.serviceName}-0`)
        .replace(/^--listen=.*/, `--listen=127.0.0.1:${serving}`)
        .replace(/^--admin-listen=.*/, `--admin-listen=127.0.0.1:${admin}`),
    );
    const { path } = await serviceAccountKubeconfig(CONTROLLER.serviceName);
    controllerFlags = flags;
    controllerKubeconfig = path;
    controller = start(['controller', ...flags], path);
    await eventually(
      async () =>
        (await fetch(`http://127.0.0.1:${admin}/readyz`).catch(() => undefined))?.status === 200 ? true : undefined,
      `controller ready under the chart RBAC (stderr: ${controller.stderr().slice(-2000)})`,
      30_000,
    );
    for (const ns of AGENT_NAMESPACES) {
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
    }
    // a cross-namespace grant: agents in a may call agents in b (b admits them)
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        metadata: { name: 'a', namespace: AGENT_NAMESPACES[0] },
        spec: {
          agentSelector: { matchLabels: { 'agentfence.io/agent': 'a' } },
          egress: [{ name: 'r', to: { cidrs: ['10.9.0.0/16'] }, ports: [{ port: 443 }] }],
        },
      }),
    );
    await eventually(async () => {
      const nps = await managed('networkpolicies');
      const aes = await managed('agententitlements');
      const cms = await managed('configmaps');
      return AGENT_NAMESPACES.every(
        (ns) =>
          nps.includes(`${ns}/agentfence-baseline`) &&
          aes.includes(`${ns}/agent-0`) &&
          cms.includes(`${ns}/agentfence-ca`),
      )
        ? true
        : undefined;
    }, 'baselines, entitlements and CA bundles in both agent namespaces');
    await eventually(async () => {
      const wh = JSON.parse(
        await runOrThrow(['get', 'mutatingwebhookconfiguration', CONTROLLER.webhookConfigName, '-o', 'json']),
      ) as { webhooks: { clientConfig: { caBundle?: string } }[] };
      return wh.webhooks[0]?.clientConfig.caBundle ? true : undefined;
    }, 'the controller wrote the webhook caBundle');
    for (const secret of [CONTROLLER.keysSecretName, CONTROLLER.certSecretName])
      expect((await run(['get', 'secret', secret, '-n', NS])).code).toBe(0);
    expect((await run(['get', 'lease', CONTROLLER.leaseName, '-n', NS])).code).toBe(0);
  });

  it('helm upgrade --force keeps the webhook CA bundle', async () => {
    const bundle = async (): Promise<string | undefined> =>
      (
        JSON.parse(
          await runOrThrow(['get', 'mutatingwebhookconfiguration', CONTROLLER.webhookConfigName, '-o', 'json']),
        ) as { webhooks: { clientConfig: { caBundle?: string } }[] }
      ).webhooks[0]?.clientConfig.caBundle;
    const before = await bundle();
    expect(before).toBeTruthy();
    await helm(['upgrade', RELEASE, chartDir, '-n', NS, '--force', ...VALUES]);
    // Read at once: the controller has had no chance to write it again.
    expect(await bundle()).toBe(before);
  });

  it('the controller exits within seconds of SIGTERM under the chart RBAC', async () => {
    const running = controller;
    if (!running) throw new Error('controller not started');
    const sent = Date.now();
    running.child.kill('SIGTERM');
    const deadline = new Promise<'still running'>((r) => setTimeout(() => r('still running'), 10_000).unref());
    const code = await Promise.race([running.exited, deadline]);
    console.log(`controller exited ${Date.now() - sent} ms after SIGTERM`);
    expect(code, running.stderr().slice(-2000)).toBe(0);
    controller = undefined;
  });

  it('exits within seconds of SIGTERM in the cert-manager mode too (--cert-dir)', async () => {
    const dir = join(work, 'tls');
    mkdirSync(dir);
    const ca = await createCertificateAuthority('test-ca', 1);
    const serving = await issueCertificate(ca, {
      commonName: 'c',
      ipAddresses: ['127.0.0.1'],
      usage: 'server',
      validityDays: 1,
    });
    writeFileSync(join(dir, 'tls.crt'), serving.certPem);
    writeFileSync(join(dir, 'tls.key'), serving.keyPem);
    writeFileSync(join(dir, 'ca.crt'), ca.certPem);
    const admin = await freePort();
    const flags = controllerFlags.map((f) =>
      f.startsWith('--cert-secret=')
        ? `--cert-dir=${dir}`
        : f.startsWith('--admin-listen=')
          ? `--admin-listen=127.0.0.1:${admin}`
          : f,
    );
    // The verb's earlier name, `operator`, is an alias: manifests that still say it run the same controller.
    const running = start(['operator', ...flags], controllerKubeconfig);
    await eventually(
      async () =>
        (await fetch(`http://127.0.0.1:${admin}/readyz`).catch(() => undefined))?.status === 200 ? true : undefined,
      'controller (--cert-dir) ready',
      30_000,
    );
    const sent = Date.now();
    running.child.kill('SIGTERM');
    const deadline = new Promise<'still running'>((r) => setTimeout(() => r('still running'), 10_000).unref());
    const code = await Promise.race([running.exited, deadline]);
    console.log(`controller (--cert-dir) exited ${Date.now() - sent} ms after SIGTERM`);
    if (code === 'still running') running.child.kill('SIGKILL');
    expect(code, running.stderr().slice(-2000)).toBe(0);
  });

  it('helm uninstall + the cleanup hook leave nothing behind but the CRDs; agent namespaces delete', async () => {
    const hook = docs(
      (await helm(['template', RELEASE, chartDir, '-n', NS, '--show-only', 'templates/cleanup-hook.yaml', ...VALUES]))
        .stdout,
    );
    const job = hook.find((d) => d.kind === 'Job');
    const jobArgs = job?.spec?.template?.spec?.containers?.[0]?.args ?? [];
    expect(jobArgs[0]).toBe('cleanup');
    // What Helm does: delete the release (no kubelet here to run the hook Job), then create the hook's objects.
    await helm(['uninstall', RELEASE, '-n', NS, '--no-hooks']);
    await runOrThrow(
      ['apply', '-f', '-'],
      hook
        .filter((d) => d.kind !== 'Job')
        .map((d) => JSON.stringify(d))
        .join('\n'),
    );
    const { path } = await serviceAccountKubeconfig('agentfence-controller-cleanup');
    const cleanup = start(jobArgs, path);
    expect(await cleanup.exited, cleanup.stderr()).toBe(0);
    expect(cleanup.stdout()).toMatch(
      // At least this install's own objects; the cleanup is cluster-wide, so objects other test files left count too.
      /deleted .*NetworkPolicy: [1-9]\d*.*AgentEntitlement: [1-9]\d*.*ConfigMap: [1-9]\d*.*Secret: 2.*Lease: 1/,
    );

    // The hook's own objects go when it succeeds (hook-delete-policy); then only the CRDs remain.
    await runOrThrow(
      ['delete', '-f', '-'],
      hook
        .filter((d) => d.kind !== 'Job')
        .map((d) => JSON.stringify(d))
        .join('\n'),
    );
    for (const kind of ['networkpolicies', 'agententitlements', 'configmaps'])
      expect(await managed(kind), kind).toEqual([]);
    // Secrets and the Lease are the release's own, in its namespace: another installation's (another test's
    // controller in its own namespace) are not this uninstall's to delete.
    for (const kind of ['secrets', 'leases'])
      expect(
        (await managed(kind)).filter((key) => key.startsWith(`${NS}/`)),
        kind,
      ).toEqual([]);
    expect((await run(['get', 'lease', CONTROLLER.leaseName, '-n', NS])).code).not.toBe(0);
    for (const [kind, name] of [
      ['clusterrole', 'agentfence-controller'],
      ['clusterrolebinding', 'agentfence-controller'],
      ['mutatingwebhookconfiguration', CONTROLLER.webhookConfigName],
      ['validatingadmissionpolicy', 'agentfence-pod-integrity'],
      ['validatingadmissionpolicybinding', 'agentfence-pod-integrity'],
    ] as const)
      expect((await run(['get', kind, name])).code, `${kind}/${name} left behind`).not.toBe(0);
    expect((await run(['get', 'crd', 'agentpolicies.agentfence.io'])).code).toBe(0);

    await runOrThrow(['delete', 'namespace', ...AGENT_NAMESPACES, '--wait=false']);
    await eventually(
      async () => {
        for (const ns of AGENT_NAMESPACES) if ((await run(['get', 'namespace', ns])).code === 0) return undefined;
        return true;
      },
      'agent namespaces deleted',
      60_000,
    );
  });
});
