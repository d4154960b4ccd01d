/**
 * The controller's defaults, defined once. The Helm chart installs exactly these (test/integration/chart.test.ts
 * checks the rendered Deployment, Service, RBAC and webhook against them); the `operator` flags, the compiler's
 * default controller endpoint (what the per-namespace baseline lets agents reach), `render`, the demo and
 * `cleanup` read them from here.
 */
export const CONTROLLER = {
  /** The release namespace the README installs into. */
  namespace: 'agentfence-system',
  serviceName: 'agentfence-controller',
  /** The controller pods' labels that the baseline NetworkPolicy selects (the chart's selector labels). */
  podLabels: { 'app.kubernetes.io/name': 'agentfence', 'app.kubernetes.io/component': 'controller' },
  /** TLS: webhook, identity, entitlement distribution. */
  port: 8443,
  /** HTTP: /healthz, /readyz, /metrics. */
  adminPort: 9090,
  leaseName: 'agentfence-controller',
  keysSecretName: 'agentfence-signing-keys',
  certSecretName: 'agentfence-serving-cert',
  webhookConfigName: 'agentfence-sidecar-injector',
} as const;
