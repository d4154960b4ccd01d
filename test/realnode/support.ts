/** Helpers for the real-node suite: the shared cluster and node, skipping with a reason, pods and exec. */
import { eventually as poll } from '../support/eventually.ts';
import { execFile, spawn } from 'node:child_process';
import { packageRoot } from '../../lib/paths.ts';
import { randomBytes } from 'node:crypto';
import { inject } from 'vitest';
import { resolveNodeBinDir, type Binaries, type BinariesConfig } from '../../localcluster/binaries.ts';
import { nodeUnsupportedReason } from '../../localcluster/node.ts';
import { kubectl, kubectlOrThrow, type CommandResult } from '../../localcluster/kubectl.ts';

export interface RealNodeInfo {
  server: string;
  caPem: string;
  admin: { certPem: string; keyPem: string };
  kubeconfigPath: string;
  serviceAccountIssuer: string;
  binaries: Binaries;
  nodeName: string;
  nodeIp: string;
  image: string;
}

/** Why the suite is skipped here, or undefined when a node runs. */
export function skipReason(): string | undefined {
  const provided = inject('realnode');
  return 'skip' in provided ? provided.skip : undefined;
}

export function realnode(): RealNodeInfo {
  const provided = inject('realnode');
  if ('skip' in provided) throw new Error(`no real node: ${provided.skip}`);
  return provided;
}

export function run(args: string[], input?: string): Promise<CommandResult> {
  return kubectl(realnode(), args, input);
}

export function runOrThrow(args: string[], input?: string): Promise<string> {
  return kubectlOrThrow(realnode(), args, input);
}

export async function createNamespace(prefix: string): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await runOrThrow(['create', 'namespace', name]);
  return name;
}

/** Polls like the integration helper, with the slower cadence and longer bound a real node needs. */
export function eventually<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  what: string,
  timeoutMs = 60_000,
): Promise<T> {
  return poll(probe, what, timeoutMs, 200);
}

export interface PodStatus {
  metadata: { name: string; namespace: string; uid: string };
  spec: { initContainers?: { name: string }[]; containers: { name: string }[] };
  status: {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string }[];
    initContainerStatuses?: ContainerStatus[];
    containerStatuses?: ContainerStatus[];
  };
}

interface ContainerStatus {
  name: string;
  ready: boolean;
  started?: boolean;
  restartCount: number;
  state?: { running?: object; waiting?: { reason?: string }; terminated?: { reason?: string; exitCode?: number } };
}

export async function getPod(ns: string, name: string): Promise<PodStatus> {
  return JSON.parse(await runOrThrow(['get', 'pod', name, '-n', ns, '-o', 'json'])) as PodStatus;
}

export function podReady(pod: PodStatus): boolean {
  return pod.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
}

/** Waits until the pod is Ready; on timeout the error names each container's state (and the sidecar's log). */
export async function waitPodReady(ns: string, name: string, timeoutMs = 90_000): Promise<PodStatus> {
  try {
    return await eventually(
      async () => {
        const pod = await getPod(ns, name);
        return podReady(pod) && pod.status.podIP ? pod : undefined;
      },
      `pod ${ns}/${name} Ready`,
      timeoutMs,
    );
  } catch (err) {
    const pod = await getPod(ns, name).catch(() => undefined);
    const states = [...(pod?.status.initContainerStatuses ?? []), ...(pod?.status.containerStatuses ?? [])]
      .map((c) => `${c.name}: ${JSON.stringify(c.state)} restarts=${c.restartCount}`)
      .join('; ');
    const logs = await run(['logs', name, '-n', ns, '--all-containers', '--tail=20']);
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${states}\n${logs.stdout}${logs.stderr}`, {
      cause: err,
    });
  }
}

/** Runs a Node.js one-liner in a container; the script prints one JSON line. */
export async function execNode<T>(ns: string, pod: string, container: string, script: string): Promise<T> {
  const out = await runOrThrow(['exec', pod, '-n', ns, '-c', container, '--', 'node', '-e', script]);
  return JSON.parse(out.trim().split('\n').pop() ?? 'null') as T;
}

/**
 * Why this machine cannot run the real-node suites, or undefined: not root or not Linux, or the node binaries
 * and packages neither present nor installable (no Go, or AGENTFENCE_NO_BUILD=1). As root with Go, a missing
 * piece is built and installed here (hack/build-node-binaries.sh, apt-get for the Debian packages), and a build
 * that fails is an error, not a skip.
 */
export async function machineSkipReason(config: BinariesConfig): Promise<string | undefined> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return nodeUnsupportedReason();
  const ready = await resolveNodeBinDir({ ...config, build: false }).then(
    () => true,
    () => false,
  );
  if (ready) return nodeUnsupportedReason();
  if (!config.build) return 'the node binaries are not built and AGENTFENCE_NO_BUILD=1 forbids building them';
  const go = await new Promise<boolean>((resolve) => {
    execFile('go', ['version'], (err) => resolve(!err));
  });
  if (!go) return 'the node binaries are not built and Go is not on PATH to build them';
  await resolveNodeBinDir(config);
  return nodeUnsupportedReason();
}

/** helm against the suite's cluster; never throws on a non-zero exit. */
export function helm(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const info = realnode();
    if (!info.binaries.helm) {
      reject(new Error('helm is not built (hack/build-k8s-binaries.sh builds it)'));
      return;
    }
    const child = spawn(info.binaries.helm, [`--kubeconfig=${info.kubeconfigPath}`, ...args]);
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, out }));
  });
}

/**
 * `helm install` of the chart into `namespace` with the suite's local image (never pulled), waiting until the
 * controller Deployment is available. The control plane already has the CRDs (installed server-side), which the
 * chart would refuse to adopt. `values` are extra --set pairs.
 */
export async function installChart(namespace: string, values: Record<string, string> = {}): Promise<void> {
  const [repository, tag] = realnode().image.split(/:(?=[^:]+$)/);
  const sets = {
    'image.repository': repository ?? '',
    'image.tag': tag ?? '',
    'image.pullPolicy': 'Never',
    'crds.install': 'false',
    ...values,
  };
  const installed = await helm([
    'install',
    'agentfence',
    `${packageRoot()}/charts/agentfence`,
    '-n',
    namespace,
    ...Object.entries(sets).map(([k, v]) => `--set=${k}=${v}`),
    '--wait',
    '--timeout=180s',
  ]);
  if (installed.code !== 0) throw new Error(`helm install failed:\n${installed.out}`);
}

export async function uninstallChart(namespace: string): Promise<void> {
  await helm(['uninstall', 'agentfence', '-n', namespace, '--wait', '--timeout=60s']);
}
