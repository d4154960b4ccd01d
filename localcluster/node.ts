/**
 * A real node for the local control plane (root only): containerd, kubelet, kube-scheduler, kube-proxy
 * (iptables mode: Services work), a CNI bridge with no uplink, kube-router enforcing NetworkPolicy, and CoreDNS
 * as the cluster DNS (localcluster/dns.ts). Pods run for real, from images imported into containerd (no
 * registry). Traffic stays on the machine: the bridge has no uplink, the CNI plugin does not masquerade, pods
 * get no default route (their one route is the Service range, through the node), forwarding is enabled on the
 * bridge alone (kube-proxy's NAT routes a pod's Service connection back onto the bridge) and a mangle-table rule
 * drops anything the node would forward from the bridge to another interface. Cluster DNS answers Service names
 * only, NXDOMAIN otherwise.
 *
 * One node per machine (the kubelet port, the bridge and a few paths are fixed). stop() removes everything the
 * node added — processes, mounts, network namespaces, the bridge, iptables chains, ipsets, cgroups, sysctls
 * the kubelet changed, state directories — judged against a snapshot of the host taken before it started.
 */
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { Resolver } from 'node:dns/promises';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ControlPlane } from './controlplane.ts';
import { SERVICE_CLUSTER_IP_RANGE, freePort, httpsGet, waitFor } from './controlplane.ts';
import { ManagedProcess } from './process.ts';
import { kubectl, kubectlOrThrow } from './kubectl.ts';
import { CLUSTER_DNS_IP, CLUSTER_DOMAIN, DNS_IMAGE, DNS_UID, dnsManifests } from './dns.ts';
import type { Logger } from '../lib/log.ts';
import {
  FIXED_PATHS,
  cgroupDirs,
  cgroupProcs,
  host,
  hostOrThrow,
  linkExists,
  mountPoints,
  processesRunning,
  removeConntrackEntries,
  removeCgroupTree,
  removeNewChains,
  removeNewIpsets,
  snapshotHost,
  type HostSnapshot,
} from './host.ts';
import { sleep } from '../lib/sleep.ts';

export const NODE_NAME = 'agentfence-node';
/** The bridge's own address is the node's InternalIP (this kernel has no dummy interfaces). */
export const NODE_NETWORK = {
  bridge: 'agentfence0',
  nodeIp: '10.244.0.1',
  clusterCidr: '10.244.0.0/24',
  nodeCidrMaskSize: 24,
} as const;
export const PAUSE_IMAGE = 'localhost/agentfence/pause:1';
/**
 * The `kubernetes` Service's cluster IP (first of the control plane's 10.0.0.0/24; its serving certificate
 * names it). The API server listens on loopback only and publishes no endpoints for it (kube-proxy has nothing
 * to forward to): the node holds this address on the bridge and forwards port 443 to the API server itself,
 * so in-cluster clients (the chart's controller, CoreDNS) work unchanged.
 */
export const KUBERNETES_SERVICE_IP = '10.0.0.1';
/** Fixed because the kubelet, containerd shims and CNI need short, stable paths; one node per machine. */
export const NODE_STATE_DIR = '/var/lib/agentfence-node';
export const NODE_RUN_DIR = '/run/agentfence-node';

/** The mangle-table chain that keeps forwarded traffic on the bridge (see the header). */
const EGRESS_GUARD_CHAIN = 'AGENTFENCE-NODE-GUARD';

export interface NodeBinaries {
  kubelet: string;
  kubeScheduler: string;
  kubeProxy: string;
  coredns: string;
  containerd: string;
  ctr: string;
  shim: string;
  kubeRouter: string;
  pause: string;
}

