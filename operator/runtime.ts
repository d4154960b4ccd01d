/**
 * The controller process, assembled. Every replica serves the webhook, identity and entitlement distribution from
 * its caches; only the Lease holder writes desired state (policies → entitlements and NetworkPolicies) and rotates
 * signing keys. The admission handler and the leader-only tasks (policy reconciler, CA bundles, certificates) are
 * passed in by the one assembly, startController() in controller.ts; nothing else calls this.
 */
import express, { type RequestHandler } from 'express';
import type { Registry } from 'prom-client';
import { LABEL_INJECT } from '../lib/api/constants.ts';
import type { AgentEntitlement } from '../lib/api/types.generated.ts';
import type { Logger } from '../lib/log.ts';
import { counter } from '../lib/metrics.ts';
import { sleep } from '../lib/sleep.ts';
import { startHealthServer, type HealthServer } from '../lib/health.ts';
import { KubeApiError, type KubeClient, type KubeObject } from '../lib/kube/client.ts';
import { writeStatus } from '../lib/kube/apply.ts';
import { Informer } from '../lib/kube/informer.ts';
import { LeaderElector, type LeaderTerm } from '../lib/kube/leader.ts';
import { createAgentVerifier, type AgentVerifier } from '../lib/verify/index.ts';
import { EntitlementHub, type PodKey } from './distribution/hub.ts';
import { CredentialStore } from './credentials.ts';
import { AckNotRecordedYet, createDistributionRouter } from './distribution/http.ts';
import { cachedIdentityCluster } from './identity/cached-cluster.ts';
import { IdentityExchange, type PodIdentity } from './identity/exchange.ts';
import { createIdentityApp } from './identity/http.ts';
import { TokenIssuer } from './identity/issuer.ts';
import { publicJwks, type KeySet } from './identity/keys.ts';
import { SigningKeyStore } from './identity/keystore.ts';
import { startServingServer, type ServingCertSource, type ServingServer } from './certs/serving.ts';
import { RESOURCES } from '../lib/kube/resources.ts';
import type { InjectorConfig } from '../webhook/inject.ts';

export type AgentPod = KubeObject & PodIdentity;
export type AgentEntitlementObject = KubeObject & AgentEntitlement;

export interface RuntimeConfig {
  namespace: string;
  podName: string;
  listen: { host: string; port: number };
  adminListen: { host: string; port: number };
  issuerUrl: string;
  trustDomain: string;
  keysSecretName: string;
  leaseName: string;
  /** What the webhook injects; the token exchange issues identities only to pods carrying exactly that. */
  injector: InjectorConfig;
  /** Earlier injector configurations whose pods still get identities (a sidecar image rollout). */
  acceptedInjectors?: readonly InjectorConfig[];
  /** Entitlement stream heartbeat (default 15 s); sidecars fail closed after their staleness bound. */
  heartbeatMs?: number;
  /** Leader election timing (client-go defaults: 15 s lease, 10 s renew deadline, 2 s retry). */
  lease?: { durationMs: number; renewDeadlineMs: number; retryPeriodMs: number };
}

/** What the leader-only and admission parts get to work with. */
export interface RuntimeContext {
  config: RuntimeConfig;
  client: KubeClient;
  logger: Logger;
  registry: Registry;
  pods: Informer<AgentPod>;
  entitlements: Informer<AgentEntitlementObject>;
  /** Entitlement distribution: the leader's reconciler publishes its compile output here (hub.ts). */
  hub: EntitlementHub;
  /** Credential Secrets (labelled only): values for the hub, names and versions for the reconciler. */
  credentials: CredentialStore;
}

export interface LeaderTask {
  name: string;
  /**
   * Runs while this replica leads; must stop when `signal` aborts. Writes go through
   * `fencedClient(client, term)` (lib/kube/fenced.ts), so none starts once the lease is no longer fresh.
   */
  run(signal: AbortSignal, term?: LeaderTerm): Promise<void>;
  /** Readiness of this task's caches on every replica (informers it started). */
  ready?(): boolean;
}

/** The parts startController() adds to the runtime. */
export interface RuntimeParts {
  /** The admission handler (router), mounted at /mutate-pods. */
  admission: RequestHandler;
  /** Leader-only work besides key rotation, e.g. the policy reconciler; built with the shared caches. */
  leaderTasks: (ctx: RuntimeContext) => LeaderTask[];
}

