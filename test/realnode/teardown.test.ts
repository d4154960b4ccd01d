/**
 * A node leaves nothing behind: the host after `stop()` equals the host before start — processes (the node's
 * own and the cluster DNS in its pod), mounts, network interfaces, network namespaces, every iptables rule and
 * chain (IPv4 and IPv6: kube-router's, kube-proxy's, the kubelet's, the node's guard), nftables tables, ipsets,
 * connection-tracking entries of pod and Service addresses (kube-proxy's NAT), pod cgroups, the sysctls the
 * kubelet and kube-proxy may change, and the fixed paths kubelet/containerd/CNI write to. The same snapshot is
 * checked while the node runs with a pod, a NetworkPolicy and the DNS answering through its Service, so the
 * comparison is known to see the changes.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Binaries } from '../../localcluster/binaries.ts';
import type { NodeBinaries } from '../../localcluster/node.ts';
import { resolveBinaries, resolveNodeBinDir } from '../../localcluster/binaries.ts';
import { startControlPlane } from '../../localcluster/controlplane.ts';
import { kubectlOrThrow } from '../../localcluster/kubectl.ts';
import {
  FIXED_PATHS,
  NODE_SYSCTLS,
  cgroupDirs,
  conntrackEntries,
  host,
  ipsets,
  iptablesRules,
  linkExists,
  mountPoints,
  processesRunning,
  readSysctls,
} from '../../localcluster/host.ts';
import { CLUSTER_DNS_IP } from '../../localcluster/dns.ts';
import { SERVICE_CLUSTER_IP_RANGE } from '../../localcluster/controlplane.ts';
import {
  NODE_NETWORK,
  NODE_RUN_DIR,
  NODE_STATE_DIR,
  PAUSE_IMAGE,
  nodeBinariesIn,
  startNode,
} from '../../localcluster/node.ts';
import { machineSkipReason } from './support.ts';
import { createLogger } from '../../lib/log.ts';

/* eslint-disable no-restricted-properties -- the test reads where the binaries are cached */
const config = {
  cacheDir: process.env.AGENTFENCE_CACHE ?? join(homedir(), '.cache', 'agentfence'),
  build: process.env.AGENTFENCE_NO_BUILD !== '1',
};
/* eslint-enable no-restricted-properties */
const reason = await machineSkipReason(config);
if (reason) process.stderr.write(`\nrealnode-teardown: SKIPPED on this machine: ${reason}\n\n`);