export function nodeBinariesIn(dir: string): NodeBinaries {
  return {
    kubelet: join(dir, 'kubelet'),
    kubeScheduler: join(dir, 'kube-scheduler'),
    kubeProxy: join(dir, 'kube-proxy'),
    coredns: join(dir, 'coredns'),
    containerd: join(dir, 'containerd'),
    ctr: join(dir, 'ctr'),
    shim: join(dir, 'containerd-shim-runc-v2'),
    kubeRouter: join(dir, 'kube-router'),
    pause: join(dir, 'pause'),
  };
}

export interface NodeOptions {
  plane: ControlPlane;
  binaries: NodeBinaries;
  logger: Logger;
  /** Default 120 s. */
  startTimeoutMs?: number;
}

export interface LocalNode {
  readonly name: string;
  readonly ip: string;
  readonly containerdSocket: string;
  readonly binaries: NodeBinaries;
  readonly logsDir: string;
  readonly processes: readonly ManagedProcess[];
  /** `ctr -n k8s.io images import` of an OCI archive. */
  importImage(archive: string): Promise<void>;
  stop(): Promise<void>;
}

const HACK = fileURLToPath(new URL('../hack/', import.meta.url));

/** Why this machine cannot run a node, or undefined when it can (the binaries are checked separately). */
export function nodeUnsupportedReason(): string | undefined {
  if (process.platform !== 'linux') return 'a local node needs Linux';
  if (process.getuid?.() !== 0) return 'a local node needs root (it runs containerd, the kubelet and iptables)';
  for (const tool of [
    '/usr/sbin/runc',
    '/usr/lib/cni/bridge',
    '/usr/sbin/iptables',
    '/usr/sbin/ipset',
    '/usr/sbin/conntrack',
    '/usr/bin/tar',
  ]) {
    if (!existsSync(tool))
      return `${tool} is missing (hack/build-node-binaries.sh installs runc, CNI plugins, iptables, ipset, conntrack)`;
  }
  return undefined;
}

function containerdConfig(paths: { root: string; state: string; socket: string; cniConf: string }): string {
  return `version = 3
root = "${paths.root}"
state = "${paths.state}"

[grpc]
  address = "${paths.socket}"

[ttrpc]
  address = "${paths.socket}.ttrpc"

[debug]
  address = ""

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "${PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # This VM lacks CAP_SYS_RESOURCE: a negative oom_score_adj (the pause container's -998) would make runc fail.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "${paths.cniConf}"
    max_conf_num = 1
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "${paths.state}/runc"
        SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`;
}

/** Bridge with no uplink: no gateway role (the plugin would enable forwarding), no masquerade, no routes. */
function cniConfig(ipamDir: string): string {
  return JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: 'agentfence',
      plugins: [
        {
          type: 'bridge',
          bridge: NODE_NETWORK.bridge,
          isGateway: false,
          isDefaultGateway: false,
          ipMasq: false,
          hairpinMode: false,
          ipam: {
            type: 'host-local',
            dataDir: ipamDir,
            ranges: [
              [
                {
                  subnet: NODE_NETWORK.clusterCidr,
                  rangeStart: '10.244.0.10',
                  rangeEnd: '10.244.0.250',
                  gateway: NODE_NETWORK.nodeIp,
                },
              ],
            ],
            // The one route pods get: the Service range, through the node (kube-proxy's NAT, and the API server's
            // service address, which the node holds itself).
            routes: [{ dst: SERVICE_CLUSTER_IP_RANGE, gw: NODE_NETWORK.nodeIp }],
          },
        },
        { type: 'loopback' },
      ],
    },
    null,
    2,
  );
}

