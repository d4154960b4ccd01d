/**
 * `agentfence cleanup`: removes what the controller created outside Helm's knowledge (see operator/cleanup.ts).
 * The chart runs it as a post-delete hook Job under a ServiceAccount and RBAC of its own; run it by hand after
 * uninstalling without hooks.
 */
import { parseArgs } from 'node:util';
import type { CommandContext } from './main.ts';
import { connect, kubeTarget } from './flags.ts';
import { createLogger, isLogLevel } from '../lib/log.ts';
import { cleanup, type CleanupConfig } from '../operator/cleanup.ts';
import { CONTROLLER } from '../operator/defaults.ts';

const HELP = `Usage: agentfence cleanup [flags]

Deletes, after the controller is gone, every object it created: the NetworkPolicies, CiliumNetworkPolicies,
AgentEntitlements and agentfence-ca ConfigMaps it labelled app.kubernetes.io/managed-by=agentfence in every
namespace, and its signing-key and serving-certificate Secrets and Lease in its own namespace. Keeps the CRDs
and every AgentPolicy. Prints what it deleted, by kind.

Flags:
  --kubeconfig PATH        use this kubeconfig (default: $KUBECONFIG, else in-cluster)
  --namespace NS           the controller's namespace (default $POD_NAMESPACE)
  --network-provider P     kubernetes | cilium (cilium: CiliumNetworkPolicies too; default kubernetes)
  --keys-secret NAME       signing keys Secret (default ${CONTROLLER.keysSecretName})
  --cert-secret NAME       serving certificate Secret (default ${CONTROLLER.certSecretName})
  --log-level LEVEL        debug | info | warn | error (default info)
`;

export async function cleanupCommand(ctx: CommandContext): Promise<number> {
  const { values } = parseArgs({
    args: ctx.argv,
    strict: true,
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'network-provider': { type: 'string', default: 'kubernetes' },
      'keys-secret': { type: 'string', default: CONTROLLER.keysSecretName },
      'cert-secret': { type: 'string', default: CONTROLLER.certSecretName },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    ctx.stdout(HELP);
    return 0;
  }
  const namespace = values.namespace ?? ctx.env.POD_NAMESPACE;
  if (!namespace) throw new Error('--namespace (or POD_NAMESPACE) is required: the controller namespace');
  const provider = values['network-provider'];
  if (provider !== 'kubernetes' && provider !== 'cilium')
    throw new Error(`--network-provider must be kubernetes or cilium (got '${provider}')`);
  const level = values['log-level'];
  if (!isLogLevel(level)) throw new Error(`--log-level must be one of debug, info, warn, error (got '${level}')`);
  const config: CleanupConfig = {
    namespace,
    networkProvider: provider,
    keysSecretName: values['keys-secret'],
    certSecretName: values['cert-secret'],
    leaseName: CONTROLLER.leaseName,
  };
  const client = await connect(kubeTarget(values.kubeconfig, ctx.env));
  try {
    const report = await cleanup(client, config, createLogger({ level, fields: { component: 'cleanup' } }));
    const kinds = Object.entries(report).map(([kind, n]) => `${kind}: ${n}`);
    ctx.stdout(`deleted ${kinds.length > 0 ? kinds.join(', ') : 'nothing (already clean)'}\n`);
  } finally {
    client.close();
  }
  return 0;
}
