import { parseArgs } from 'node:util';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { CommandContext } from './main.ts';
import { resolveBinaries, resolveNodeBinDir, type BinariesConfig } from '../localcluster/binaries.ts';
import { startControlPlane } from '../localcluster/controlplane.ts';
import {
  NODE_NETWORK,
  nodeBinariesIn,
  nodeUnsupportedReason,
  startNode,
  type LocalNode,
} from '../localcluster/node.ts';
import { installCRDs, kubectlOrThrow } from '../localcluster/kubectl.ts';
import { createLogger, isLogLevel, type LogLevel } from '../lib/log.ts';
import { packageRoot } from '../lib/paths.ts';

export interface LocalClusterConfig {
  kubeconfigPath?: string;
  binaries: BinariesConfig;
  applyExamples: boolean;
  logLevel: LogLevel;
  node: boolean;
}

const HELP = `Usage: agentfence local-cluster [flags]

Runs etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 in the foreground, installs the
Agentfence CRDs, and prints the kubeconfig and tool paths. Ctrl-C (SIGINT) or SIGTERM stops everything
and removes every temporary file, including the kubeconfig it wrote.

Flags:
  --kubeconfig PATH   also write the admin kubeconfig here (must not exist yet)
  --node              also run a real node (root only): containerd, kubelet, kube-scheduler, kube-proxy, a
                      CNI bridge with no uplink, kube-router enforcing NetworkPolicy and CoreDNS as the
                      cluster DNS; torn down completely on exit
  --no-build          fail instead of building missing binaries from the Go modules
  --log-level LEVEL   debug | info | warn | error (default info)

Environment:
  KUBEBUILDER_ASSETS  use ready etcd, kube-apiserver and kubectl binaries from this directory
  AGENTFENCE_CACHE    where built binaries are cached (default ~/.cache/agentfence)
`;

export function loadLocalClusterConfig(argv: string[], env: CommandContext['env']): LocalClusterConfig | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      kubeconfig: { type: 'string' },
      'no-build': { type: 'boolean', default: false },
      'apply-examples': { type: 'boolean', default: false },
      node: { type: 'boolean', default: false },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const logLevel = values['log-level'];
  if (!isLogLevel(logLevel)) throw new Error(`--log-level must be one of debug, info, warn, error (got '${logLevel}')`);
  const binaries: BinariesConfig = {
    cacheDir: env.AGENTFENCE_CACHE ?? join(homedir(), '.cache', 'agentfence'),
    build: !values['no-build'],
  };
  if (env.KUBEBUILDER_ASSETS) binaries.assetsDir = env.KUBEBUILDER_ASSETS;
  const config: LocalClusterConfig = { binaries, applyExamples: values['apply-examples'], logLevel, node: values.node };
  if (values.kubeconfig !== undefined) config.kubeconfigPath = resolve(values.kubeconfig);
  return config;
}

/** Resolves on the first SIGINT or SIGTERM. */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolveSignal) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolveSignal(signal);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

export async function localClusterCommand(ctx: CommandContext): Promise<number> {
  const config = loadLocalClusterConfig(ctx.argv, ctx.env);
  if (config === 'help') {
    ctx.stdout(HELP);
    return 0;
  }
  if (config.node) {
    const reason = nodeUnsupportedReason();
    if (reason) throw new Error(`--node: ${reason}`);
  }
  const logger = createLogger({ level: config.logLevel, fields: { component: 'local-cluster' } });
  // Register the signal handlers before the slow start, so a Ctrl-C during start still cleans up.
  const signal = untilSignal();
  const binaries = await resolveBinaries(config.binaries);
  const nodeBinDir = config.node ? await resolveNodeBinDir(config.binaries) : undefined;
  const startedAt = Date.now();
  const startOptions: Parameters<typeof startControlPlane>[0] = { binaries, logger };
  if (config.node) startOptions.node = NODE_NETWORK;
  if (config.kubeconfigPath) startOptions.kubeconfigPath = config.kubeconfigPath;
  const plane = await Promise.race([startControlPlane(startOptions), signal.then(() => undefined)]);
  if (!plane) return 130; // interrupted during start: startControlPlane cleans up after itself on failure
  let node: LocalNode | undefined;
  try {
    if (nodeBinDir) {
      const starting = startNode({ plane, binaries: nodeBinariesIn(nodeBinDir), logger });
      const started = await Promise.race([starting, signal.then(() => undefined)]);
      if (!started) {
        // Interrupted: let the start finish (it cleans up itself on failure), then tear the node down.
        await starting.then(
          (n) => n.stop(),
          () => undefined,
        );
        return 130;
      }
      node = started;
    }
    await installCRDs(plane);
    if (config.applyExamples) {
      const out = await kubectlOrThrow(plane, ['apply', '--server-side', '-f', join(packageRoot(), 'examples')]);
      ctx.stdout(out);
      ctx.stdout(await kubectlOrThrow(plane, ['get', 'agentpolicies', '--all-namespaces']));
    }
    const lines = [
      `Local control plane ready in ${((Date.now() - startedAt) / 1000).toFixed(1)} s: ${plane.server}`,
      `  kubeconfig:  ${plane.kubeconfigPath}`,
      `  kubectl:     ${binaries.kubectl}`,
      `  helm:        ${binaries.helm ?? '(not available)'}`,
      `  logs:        ${join(plane.dir, 'logs')}`,
      ...(node
        ? [
            `  node:        ${node.name} (${node.ip}), containerd ${node.containerdSocket}, logs ${node.logsDir}`,
            `  images:      hack/build-image.sh --import ${node.containerdSocket} ${node.binaries.ctr}`,
          ]
        : []),
      '',
      `  export KUBECONFIG=${plane.kubeconfigPath}`,
      '',
      'Press Ctrl-C to stop; everything above is removed on exit.',
      '',
    ];
    ctx.stdout(lines.join('\n'));
    logger.info('local control plane running', { server: plane.server, pid: process.pid });
    const received = await signal;
    logger.info('stopping local control plane', { signal: received });
  } finally {
    await node?.stop();
    await plane.stop();
  }
  return 0;
}
