/**
 * The controller for `npm run bench:fleet`, in its own process (its RSS is what the benchmark measures): the whole
 * controller as the CLI assembles it (startController), against the benchmark's local control plane, with the
 * chart's defaults for heartbeat and lease. Configured by one JSON argument; prints "ready <adminUrl>" once serving.
 */
import { clientFromKubeconfig } from '../../lib/kube/client.ts';
import { createLogger } from '../../lib/log.ts';
import { createRegistry } from '../../lib/metrics.ts';
import { localInjectorConfig } from '../../localcluster/controller.ts';
import { startController } from '../../operator/controller.ts';
import { staticCertificates } from '../../operator/certs/serving.ts';

export interface FleetControllerConfig {
  kubeconfig: string;
  namespace: string;
  port: number;
  issuerUrl: string;
  tls: { certPem: string; keyPem: string; caPem: string };
}

const config = JSON.parse(process.argv[2] ?? '{}') as FleetControllerConfig;
const logger = createLogger({ level: 'warn', fields: { component: 'controller' } });
const client = await clientFromKubeconfig(config.kubeconfig);
const operator = await startController(
  {
    runtime: {
      namespace: config.namespace,
      podName: 'controller-0',
      listen: { host: '127.0.0.1', port: config.port },
      adminListen: { host: '127.0.0.1', port: 0 },
      issuerUrl: config.issuerUrl,
      trustDomain: 'cluster.local',
      keysSecretName: 'agentfence-signing-keys',
      leaseName: 'agentfence-controller',
      injector: localInjectorConfig(config.issuerUrl),
    },
    reconciler: {},
  },
  { client, logger, registry: createRegistry(), certs: staticCertificates(config.tls) },
);
process.stdout.write(`ready ${operator.health.url}\n`);
process.once('SIGTERM', () => {
  void operator.stop().then(() => {
    client.close();
    process.exit(0);
  });
});
