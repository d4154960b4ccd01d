/**
 * The whole controller on loopback, for the demo and the integration tests: the same startController() the CLI
 * calls, with a loopback config — its own CA and serving certificate for 127.0.0.1, a free port (the issuer URL
 * must be known before the server listens).
 */
import type { Registry } from 'prom-client';
import type { KubeClient } from '../lib/kube/client.ts';
import { createRegistry } from '../lib/metrics.ts';
import { silentLogger, type Logger } from '../lib/log.ts';
import { createCertificateAuthority, issueCertificate } from '../lib/tls/pki.ts';
import { freePort } from './controlplane.ts';
import type { RunningOperator } from '../operator/runtime.ts';
import { startController, type ReconcilerConfig } from '../operator/controller.ts';
import { staticCertificates } from '../operator/certs/serving.ts';
import type { InjectorConfig } from '../webhook/inject.ts';
import { CONTROLLER } from '../operator/defaults.ts';

export interface LocalController {
  operator: RunningOperator;
  issuerUrl: string;
  caPem: string;
  registry: Registry;
  injector: InjectorConfig;
}

/** The injector configuration of the loopback controller (the image never runs: there is no kubelet). */
export function localInjectorConfig(controllerUrl: string, version = 'local'): InjectorConfig {
  return {
    version,
    image: 'ghcr.io/agentfence/agentfence:0.1.0',
    controllerUrl,
    logLevel: 'info',
    maxStaleness: '60s',
    resources: { cpuRequest: '50m', memoryRequest: '48Mi', memoryLimit: '128Mi' },
  };
}

export async function startLocalController(options: {
  client: KubeClient;
  namespace: string;
  podName?: string;
  /** The address to serve on and put in the issuer URL (default 127.0.0.1; a local node's pods use its IP). */
  host?: string;
  heartbeatMs?: number;
  registry?: Registry;
  logger?: Logger;
  /** What the webhook injects and the token exchange checks; default localInjectorConfig(issuerUrl). */
  injector?: (issuerUrl: string) => InjectorConfig;
  /**
   * The reconciler's compile options (default: the compiler's defaults), or false for none: only for tests that
   * write AgentEntitlements themselves.
   */
  reconciler?: ReconcilerConfig | false;
}): Promise<LocalController> {
  const host = options.host ?? '127.0.0.1';
  const ca = await createCertificateAuthority('agentfence-test-controller-ca', 1);
  const serving = await issueCertificate(ca, {
    commonName: 'controller',
    ipAddresses: [host],
    usage: 'server',
    validityDays: 1,
  });
  const port = await freePort();
  const issuerUrl = `https://${host}:${port}`;
  const registry = options.registry ?? createRegistry({ defaultMetrics: false });
  const injector = options.injector?.(issuerUrl) ?? localInjectorConfig(issuerUrl);
  const operator = await startController(
    {
      runtime: {
        namespace: options.namespace,
        podName: options.podName ?? 'controller-0',
        listen: { host, port },
        adminListen: { host: '127.0.0.1', port: 0 },
        issuerUrl,
        trustDomain: 'cluster.local',
        keysSecretName: CONTROLLER.keysSecretName,
        leaseName: CONTROLLER.leaseName,
        injector,
        ...(options.heartbeatMs ? { heartbeatMs: options.heartbeatMs } : {}),
      },
      reconciler: options.reconciler ?? {},
    },
    {
      client: options.client,
      logger: options.logger ?? silentLogger,
      registry,
      certs: staticCertificates({ ...serving, caPem: ca.certPem }),
    },
  );
  return { operator, issuerUrl, caPem: ca.certPem, registry, injector };
}
