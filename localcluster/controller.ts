/**
 * The controller runtime on loopback, for the demo and the integration tests: its own CA and serving
 * certificate for 127.0.0.1, a free port (the issuer URL must be known before the server listens), and the
 * caller's extensions.
 */
import type { Registry } from 'prom-client';
import type { KubeClient } from '../lib/kube/client.ts';
import { createRegistry } from '../lib/metrics.ts';
import { silentLogger, type Logger } from '../lib/log.ts';
import { createCertificateAuthority, issueCertificate } from '../lib/tls/pki.ts';
import { freePort } from './controlplane.ts';
import { startOperator, type RunningOperator, type RuntimeExtensions } from '../operator/runtime.ts';
import { staticCertificates } from '../operator/serving.ts';
import { CONTROLLER } from '../operator/defaults.ts';

export interface LocalController {
  operator: RunningOperator;
  issuerUrl: string;
  caPem: string;
  registry: Registry;
}

export async function startLocalController(options: {
  client: KubeClient;
  namespace: string;
  podName?: string;
  heartbeatMs?: number;
  registry?: Registry;
  logger?: Logger;
  extensions?: (env: { registry: Registry; issuerUrl: string }) => RuntimeExtensions;
}): Promise<LocalController> {
  const ca = await createCertificateAuthority('agentfence-test-controller-ca', 1);
  const serving = await issueCertificate(ca, {
    commonName: 'controller',
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
    validityDays: 1,
  });
  const port = await freePort();
  const issuerUrl = `https://127.0.0.1:${port}`;
  const registry = options.registry ?? createRegistry({ defaultMetrics: false });
  const operator = await startOperator(
    {
      config: {
        namespace: options.namespace,
        podName: options.podName ?? 'controller-0',
        listen: { host: '127.0.0.1', port },
        adminListen: { host: '127.0.0.1', port: 0 },
        issuerUrl,
        trustDomain: 'cluster.local',
        keysSecretName: CONTROLLER.keysSecretName,
        leaseName: CONTROLLER.leaseName,
        ...(options.heartbeatMs ? { heartbeatMs: options.heartbeatMs } : {}),
      },
      client: options.client,
      logger: options.logger ?? silentLogger,
      registry,
    },
    staticCertificates({ ...serving, caPem: ca.certPem }),
    options.extensions?.({ registry, issuerUrl }) ?? {},
  );
  return { operator, issuerUrl, caPem: ca.certPem, registry };
}