/** PIDs of CoreDNS (it runs in a container: its executable is not a host path, its command line is ours). */
function dnsProcesses(): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('/coredns\0-conf\0');
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Whether anything answers DNS at the cluster DNS address (through kube-proxy's NAT to the CoreDNS pod). */
async function dnsAnswers(): Promise<boolean> {
  const resolver = new Resolver({ timeout: 1000, tries: 1 });
  resolver.setServers([CLUSTER_DNS_IP]);
  return resolver.resolve4('kube-dns.kube-system.svc.cluster.local').then(
    () => true,
    () => false,
  );
}

async function hostState(binaries: string[], sysctls = NODE_SYSCTLS): Promise<Record<string, unknown>> {
  return {
    processes: processesRunning(binaries).map((p) => p.exe),
    dnsProcesses: dnsProcesses().length,
    dns: await dnsAnswers(),
    mounts: mountPoints().filter((m) => /kubelet|containerd|netns|agentfence/.test(m)),
    bridge: linkExists(NODE_NETWORK.bridge),
    links: readdirSync('/sys/class/net').sort(),
    iptables: await iptablesRules('iptables'),
    ip6tables: await iptablesRules('ip6tables'),
    nftables: (await host('nft', ['list', 'tables'])).stdout.split('\n').filter(Boolean).sort(),
    ipsets: await ipsets(),
    conntrack: await conntrackEntries([NODE_NETWORK.clusterCidr, SERVICE_CLUSTER_IP_RANGE]),
    cgroups: cgroupDirs('kubepods'),
    // Those present before: nf_conntrack's appear when its module loads, and a module stays loaded.
    sysctls: readSysctls(sysctls),
    paths: [...FIXED_PATHS, NODE_STATE_DIR, NODE_RUN_DIR].filter((p) => existsSync(p)),
  };
}

describe.skipIf(reason)('local node teardown', () => {
  let binaries: Binaries;
  let nodeBinaries: NodeBinaries;
  // A cold cache builds the binaries here (minutes on 2 cores), outside the test's own timeout.
  beforeAll(async () => {
    binaries = await resolveBinaries(config);
    nodeBinaries = nodeBinariesIn(await resolveNodeBinDir(config));
  }, 60 * 60_000);

  it('leaves the host exactly as it found it, after running a pod with volumes under a NetworkPolicy', async () => {
    const nb = nodeBinaries;
    // Only the node's binaries: other test runs on this machine may run etcd and kube-apiserver meanwhile.
    const ours = [nb.containerd, nb.shim, nb.kubelet, nb.kubeScheduler, nb.kubeProxy, nb.kubeRouter, nb.pause];
    const sysctls = Object.keys(readSysctls(NODE_SYSCTLS));
    const before = await hostState(ours, sysctls);

    const logger = createLogger({ level: 'warn', fields: { component: 'realnode-teardown' } });
    const plane = await startControlPlane({ binaries, logger, node: NODE_NETWORK });
    let during: Record<string, unknown>;
    try {
      const node = await startNode({ plane, binaries: nodeBinaries, logger });
      try {
        const k = (args: string[], input?: string): Promise<string> => kubectlOrThrow(plane, args, input);
        await k(
          ['apply', '-f', '-'],
          JSON.stringify({
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name: 'sleeper', namespace: 'default', labels: { app: 'sleeper' } },
            spec: {
              terminationGracePeriodSeconds: 1,
              containers: [
                {
                  name: 'pause',
                  image: PAUSE_IMAGE,
                  imagePullPolicy: 'Never',
                  volumeMounts: [
                    { name: 'scratch', mountPath: '/scratch' },
                    { name: 'token', mountPath: '/token' },
                  ],
                },
              ],
              volumes: [
                { name: 'scratch', emptyDir: { medium: 'Memory' } },
                {
                  name: 'token',
                  projected: { sources: [{ serviceAccountToken: { path: 'token', expirationSeconds: 600 } }] },
                },
              ],
            },
          }),
        );
        await k(
          ['apply', '-f', '-'],
          JSON.stringify({
            apiVersion: 'networking.k8s.io/v1',
            kind: 'NetworkPolicy',
            metadata: { name: 'deny-all', namespace: 'default' },
            spec: { podSelector: { matchLabels: { app: 'sleeper' } }, policyTypes: ['Ingress', 'Egress'] },
          }),
        );
        await k(['wait', '--for=condition=Ready', 'pod/sleeper', '--timeout=90s']);
        // kube-router programs the policy for the running pod (its per-pod chain appears).
        const deadline = Date.now() + 30_000;
        while (Date.now() < deadline && !(await iptablesRules('iptables')).some((r) => r.includes('KUBE-POD-FW-')))
          await new Promise((r) => setTimeout(r, 250));
        during = await hostState(ours, sysctls);
      } finally {
        await node.stop();
      }
    } finally {
      await plane.stop();
    }

    // The snapshot sees a running node: otherwise "equal afterwards" would prove nothing.
    expect(during.bridge).toBe(true);
    expect(during.iptables).not.toEqual(before.iptables);
    expect(during.ipsets).not.toEqual(before.ipsets);
    expect(during.mounts).not.toEqual(before.mounts);
    expect(during.cgroups).not.toEqual(before.cgroups);
    expect(during.processes).not.toEqual(before.processes);
    // kube-proxy's Service rules (the kube-dns Service has an endpoint), the DNS answering through them, and the
    // connection tracking of that NAT.
    expect((during.iptables as string[]).some((r) => r.startsWith('-A KUBE-SVC-'))).toBe(true);
    expect(during.dns).toBe(true);
    expect(during.dnsProcesses).toBe(1);
    expect(during.conntrack).not.toEqual([]);

    const after = await hostState(ours, sysctls);
    expect(after).toEqual({ ...before, conntrack: [] });
  });
});

// Reported as skipped, with the reason in its name, only where the suite cannot run.
if (reason)
  describe('local node teardown (skipped)', () => it.skip(`skipped on this machine: ${reason}`, () => undefined));