export interface RunningOperator {
  serving: ServingServer;
  health: HealthServer;
  keys: SigningKeyStore;
  hub: EntitlementHub;
  credentials: CredentialStore;
  pods: Informer<AgentPod>;
  entitlements: Informer<AgentEntitlementObject>;
  isLeader(): boolean;
  stop(): Promise<void>;
}

export async function startOperator(
  ctx: Omit<RuntimeContext, 'pods' | 'entitlements' | 'hub' | 'credentials'>,
  certs: ServingCertSource,
  parts: RuntimeParts,
): Promise<RunningOperator> {
  const { config, client, logger, registry } = ctx;
  const pods = new Informer<AgentPod>({
    client,
    resource: RESOURCES.pods,
    labelSelector: `${LABEL_INJECT}=true`,
    name: 'agent-pods',
    logger,
    registry,
  });
  const entitlements = new Informer<AgentEntitlementObject>({
    client,
    resource: RESOURCES.agentEntitlements,
    name: 'agententitlements',
    logger,
    registry,
  });
  const keys = new SigningKeyStore({
    client,
    namespace: config.namespace,
    secretName: config.keysSecretName,
    logger,
    registry,
  });
  const credentials = new CredentialStore({ client, logger, registry });
  const hub = new EntitlementHub(config.heartbeatMs, credentials);
  // A rotated Secret reaches sidecars by two paths that meet here: the reconciler writes the new version into
  // the entitlement (a new revision), and this replica's Secret cache delivers the value for it.
  credentials.onChange(() => hub.refreshCredentials());
  entitlements.on({
    add: (ae) => hub.upsert(ae),
    update: (_, ae) => hub.upsert(ae),
    delete: (ae) => hub.remove(ae.metadata.namespace ?? '', ae.spec.podName),
  });
  for (const informer of [pods, entitlements]) informer.start();
  credentials.start();
  keys.start();
  hub.start();

  const issuer = new TokenIssuer({
    issuer: config.issuerUrl,
    trustDomain: config.trustDomain,
    keys: () => keys.keys(),
  });
  // Our own tokens are verified against the live key set, not a fetched copy; one verifier per key set.
  let verifierFor: { set: KeySet; verifier: AgentVerifier } | undefined;
  const selfVerifier: AgentVerifier = {
    verify(token) {
      const set = keys.keys();
      if (verifierFor?.set !== set) {
        const jwks = publicJwks(set);
        verifierFor = {
          set,
          verifier: createAgentVerifier({
            issuer: config.issuerUrl,
            audience: config.issuerUrl,
            jwks,
            trustDomain: config.trustDomain,
          }),
        };
      }
      return verifierFor.verifier.verify(token);
    },
  };
  const tokenReviews = counter(registry, {
    name: 'agentfence_identity_token_reviews_total',
    help: 'Presented service-account tokens that missed the review cache: reviewed (a TokenReview was sent), review_failed, or refused without a review (malformed, cached_refusal, rate_limited).',
    labelNames: ['outcome'],
  });
  const exchange = new IdentityExchange({
    onReview: (outcome) => tokenReviews.inc({ outcome }),
    cluster: cachedIdentityCluster(client, pods, entitlements),
    issuer,
    selfVerifier,
    issuerUrl: config.issuerUrl,
    trustDomain: config.trustDomain,
    injector: config.injector,
    ...(config.acceptedInjectors ? { acceptedInjectors: config.acceptedInjectors } : {}),
  });
  const identityResults = counter(registry, {
    name: 'agentfence_identity_requests_total',
    help: 'Identity and audience token requests, by endpoint and result (issued or a refusal code).',
    labelNames: ['endpoint', 'result'],
  });

  const app = express();
  app.disable('x-powered-by');
  app.use('/mutate-pods', parts.admission);
  app.use((req, res, next) => {
    // Until the signing keys are loaded nothing can be issued or verified: answer 503, not 500.
    if (!keys.ready() && req.path.startsWith('/v1/')) {
      res
        .status(503)
        .setHeader('retry-after', '1')
        .json({ error: 'keys_unavailable', message: 'signing keys are not loaded yet' });
      return;
    }
    next();
  });
  app.use(express.json({ limit: '16kb' }));
  app.use(
    createDistributionRouter({
      hub,
      verifier: selfVerifier,
      ready: () => entitlements.hasSynced(),
      logger,
      onAck: (pod, revision) => recordAck(client, entitlements, hub, pod, revision),
    }),
  );
  app.use(
    createIdentityApp({
      exchange,
      issuerUrl: config.issuerUrl,
      keys: () => keys.keys(),
      logger,
      onResult: (endpoint, result) => identityResults.inc({ endpoint, result }),
    }),
  );

  const serving = await startServingServer({ ...config.listen, certs, handler: app, logger });
  const tasks = parts.leaderTasks({ ...ctx, pods, entitlements, hub, credentials });
  const elector = new LeaderElector({
    client,
    namespace: config.namespace,
    name: config.leaseName,
    identity: config.podName,
    logger,
    registry,
    ...(config.lease
      ? {
          leaseDurationMs: config.lease.durationMs,
          renewDeadlineMs: config.lease.renewDeadlineMs,
          retryPeriodMs: config.lease.retryPeriodMs,
        }
      : {}),
    onStartedLeading: async (signal, term) => {
      logger.info('leading', { identity: config.podName });
      await Promise.all([keyRotationLoop(keys, term, logger), ...tasks.map((t) => t.run(signal, term))]);
    },
    onStoppedLeading: () => logger.info('stopped leading', { identity: config.podName }),
  });
  elector.start();

  const health = await startHealthServer({
    ...config.adminListen,
    registry,
    logger,
    readiness: {
      caches: () => pods.hasSynced() && entitlements.hasSynced() && credentials.hasSynced(),
      keys: () => keys.ready(),
      ...Object.fromEntries(tasks.map((t) => [t.name, () => t.ready?.() ?? true])),
    },
  });

  return {
    serving,
    health,
    keys,
    hub,
    pods,
    entitlements,
    credentials,
    isLeader: () => elector.isLeader(),
    async stop() {
      await elector.stop();
      await serving.close();
      await health.close();
      hub.stop();
      await Promise.all([pods.stop(), entitlements.stop(), credentials.stop(), keys.stop()]);
    },
  };
}

