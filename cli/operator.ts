import { parseArgs } from 'node:util';
import { hostname } from 'node:os';
import type { CommandContext } from './main.ts';
import { createLogger, isLogLevel, type LogLevel } from '../lib/log.ts';
import type { KubeClient } from '../lib/kube/client.ts';
import { createRegistry } from '../lib/metrics.ts';
import { isTrustDomain } from '../lib/identity/claims.ts';
import { parseListen, parseDurationFlag } from './flags.ts';
import { connect, kubeTarget, type KubeTarget } from './kube-target.ts';
import { certificatesFromDir } from '../operator/certs/serving.ts';
import { selfManagedCertificates } from '../operator/certs/self-managed.ts';
import { startController, type ControllerConfig } from '../operator/controller.ts';
import { PACKAGE_VERSION } from '../lib/paths.ts';
import { DEFAULT_DNS } from '../operator/compiler/compile.ts';
import { CONTROLLER } from '../operator/defaults.ts';

/** The flags, parsed: the controller's own config plus what the process needs to build its dependencies. */
export interface OperatorConfig {
  controller: ControllerConfig;
  kube: KubeTarget;
  /** Serve tls.crt/tls.key from a directory (cert-manager), or issue and rotate them in a Secret. */
  certs: { dir: string } | { secret: string };
  serviceName: string;
  webhookConfigName: string;
  logLevel: LogLevel;
}

const HELP = `Usage: agentfence controller [flags]   (alias: agentfence operator, the verb's earlier name)

The controller: compiles AgentPolicies into AgentEntitlements and NetworkPolicies (leader only), injects the
sidecar (admission webhook), issues agent identities and streams entitlements to sidecars (every replica).

Flags:
  --kubeconfig PATH            use this kubeconfig (default: $KUBECONFIG, else in-cluster)
  --namespace NS               the controller's own namespace (Lease, Secrets)         [$POD_NAMESPACE]
  --pod-name NAME              this replica's identity for leader election              [$POD_NAME]
  --listen HOST:PORT           TLS: webhook, identity, distribution (default 0.0.0.0:${CONTROLLER.port})
  --admin-listen HOST:PORT     HTTP: /healthz /readyz /metrics (default 0.0.0.0:${CONTROLLER.adminPort})
  --service-name NAME          the controller Service (default ${CONTROLLER.serviceName})
  --issuer-url URL             iss of agent tokens (default https://<service>.<namespace>.svc)
  --trust-domain TD            SPIFFE trust domain (default cluster.local)
  --network-provider P         kubernetes | cilium (default kubernetes)
  --dns-mode M                 kube-dns | node-local (default kube-dns); --dns-ip for node-local
  --cert-dir DIR               serve tls.crt/tls.key from DIR (cert-manager); else --cert-secret
  --cert-secret NAME           self-managed CA and serving certificate in this Secret
  --keys-secret NAME           signing keys Secret (default ${CONTROLLER.keysSecretName})
  --webhook-config-name NAME   MutatingWebhookConfiguration whose caBundle we keep current
  --sidecar-image IMAGE        the image injected as sidecar
  --accept-injection VER=IMAGE also issue identities to pods injected by version VER with sidecar IMAGE (the same
                               settings otherwise), while agent workloads roll to the new sidecar; repeatable
  --sidecar-log-level, --sidecar-max-staleness, --sidecar-cpu-request, --sidecar-memory-request, --sidecar-memory-limit
  --log-level LEVEL            debug | info | warn | error (default info)
`;

