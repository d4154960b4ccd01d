/** Flag value parsers shared by every subcommand; each error names the flag and the value it got. */
import { clientFromKubeconfig, clientInCluster, type KubeClient } from '../lib/kube/client.ts';

/** Which cluster a command talks to: --kubeconfig, else $KUBECONFIG, else the pod's service account. */
export type KubeTarget = { kubeconfigPath: string } | { inCluster: { host: string; port: string } };

export function kubeTarget(
  kubeconfigFlag: string | undefined,
  env: Readonly<Record<string, string | undefined>>,
): KubeTarget {
  const kubeconfigPath = kubeconfigFlag ?? env.KUBECONFIG;
  if (kubeconfigPath) return { kubeconfigPath };
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT)
    return { inCluster: { host: env.KUBERNETES_SERVICE_HOST, port: env.KUBERNETES_SERVICE_PORT } };
  throw new Error('no cluster: pass --kubeconfig, set KUBECONFIG, or run in a pod');
}

export function connect(target: KubeTarget): Promise<KubeClient> {
  return 'kubeconfigPath' in target ? clientFromKubeconfig(target.kubeconfigPath) : clientInCluster(target.inCluster);
}

export function parseListen(flag: string, value: string): { host: string; port: number } {
  const match = /^(\[[0-9a-fA-F:]+\]|[^:[\]]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (!match?.[1] || !Number.isInteger(port) || port > 65535) {
    throw new Error(`${flag} must be HOST:PORT, like 127.0.0.1:15001 or [::1]:15001 (got '${value}')`);
  }
  return { host: match[1].replace(/^\[|\]$/g, ''), port };
}

/** '60s', '5m', '1h' or a bare number of seconds. */
export function parseDurationFlag(flag: string, value: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(value);
  if (!match) throw new Error(`${flag} must be a duration like 30s, 5m or 1h (got '${value}')`);
  const n = Number(match[1]);
  switch (match[2]) {
    case 'ms':
      return n / 1000;
    case 'm':
      return n * 60;
    case 'h':
      return n * 3600;
    default:
      return n;
  }
}