function kubeletConfig(paths: { clientCA: string; socket: string; resolvConf: string; podLogs: string }): string {
  return JSON.stringify(
    {
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      // This machine mounts cgroup v1 controllers; kubelet 1.36 refuses v1 unless told otherwise.
      failCgroupV1: false,
      cgroupDriver: 'cgroupfs',
      containerRuntimeEndpoint: `unix://${paths.socket}`,
      address: NODE_NETWORK.nodeIp,
      port: 10250,
      readOnlyPort: 0,
      healthzBindAddress: '127.0.0.1',
      healthzPort: 10248,
      authentication: {
        anonymous: { enabled: false },
        webhook: { enabled: true },
        x509: { clientCAFile: paths.clientCA },
      },
      authorization: { mode: 'Webhook' },
      // Only for pods with dnsPolicy Default (CoreDNS itself); every other pod is given the cluster DNS.
      resolvConf: paths.resolvConf,
      clusterDNS: [CLUSTER_DNS_IP],
      clusterDomain: CLUSTER_DOMAIN,
      podLogsDir: paths.podLogs,
      failSwapOn: false,
      serializeImagePulls: false,
      maxPods: 50,
      evictionHard: { 'memory.available': '50Mi', 'nodefs.available': '1%', 'imagefs.available': '1%' },
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      syncFrequency: '5s',
      nodeStatusUpdateFrequency: '4s',
      fileCheckFrequency: '0s',
      registerNode: true,
      enableServer: true,
    },
    null,
    2,
  );
}

/**
 * kube-proxy in iptables mode, confined to the node: NodePorts only on the bridge address (never on the host's
 * other interfaces, never on localhost, so route_localnet stays off), and the host's connection-tracking limits
 * and timeouts left as they are (zero means "do not set").
 */
function kubeProxyConfig(paths: { kubeconfig: string; healthzPort: number; metricsPort: number }): string {
  return JSON.stringify(
    {
      apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
      kind: 'KubeProxyConfiguration',
      clientConnection: { kubeconfig: paths.kubeconfig },
      hostnameOverride: NODE_NAME,
      mode: 'iptables',
      clusterCIDR: NODE_NETWORK.clusterCidr,
      detectLocalMode: 'ClusterCIDR',
      healthzBindAddress: `127.0.0.1:${paths.healthzPort}`,
      metricsBindAddress: `127.0.0.1:${paths.metricsPort}`,
      nodePortAddresses: [`${NODE_NETWORK.nodeIp}/32`],
      // This VM refuses negative oom_score_adj values (no CAP_SYS_RESOURCE).
      oomScoreAdj: 0,
      iptables: { localhostNodePorts: false, masqueradeAll: false, syncPeriod: '30s', minSyncPeriod: '0s' },
      conntrack: {
        maxPerCore: 0,
        min: 0,
        tcpEstablishedTimeout: '0s',
        tcpCloseWaitTimeout: '0s',
        udpTimeout: '0s',
        udpStreamTimeout: '0s',
      },
    },
    null,
    2,
  );
}