export function loadOperatorConfig(argv: string[], env: CommandContext['env']): OperatorConfig | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'pod-name': { type: 'string' },
      listen: { type: 'string', default: `0.0.0.0:${CONTROLLER.port}` },
      'admin-listen': { type: 'string', default: `0.0.0.0:${CONTROLLER.adminPort}` },
      'service-name': { type: 'string', default: CONTROLLER.serviceName },
      'issuer-url': { type: 'string' },
      'trust-domain': { type: 'string', default: 'cluster.local' },
      'network-provider': { type: 'string', default: 'kubernetes' },
      'dns-mode': { type: 'string', default: 'kube-dns' },
      'dns-ip': { type: 'string' },
      'cert-dir': { type: 'string' },
      'cert-secret': { type: 'string' },
      'keys-secret': { type: 'string', default: CONTROLLER.keysSecretName },
      'webhook-config-name': { type: 'string', default: CONTROLLER.webhookConfigName },
      'sidecar-image': { type: 'string', default: 'ghcr.io/agentfence/agentfence:0.1.0' },
      'accept-injection': { type: 'string', multiple: true, default: [] },
      'sidecar-log-level': { type: 'string', default: 'info' },
      'sidecar-max-staleness': { type: 'string', default: '60s' },
      'sidecar-cpu-request': { type: 'string', default: '50m' },
      'sidecar-memory-request': { type: 'string', default: '48Mi' },
      'sidecar-memory-limit': { type: 'string', default: '128Mi' },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const namespace = values.namespace ?? env.POD_NAMESPACE;
  if (!namespace)
    throw new Error('--namespace (or POD_NAMESPACE) is required: the controller keeps its Lease and Secrets there');
  const logLevel = values['log-level'];
  const sidecarLogLevel = values['sidecar-log-level'];
  for (const [flag, v] of [
    ['--log-level', logLevel],
    ['--sidecar-log-level', sidecarLogLevel],
  ] as const) {
    if (!isLogLevel(v)) throw new Error(`${flag} must be one of debug, info, warn, error (got '${v}')`);
  }
  const provider = values['network-provider'];
  if (provider !== 'kubernetes' && provider !== 'cilium') {
    throw new Error(`--network-provider must be kubernetes or cilium (got '${provider}')`);
  }
  const dnsMode = values['dns-mode'];
  if (dnsMode !== 'kube-dns' && dnsMode !== 'node-local')
    throw new Error(`--dns-mode must be kube-dns or node-local (got '${dnsMode}')`);
  if (dnsMode === 'node-local' && !values['dns-ip']) throw new Error('--dns-mode=node-local needs --dns-ip');
  const trustDomain = values['trust-domain'];
  if (!isTrustDomain(trustDomain))
    throw new Error(`--trust-domain '${trustDomain}' is not a valid SPIFFE trust domain`);
  if (values['cert-dir'] && values['cert-secret'])
    throw new Error('--cert-dir and --cert-secret are mutually exclusive');
  const serviceName = values['service-name'];
  const issuerUrl = values['issuer-url'] ?? `https://${serviceName}.${namespace}.svc`;
  if (!/^https:\/\/[^/?#]+$/.test(issuerUrl))
    throw new Error(`--issuer-url must be https://host[:port] with no path (got '${issuerUrl}')`);
  const kube = kubeTarget(values.kubeconfig, env);

  const runtime: ControllerConfig['runtime'] = {
    namespace,
    podName: values['pod-name'] ?? env.POD_NAME ?? hostname(),
    listen: parseListen('--listen', values.listen),
    adminListen: parseListen('--admin-listen', values['admin-listen']),
    issuerUrl,
    trustDomain,
    keysSecretName: values['keys-secret'],
    leaseName: CONTROLLER.leaseName,
    // The sidecar flags, as one object for the webhook and the token exchange: what is injected is what the
    // exchange checks.
    injector: {
      version: PACKAGE_VERSION,
      image: values['sidecar-image'],
      controllerUrl: issuerUrl,
      logLevel: sidecarLogLevel,
      maxStaleness: `${parseDurationFlag('--sidecar-max-staleness', values['sidecar-max-staleness'])}s`,
      resources: {
        cpuRequest: values['sidecar-cpu-request'],
        memoryRequest: values['sidecar-memory-request'],
        memoryLimit: values['sidecar-memory-limit'],
      },
    },
  };
  const accepted = values['accept-injection'].map((spec) => {
    const match = /^([^=\s]+)=(\S+)$/.exec(spec);
    if (!match?.[1] || !match[2]) throw new Error(`--accept-injection must be VERSION=IMAGE (got '${spec}')`);
    return { ...runtime.injector, version: match[1], image: match[2] };
  });
  if (accepted.length > 0) runtime.acceptedInjectors = accepted;
  const dnsIp = values['dns-ip'] ?? '';
  const config: OperatorConfig = {
    controller: {
      runtime,
      reconciler: {
        networkProvider: provider,
        dns: dnsMode === 'node-local' ? { kind: 'addresses', addresses: [dnsIp] } : DEFAULT_DNS,
        // Agents may reach the controller's own pods (webhook-injected sidecars fetch identity and entitlements).
        operator: { namespace, podLabels: { ...CONTROLLER.podLabels }, port: runtime.listen.port },
      },
    },
    kube,
    certs: values['cert-dir']
      ? { dir: values['cert-dir'] }
      : { secret: values['cert-secret'] ?? CONTROLLER.certSecretName },
    serviceName,
    webhookConfigName: values['webhook-config-name'],
    logLevel: logLevel as LogLevel,
  };
  return config;
}

export async function operatorCommand(ctx: CommandContext): Promise<number> {
  const config = loadOperatorConfig(ctx.argv, ctx.env);
  if (config === 'help') {
    ctx.stdout(HELP);
    return 0;
  }
  const { runtime } = config.controller;
  const logger = createLogger({
    level: config.logLevel,
    fields: { component: 'controller', pod: runtime.podName },
  });
  const client: KubeClient = await connect(config.kube);
  const certs =
    'dir' in config.certs
      ? await certificatesFromDir(config.certs.dir, logger)
      : await selfManagedCertificates({
          client,
          namespace: runtime.namespace,
          secretName: config.certs.secret,
          serviceName: config.serviceName,
          webhookConfigName: config.webhookConfigName,
          logger,
        });
  const running = await startController(config.controller, { client, logger, registry: createRegistry(), certs });
  logger.info('controller started', {
    listen: running.serving.url,
    admin: running.health.url,
    issuer: runtime.issuerUrl,
  });
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  logger.info('controller stopping', { signal });
  await running.stop();
  certs.stop();
  client.close();
  return 0;
}