/** Resolves when the signal aborts (at once if it already has). */
export function untilAborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

/** Leader loop: rotate, then sleep until the next rotation step or leadership ends. */
export async function keyRotationLoop(
  keys: Pick<SigningKeyStore, 'rotate'>,
  term: LeaderTerm,
  logger: Logger,
): Promise<void> {
  const { signal } = term;
  while (!signal.aborted) {
    let waitMs: number;
    try {
      waitMs = await keys.rotate(term);
    } catch (err) {
      logger.error('signing key rotation failed', { err });
      waitMs = 5_000;
    }
    await sleep(waitMs, signal);
  }
}

/** How long an acknowledgement of a published revision waits for its object to be written before asking for a retry. */
const ACK_RECORD_WAIT_MS = 5_000; // under the sidecar's 10 s ack timeout

/**
 * A sidecar reported the revision it enforces: reflect it in the AgentEntitlement's status (only when changed).
 * The leader delivers a compiled revision before its object is written; an acknowledgement of that revision
 * waits for the object (an earlier status write would record "out of sync" against the older spec and stay so),
 * and fails (the sidecar retries) if it is not written in time.
 */
async function recordAck(
  client: KubeClient,
  entitlements: Informer<AgentEntitlementObject>,
  hub: EntitlementHub,
  pod: PodKey,
  revision: string,
): Promise<void> {
  let current = entitlements.get(`${pod.namespace}/${pod.podName}`);
  if (
    current?.spec.revision !== revision &&
    revision !== '' &&
    hub.entitlementFor(pod).spec.revision === revision &&
    !(await hub.whenRecorded(pod, revision, ACK_RECORD_WAIT_MS))
  )
    throw new AckNotRecordedYet('the acknowledged revision is not written yet');
  current = entitlements.get(`${pod.namespace}/${pod.podName}`);
  if (!current || current.spec.podUID !== pod.podUID) return; // not compiled yet, or an earlier pod's
  const status = {
    ...current.status,
    observedGeneration: current.metadata.generation ?? 0,
    enforcedRevision: revision,
    inSync: revision === current.spec.revision,
  };
  try {
    await writeStatus(client, RESOURCES.agentEntitlements, current, status);
  } catch (err) {
    // The object changed under the cached copy (the spec write that carries this revision, say): the sidecar
    // retries and the next attempt writes against the newer copy.
    if (err instanceof KubeApiError && err.status === 409) throw new AckNotRecordedYet('the object changed; retry');
    throw err;
  }
}