/** Packs one static binary as a one-file image (hack/oci-image.sh) and imports it into containerd. */
async function importBinaryImage(
  ctr: (args: string[]) => Promise<string>,
  binary: string,
  image: { ref: string; file: string; user: string; archive: string },
): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'agentfence-image-'));
  try {
    await copyFile(binary, join(root, image.file));
    await hostOrThrow(join(HACK, 'oci-image.sh'), [root, image.ref, image.archive, image.user, `["/${image.file}"]`]);
    await ctr(['images', 'import', image.archive]);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

export async function startNode(options: NodeOptions): Promise<LocalNode> {
  const unsupported = nodeUnsupportedReason();
  if (unsupported) throw new Error(unsupported);
  const { plane, binaries, logger } = options;
  const deadline = Date.now() + (options.startTimeoutMs ?? 120_000);
  for (const leftover of [NODE_STATE_DIR, NODE_RUN_DIR]) {
    if (existsSync(leftover)) {
      throw new Error(
        `${leftover} exists: another local node is running, or one was killed without cleanup (stop it, or remove ${NODE_STATE_DIR} and ${NODE_RUN_DIR} after unmounting what is below them)`,
      );
    }
  }
  if (linkExists(NODE_NETWORK.bridge)) throw new Error(`network interface ${NODE_NETWORK.bridge} already exists`);

  const before = await snapshotHost();
  const processes: ManagedProcess[] = [];
  const state = NODE_STATE_DIR;
  const run = NODE_RUN_DIR;
  const paths = {
    root: join(state, 'containerd'),
    state: join(run, 'containerd'),
    socket: join(run, 'containerd.sock'),
    cniConf: join(state, 'cni', 'net.d'),
    ipam: join(state, 'cni', 'ipam'),
    kubeletRoot: join(state, 'kubelet'),
    podLogs: join(state, 'pod-logs'),
    certDir: join(state, 'pki'),
    logs: join(state, 'logs'),
    resolvConf: join(state, 'resolv.conf'),
    clientCA: join(plane.dir, 'pki', 'client-ca.crt'),
  };
  const ctr = (args: string[]): Promise<string> =>
    hostOrThrow(binaries.ctr, ['--address', paths.socket, '-n', 'k8s.io', ...args]);

  let apiForwarder: { close(): Promise<void> } | undefined;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await apiForwarder?.close();
    await teardown({ plane, binaries, processes, before, paths, logger });
  };

  try {
    await Promise.all(
      [paths.cniConf, paths.ipam, paths.kubeletRoot, paths.podLogs, paths.certDir, paths.logs, paths.state].map((d) =>
        mkdir(d, { recursive: true, mode: 0o700 }),
      ),
    );
    await mkdir(join(state, 'volume-plugins'), { recursive: true });
    // The bridge first: its address is the node IP the kubelet binds to.
    await hostOrThrow('ip', ['link', 'add', NODE_NETWORK.bridge, 'type', 'bridge']);
    await hostOrThrow('ip', ['addr', 'add', `${NODE_NETWORK.nodeIp}/24`, 'dev', NODE_NETWORK.bridge]);
    await hostOrThrow('ip', ['addr', 'add', `${KUBERNETES_SERVICE_IP}/32`, 'dev', NODE_NETWORK.bridge]);
    await hostOrThrow('ip', ['link', 'set', NODE_NETWORK.bridge, 'up']);
    // The host's own Service connections (the node's DNS check, `kubectl` users on the host) leave on the bridge
    // from the node address, never towards the host's default route.
    await hostOrThrow('ip', [
      'route',
      'add',
      SERVICE_CLUSTER_IP_RANGE,
      'dev',
      NODE_NETWORK.bridge,
      'src',
      NODE_NETWORK.nodeIp,
    ]);
    // A pod's connection to a Service is DNATed to another pod and routed back onto the bridge: the node
    // forwards for the bridge alone (the sysctl goes with the interface), and never out of it.
    await writeFile(`/proc/sys/net/ipv4/conf/${NODE_NETWORK.bridge}/forwarding`, '1');
    await hostOrThrow('iptables', ['-w', '5', '-t', 'mangle', '-N', EGRESS_GUARD_CHAIN]);
    await hostOrThrow('iptables', [
      '-w',
      '5',
      '-t',
      'mangle',
      '-A',
      EGRESS_GUARD_CHAIN,
      '-i',
      NODE_NETWORK.bridge,
      '!',
      '-o',
      NODE_NETWORK.bridge,
      '-j',
      'DROP',
    ]);
    await hostOrThrow('iptables', ['-w', '5', '-t', 'mangle', '-I', 'FORWARD', '1', '-j', EGRESS_GUARD_CHAIN]);
    apiForwarder = await forwardApiServer(new URL(plane.server));
    await writeFile(join(paths.cniConf, '10-agentfence.conflist'), cniConfig(paths.ipam));
    await writeFile(paths.resolvConf, 'nameserver 127.0.0.1\n');
    await writeFile(
      join(state, 'containerd.toml'),
      containerdConfig({ root: paths.root, state: paths.state, socket: paths.socket, cniConf: paths.cniConf }),
    );

    processes.push(
      ManagedProcess.start(
        'containerd',
        binaries.containerd,
        ['--config', join(state, 'containerd.toml'), '--log-level', 'warn'],
        join(paths.logs, 'containerd.log'),
      ),
    );
    await waitFor(
      'containerd',
      deadline,
      processes,
      async () => (await host(binaries.ctr, ['--address', paths.socket, 'version'])).code === 0,
    );

    // The sandbox image and the cluster DNS's: static binaries as one-file images.
    await importBinaryImage(ctr, binaries.pause, {
      ref: PAUSE_IMAGE,
      file: 'pause',
      user: '65535:65535',
      archive: join(state, 'pause.tar'),
    });
    await importBinaryImage(ctr, binaries.coredns, {
      ref: DNS_IMAGE,
      file: 'coredns',
      user: `${DNS_UID}:${DNS_UID}`,
      archive: join(state, 'coredns.tar'),
    });

    await writeFile(
      join(state, 'kubelet.json'),
      kubeletConfig({
        clientCA: paths.clientCA,
        socket: paths.socket,
        resolvConf: paths.resolvConf,
        podLogs: paths.podLogs,
      }),
    );
    processes.push(
      ManagedProcess.start(
        'kubelet',
        binaries.kubelet,
        [
          `--config=${join(state, 'kubelet.json')}`,
          `--kubeconfig=${plane.kubeconfigPath}`,
          `--root-dir=${paths.kubeletRoot}`,
          `--cert-dir=${paths.certDir}`,
          `--hostname-override=${NODE_NAME}`,
          `--node-ip=${NODE_NETWORK.nodeIp}`,
          `--volume-plugin-dir=${join(state, 'volume-plugins')}`,
          '--v=1',
        ],
        join(paths.logs, 'kubelet.log'),
      ),
    );
    const schedulerPort = await freePort();
    processes.push(
      ManagedProcess.start(
        'kube-scheduler',
        binaries.kubeScheduler,
        [
          `--kubeconfig=${plane.kubeconfigPath}`,
          `--authentication-kubeconfig=${plane.kubeconfigPath}`,
          `--authorization-kubeconfig=${plane.kubeconfigPath}`,
          '--bind-address=127.0.0.1',
          `--secure-port=${schedulerPort}`,
          '--leader-elect=false',
          '--v=0',
        ],
        join(paths.logs, 'kube-scheduler.log'),
      ),
    );
    const admin = { caPem: plane.caPem, certPem: plane.admin.certPem, keyPem: plane.admin.keyPem };
    await waitFor(`node ${NODE_NAME} Ready with a pod CIDR and no taints`, deadline, processes, async () => {
      const res = await httpsGet(`${plane.server}/api/v1/nodes/${NODE_NAME}`, admin);
      if (res.status !== 200) return false;
      const node = JSON.parse(res.body) as {
        spec?: { podCIDR?: string; taints?: unknown[] };
        status?: { conditions?: { type: string; status: string }[] };
      };
      const ready = node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
      return Boolean(ready && node.spec?.podCIDR && (node.spec.taints ?? []).length === 0);
    });
    // kube-router identifies itself by its Node object and reads its podCIDR: start it once both exist.
    processes.push(
      ManagedProcess.start(
        'kube-router',
        binaries.kubeRouter,
        [
          '--run-firewall=true',
          '--run-router=false',
          '--run-service-proxy=false',
          `--hostname-override=${NODE_NAME}`,
          `--kubeconfig=${plane.kubeconfigPath}`,
          '--health-port=0',
          '--iptables-sync-period=10s',
          '--v=1',
        ],
        join(paths.logs, 'kube-router.log'),
      ),
    );

    const proxyPorts = { healthzPort: await freePort(), metricsPort: await freePort() };
    await writeFile(
      join(state, 'kube-proxy.json'),
      kubeProxyConfig({ kubeconfig: plane.kubeconfigPath, ...proxyPorts }),
    );
    processes.push(
      ManagedProcess.start(
        'kube-proxy',
        binaries.kubeProxy,
        [`--config=${join(state, 'kube-proxy.json')}`, '--v=1'],
        join(paths.logs, 'kube-proxy.log'),
      ),
    );

    // kube-router's firewall is programmed once its chains exist (policies apply within a second after that).
    await waitFor('kube-router firewall chains', deadline, processes, async () => {
      const out = await host('iptables-save', ['-t', 'filter']);
      return out.stdout.includes(':KUBE-ROUTER-FORWARD');
    });
    // kube-proxy reports healthy once its first full sync has written the Service rules.
    await waitFor('kube-proxy synced', deadline, processes, async () => {
      const res = await fetch(`http://127.0.0.1:${proxyPorts.healthzPort}/healthz`).catch(() => undefined);
      return res?.status === 200;
    });
    // The cluster DNS, as pods behind the kube-dns Service: answering through kube-proxy proves both.
    await kubectlOrThrow(plane, ['apply', '--server-side', '-f', '-'], JSON.stringify(dnsManifests()));
    const resolver = new Resolver({ timeout: 1000, tries: 1 });
    resolver.setServers([CLUSTER_DNS_IP]);
    await waitFor('cluster DNS answering through the kube-dns Service', deadline, processes, async () => {
      const answer = await resolver.resolve4(`kube-dns.kube-system.svc.${CLUSTER_DOMAIN}`).catch((): string[] => []);
      return answer.includes(CLUSTER_DNS_IP);
    });
    logger.info('local node ready', { node: NODE_NAME, ip: NODE_NETWORK.nodeIp });

    return {
      name: NODE_NAME,
      ip: NODE_NETWORK.nodeIp,
      containerdSocket: paths.socket,
      binaries,
      logsDir: paths.logs,
      processes,
      importImage: async (archive) => {
        await ctr(['images', 'import', archive]);
      },
      stop,
    };
  } catch (err) {
    const tails = processes.map((p) => `--- ${p.name}\n${p.logTail(15)}`).join('\n');
    await stop();
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${tails}`, { cause: err });
  }
}

interface TeardownInput {
  plane: ControlPlane;
  binaries: NodeBinaries;
  processes: ManagedProcess[];
  before: HostSnapshot;
  paths: { podLogs: string; socket: string };
  logger: Logger;
}

/** Each step runs whatever the previous ones did; a failure is logged, never stops the rest. */
async function teardown(input: TeardownInput): Promise<void> {
  const { binaries, processes, before, logger } = input;
  const step = async (name: string, fn: () => Promise<void> | void): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      logger.warn('node teardown step failed', { step: name, error: err instanceof Error ? err.message : String(err) });
    }
  };
  const byName = (name: string): ManagedProcess | undefined => processes.find((p) => p.name === name);

  // 1. Gracefully: delete every pod so the kubelet stops sandboxes (CNI DEL, netns removal) itself.
  await step('delete pods', async () => {
    const kubelet = byName('kubelet');
    if (!kubelet?.running || !input.plane.processes.every((p) => p.running)) return;
    await kubectl(input.plane, [
      'delete',
      'deployments,replicasets,daemonsets,statefulsets,jobs',
      '--all',
      '-A',
      '--wait=false',
    ]);
    await kubectl(input.plane, ['delete', 'pods', '--all', '-A', '--grace-period=1', '--wait=false']);
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const res = await kubectl(input.plane, ['get', 'pods', '-A', '-o', 'name']);
      if (res.code !== 0 || res.stdout.trim() === '') break;
      await sleep(500);
    }
  });
  // 2. The node's own processes (their process groups).
  for (const name of ['kube-proxy', 'kube-router', 'kube-scheduler', 'kubelet']) {
    await step(`stop ${name}`, async () => {
      await byName(name)?.stop(5_000);
    });
  }
  // 3. Whatever still runs in the pod cgroups (containers are not children of containerd: their shims are).
  await step('kill pod processes', async () => {
    for (let attempt = 0; attempt < 20; attempt++) {
      const pids = cgroupDirs('kubepods')
        .filter((d) => !before.cgroups.includes(d))
        .flatMap(cgroupProcs);
      if (pids.length === 0) return;
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      await sleep(250);
    }
  });
  await step('stop containerd shims', () => {
    for (const { pid } of processesRunning([binaries.shim])) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });
  await step('stop containerd', async () => {
    await byName('containerd')?.stop(5_000);
  });
  for (const p of processes) await step(`stop ${p.name}`, () => p.stop(2_000).then(() => undefined));

  // 4. Mounts under our directories (volumes, netns pins, overlay rootfs), deepest first.
  await step('unmount', async () => {
    for (let attempt = 0; attempt < 3; attempt++) {
      const ours = mountPoints()
        .filter((m) => [NODE_STATE_DIR, NODE_RUN_DIR].some((d) => m === d || m.startsWith(`${d}/`)))
        .sort((a, b) => b.length - a.length);
      if (ours.length === 0) return;
      for (const m of ours) {
        if ((await host('umount', [m])).code !== 0) await host('umount', ['-l', m]);
      }
    }
  });
  await step('remove pod cgroups', () => {
    for (const dir of cgroupDirs('kubepods')) if (!before.cgroups.includes(dir)) removeCgroupTree(dir);
  });
  // 5. Network: the bridge (the pods' veths went with their namespaces), iptables, ipsets.
  await step('remove bridge', async () => {
    if (linkExists(NODE_NETWORK.bridge)) await hostOrThrow('ip', ['link', 'del', NODE_NETWORK.bridge]);
  });
  await step('remove iptables chains', () => removeNewChains(before.chains));
  await step('remove ipsets', () => removeNewIpsets(before.ipsets));
  // kube-proxy's NAT and the pods' connections live on in the kernel's connection tracking until they expire.
  await step('remove conntrack entries', () =>
    removeConntrackEntries([NODE_NETWORK.clusterCidr, SERVICE_CLUSTER_IP_RANGE]),
  );
  // 6. Sysctls the kubelet changed, and files it or containerd wrote to fixed paths.
  await step('restore sysctls', async () => {
    for (const [name, value] of Object.entries(before.sysctls)) await writeFile(`/proc/sys/${name}`, value);
  });
  await step('remove container log links', () => removeLogLinks(input.paths.podLogs));
  await step('remove state', async () => {
    for (const path of FIXED_PATHS)
      if (!before.existing.includes(path)) await rm(path, { recursive: true, force: true });
    await rm(NODE_STATE_DIR, { recursive: true, force: true });
    await rm(NODE_RUN_DIR, { recursive: true, force: true });
  });
}

/** KUBERNETES_SERVICE_IP:443 → the API server on loopback; a failed connection closes its peer, never throws. */
async function forwardApiServer(api: URL): Promise<{ close(): Promise<void> }> {
  const connections = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = connect(Number(api.port), api.hostname);
    for (const s of [inbound, outbound]) {
      connections.add(s);
      s.once('close', () => connections.delete(s));
    }
    inbound.on('error', () => outbound.destroy());
    outbound.on('error', () => inbound.destroy());
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(443, KUBERNETES_SERVICE_IP, () => resolve());
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of connections) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The kubelet links /var/log/containers/* (a fixed path) to our pod logs. */
function removeLogLinks(podLogs: string): Promise<void> {
  const dir = '/var/log/containers';
  if (!existsSync(dir)) return Promise.resolve();
  const removals: Promise<void>[] = [];
  for (const entry of readdirSync(dir)) {
    try {
      if (readlinkSync(join(dir, entry)).startsWith(podLogs)) removals.push(rm(join(dir, entry), { force: true }));
    } catch {
      // Not a link.
    }
  }
  return Promise.all(removals).then(() => undefined);
}
