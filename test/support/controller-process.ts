/**
 * One controller replica as its own process, for fault-injection tests (SIGSTOP/SIGCONT, SIGKILL): the whole
 * controller (startController, as the CLI assembles it) against the test API server.
 * Configured by one JSON argument (see ControllerProcessConfig); prints "ready" on stdout once serving.
 * Started by startControllerProcess() in controller-processes.ts.
 */
import { clientFromKubeconfig } from '../../lib/kube/client.ts';
import { createLogger, isLogLevel } from '../../lib/log.ts';
import { createRegistry } from '../../lib/metrics.ts';
import { startController } from '../../operator/controller.ts';
import { staticCertificates } from '../../operator/certs/serving.ts';
import { TEST_INJECTOR } from './identity-server.ts';

export interface ControllerProcessConfig {
  kubeconfig: string;
  namespace: string;
  podName: string;
  port: number;
  issuerUrl: string;
  trustDomain: string;
  tls: { certPem: string; keyPem: string; caPem: string };
  heartbeatMs: number;
  lease: { durationMs: number; renewDeadlineMs: number; retryPeriodMs: number };
  logLevel: string;
}

const config = JSON.parse(process.argv[2] ?? '{}') as ControllerProcessConfig;
const level = isLogLevel(config.logLevel) ? config.logLevel : 'warn';
const logger = createLogger({ level, fields: { component: 'controller', replica: config.podName } });
const client = await clientFromKubeconfig(config.kubeconfig);
const registry = createRegistry({ defaultMetrics: false });
const operator = await startController(
  {
    runtime: {
      namespace: config.namespace,
      podName: config.podName,
      listen: { host: '127.0.0.1', port: config.port },
      adminListen: { host: '127.0.0.1', port: 0 },
      issuerUrl: config.issuerUrl,
      trustDomain: config.trustDomain,
      keysSecretName: 'agentfence-signing-keys',
      leaseName: 'agentfence-controller',
      heartbeatMs: config.heartbeatMs,
      lease: config.lease,
      injector: TEST_INJECTOR,
    },
    reconciler: {},
  },
  { client, logger, registry, certs: staticCertificates(config.tls) },
);
process.stdout.write(`ready ${operator.health.url}\n`);
const stop = async (): Promise<void> => {
  await operator.stop();
  client.close();
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
