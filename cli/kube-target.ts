/**
 * Which cluster a command talks to, for the commands that talk to one. Kept apart from flags.ts: the sidecar parses
 * flags too, and must not load the Kubernetes client (tens of MB of RSS in every agent pod).
 */
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
