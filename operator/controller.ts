/**
 * The one controller assembly, like controller-runtime's Manager: from one typed config and its dependencies (a
 * client, a logger, a registry, a certificate source) it builds the whole controller — the runtime (identity,
 * distribution, leader election, key rotation), the admission webhook, the policy reconciler, the CA bundles, the
 * Events, and the certificate source's own leader task when it has one. The CLI parses flags into this config; the
 * demo and the tests call the same function with a loopback config, so nothing wires a private subset.
 */
import type { Registry } from 'prom-client';
import type { Logger } from '../lib/log.ts';
import type { KubeClient } from '../lib/kube/client.ts';
import { EventRecorder } from '../lib/kube/events.ts';
import { createAdmissionRouter } from '../webhook/admission.ts';
import { caBundleTask } from './certs/ca-bundles.ts';
import type { CompileOptions } from './compiler/types.ts';
import { policyReconcilerTask } from './reconciler.ts';
import { startOperator, type LeaderTask, type RunningOperator, type RuntimeConfig } from './runtime.ts';
import type { ServingCertSource } from './certs/serving.ts';

/** What the reconciler compiles with besides the trust domain (the runtime's); unset fields take the defaults. */
export type ReconcilerConfig = Omit<CompileOptions, 'now' | 'trustDomain'>;

export interface ControllerConfig {
  runtime: RuntimeConfig;
  /**
   * The policy reconciler's compile options, or false for no reconciler: only for tests that write
   * AgentEntitlements themselves and would otherwise race it.
   */
  reconciler: ReconcilerConfig | false;
}

export interface ControllerDeps {
  client: KubeClient;
  logger: Logger;
  registry: Registry;
  /** The serving certificate; a self-managed source also brings the leader task that issues and rotates it. */
  certs: ServingCertSource & { leaderTask?(): LeaderTask };
}

/** The Events' reportingController: which controller wrote them. */
export const REPORTING_CONTROLLER = 'agentfence.io/operator';

export async function startController(config: ControllerConfig, deps: ControllerDeps): Promise<RunningOperator> {
  const { client, logger, registry, certs } = deps;
  const { runtime, reconciler } = config;
  const events = new EventRecorder({
    client,
    reportingController: REPORTING_CONTROLLER,
    reportingInstance: runtime.podName,
    logger,
    registry,
  });
  return startOperator({ config: runtime, client, logger, registry }, certs, {
    admission: createAdmissionRouter({ config: runtime.injector, logger, registry }),
    leaderTasks: (ctx) => {
      const caBundles = caBundleTask({
        client,
        pods: ctx.pods,
        caBundle: () => certs.current().caPem,
        logger,
        registry,
      });
      certs.onChange(() => caBundles.refresh()); // a rotated CA reaches every agent namespace
      return [
        ...(certs.leaderTask ? [certs.leaderTask()] : []),
        ...(reconciler === false
          ? []
          : [
              policyReconcilerTask({
                client,
                logger,
                registry,
                events,
                entitlements: ctx.entitlements,
                distribution: ctx.hub,
                credentials: ctx.credentials,
                compileOptions: { ...reconciler, trustDomain: runtime.trustDomain },
              }),
            ]),
        caBundles,
      ];
    },
  });
}
