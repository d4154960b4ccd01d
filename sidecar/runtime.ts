/**
 * The sidecar process, assembled: identity (controller mode), entitlements (static file or controller stream),
 * the fail-closed staleness bound, the proxy, the audit stream and the admin endpoints.
 * Ready (and the pod's startup probe passes) only once identity and a snapshot are both present.
 */
import { readFile } from 'node:fs/promises';
import { Gauge, type Registry } from 'prom-client';
import type { AgentEntitlement } from '../lib/api/types.generated.ts';
import { startHealthServer, type HealthServer } from '../lib/health.ts';
import type { Logger } from '../lib/log.ts';
import { counter, createRegistry } from '../lib/metrics.ts';
import { fetchWithCA } from '../lib/verify/fetch-with-ca.ts';
import { createAuditSink, type AuditSink } from './audit.ts';
import {
  controllerEntitlements,
  staticEntitlements,
  type ControllerStreamState,
  type EntitlementSource,
} from './entitlements.ts';
import { IdentityClient } from './identity-client.ts';
import { Matcher } from './match.ts';
import { CredentialCache, type DeliveredCredential } from './credentials.ts';
import { FenceProxy } from './proxy.ts';
import { PodCA } from './pod-ca.ts';
import type { Resolver } from './addresses.ts';

export interface SidecarConfig {
  listen: { host: string; port: number };
  adminListen: { host: string; port: number };
  mode:
    { kind: 'static'; file: string } | { kind: 'controller'; controllerUrl: string; tokenFile: string; caFile: string };
  /** Without a snapshot or heartbeat for this long, everything is denied. */
  maxStalenessMs: number;
  pod: { name: string; namespace: string };
  /** Where the trust bundle (public roots + pod CA) is written for the app containers; none: not written. */
  trustBundleDir?: string;
}

export interface RunningSidecar {
  proxyUrl: string;
  adminUrl: string;
  /** The pod's interception CA (its certificate; the key never leaves it). */
  podCA: PodCA;
  registry: Registry;
  matcher(): Matcher | undefined;
  stop(): Promise<void>;
}

export async function startSidecar(
  config: SidecarConfig,
  logger: Logger,
  deps: { audit?: AuditSink; resolver?: Resolver; registry?: Registry } = {},
): Promise<RunningSidecar> {
  const registry = deps.registry ?? createRegistry();
  const audit = deps.audit ?? createAuditSink();
  let entitlement: AgentEntitlement | undefined;
  let matcher: Matcher | undefined;
  let lastContact = 0;
  let stale = false;
  const reloadFailures = counter(registry, {
    name: 'agentfence_sidecar_entitlement_reload_failures_total',
    help: 'Entitlement files or snapshots rejected.',
    labelNames: [],
  });
  const staleness = counter(registry, {
    name: 'agentfence_sidecar_fail_closed_total',
    help: 'Times the sidecar denied everything for lack of a fresh snapshot.',
    labelNames: [],
  });

  const streamEvents = counter(registry, {
    name: 'agentfence_sidecar_entitlement_stream_events_total',
    help: 'Entitlement stream connections and why they ended (connected, refused, unreachable, ended, stale, revision_mismatch).',
    labelNames: ['event'],
  });

  let identity: IdentityClient | undefined;
  let source: EntitlementSource & {
    ack?: (revision: string) => Promise<void>;
    state?: () => ControllerStreamState;
  };
  // Snapshots can arrive before the proxy exists (static mode loads first); revocation goes through this.
  const proxyRef: { current?: FenceProxy } = {};
  const credentials = new CredentialCache();
  const apply = (next: AgentEntitlement, delivered: DeliveredCredential[] = []): void => {
    lastContact = Date.now();
    // Always: a snapshot with the same revision may bring a value the controller's cache did not have before.
    credentials.replace(delivered);
    const changed = next.spec.revision !== entitlement?.spec.revision || !matcher;
    entitlement = next;
    if (stale) logger.info('entitlements fresh again', { revision: next.spec.revision });
    stale = false;
    if (changed) {
      matcher = new Matcher(next);
      proxyRef.current?.revoke();
      logger.info('entitlements applied', { revision: next.spec.revision, rules: next.spec.egress?.length ?? 0 });
    }
    void source.ack?.(next.spec.revision);
  };

  if (config.mode.kind === 'static') {
    source = staticEntitlements({
      file: config.mode.file,
      logger,
      onSnapshot: (e) => apply(e),
      onReloadFailure: () => reloadFailures.inc(),
    });
  } else {
    const caPem = await readFile(config.mode.caFile, 'utf8').catch(() => {
      throw new Error(
        `cannot read the controller CA bundle ${config.mode.kind === 'controller' ? config.mode.caFile : ''}`,
      );
    });
    const identityFailures = counter(registry, {
      name: 'agentfence_sidecar_identity_refresh_failures_total',
      help: 'Failed identity exchanges, by code (a refusal code from the controller, controller_unreachable, token_file_unreadable).',
      labelNames: ['code'],
    });
    identity = new IdentityClient({
      controllerUrl: config.mode.controllerUrl,
      tokenFile: config.mode.tokenFile,
      fetch: fetchWithCA(caPem),
      logger,
      onFailure: (code) => identityFailures.inc({ code }),
    });
    const id = identity;
    source = controllerEntitlements({
      controllerUrl: config.mode.controllerUrl,
      caPem,
      token: () => id.identityToken(),
      logger,
      onSnapshot: apply,
      onHeartbeat: (revision) => {
        lastContact = Date.now();
        // After failing closed (an outage longer than the bound), a heartbeat confirming the revision we hold is
        // fresh data: enforce it again at once instead of waiting for a change or a reconnect.
        if (!matcher && entitlement && entitlement.spec.revision === revision) {
          matcher = new Matcher(entitlement);
          stale = false;
          logger.info('entitlements fresh again', { revision, via: 'heartbeat' });
        }
      },
      // Reconnect before failing closed, so a sidecar whose replica stalls moves to a healthy one in time.
      staleStreamMs: Math.max(1000, Math.floor(config.maxStalenessMs / 2)),
      onStreamEvent: (event) => streamEvents.inc({ event }),
    });
  }

  // Fail closed: no snapshot or heartbeat within the bound → no matcher → every request denied.
  const staleTimer =
    config.mode.kind === 'controller'
      ? setInterval(() => {
          if (!matcher || Date.now() - lastContact <= config.maxStalenessMs) return;
          matcher = undefined;
          stale = true;
          staleness.inc();
          proxyRef.current?.revoke();
          logger.error('no entitlement snapshot within the staleness bound: denying everything', {
            maxStalenessMs: config.maxStalenessMs,
          });
        }, 1000)
      : undefined;
  staleTimer?.unref();

  const agentView = (): { sub: string; pod: string; namespace: string } => ({
    sub: identity?.current()?.spiffeID ?? entitlement?.spec.spiffeID ?? '',
    pod: config.pod.name || entitlement?.spec.podName || '',
    namespace: config.pod.namespace || entitlement?.metadata.namespace || '',
  });
  // The interception CA is generated before the proxy listens; with a bundle directory, the bundle is written
  // before readiness (the app containers' startup waits for it).
  const podCA = await PodCA.create({
    ...(config.trustBundleDir !== undefined ? { bundleDir: config.trustBundleDir } : {}),
    onRotate: (event) => logger.info('interception CA rotated', event),
  });
  podCA.start((err) => logger.error('interception CA rotation failed', { err }));
  const proxy = new FenceProxy({
    ...config.listen,
    interception: podCA,
    matcher: () => matcher,
    agent: agentView,
    ...(identity ? { tokenFor: (aud: string) => identity.tokenFor(aud) } : {}),
    credentialFor: (c) => credentials.header(c),
    audit,
    logger,
    registry,
    ...(deps.resolver ? { resolver: deps.resolver } : {}),
  });
  new Gauge({
    name: 'agentfence_sidecar_identity_expiry_seconds',
    help: 'Seconds until the agent identity token expires (0: none; the sidecar fails closed).',
    registers: [registry],
    collect() {
      this.set(identity?.current()?.secondsToExpiry ?? 0);
    },
  });
  new Gauge({
    name: 'agentfence_sidecar_entitlement_age_seconds',
    help: 'Seconds since the last snapshot or heartbeat.',
    registers: [registry],
    collect() {
      this.set(lastContact ? (Date.now() - lastContact) / 1000 : 0);
    },
  });
  new Gauge({
    name: 'agentfence_sidecar_tls_leaf_mints_total',
    help: 'Interception leaf certificates minted (cache misses); a cached name costs no minting.',
    registers: [registry],
    collect() {
      this.set(podCA.minted());
    },
  });
  new Gauge({
    name: 'agentfence_sidecar_audit_dropped_total',
    help: 'Audit lines dropped because stdout could not keep up.',
    registers: [registry],
    collect() {
      this.set(audit.dropped());
    },
  });
  new Gauge({
    name: 'agentfence_sidecar_entitlement_revision_info',
    help: 'The entitlement revision enforced (value 1); absent while failing closed.',
    labelNames: ['revision'],
    registers: [registry],
    collect() {
      this.reset();
      if (matcher) this.set({ revision: matcher.revision }, 1);
    },
  });

  proxyRef.current = proxy;
  const { url: proxyUrl } = await proxy.listen();
  let health: HealthServer | undefined;
  try {
    if (identity) {
      // Identity first: the stream authenticates with it. start() retries until the controller answers.
      void identity
        .start()
        .then(() => source.start())
        .catch(() => undefined); // rejects only when stopped first
    } else await source.start();
    health = await startHealthServer({
      ...config.adminListen,
      registry,
      logger,
      readiness: {
        identity: () => !identity || identity.current() !== undefined,
        entitlements: () => matcher !== undefined,
        trustBundle: () => podCA.bundleWritten(),
      },
      status: () => ({
        agent: agentView().sub,
        identityExpiresAt: identity?.current()?.expiresAt ?? null,
        revision: matcher?.revision ?? null,
        failClosed: matcher === undefined,
        lastSnapshotAgeSeconds: lastContact ? (Date.now() - lastContact) / 1000 : null,
        identityError: identity?.lastError ?? null,
        identityRefresh: identity?.health() ?? null,
        stream: source.state?.() ?? null,
        // The certificate's fingerprint and expiry only: the key has no way out (it is not extractable).
        // Names and versions only; values stay in memory.
        credentials: credentials.describe(),
        interceptionCA: { fingerprint: podCA.fingerprint(), notAfter: podCA.notAfter().toISOString() },
      }),
    });
  } catch (err) {
    podCA.stop();
    await proxy.close();
    throw err;
  }
  logger.info('sidecar listening', { proxy: proxyUrl, admin: health.url, mode: config.mode.kind });
  return {
    proxyUrl,
    adminUrl: health.url,
    podCA,
    registry,
    matcher: () => matcher,
    async stop() {
      if (staleTimer) clearInterval(staleTimer);
      source.stop();
      identity?.stop();
      podCA.stop();
      await proxy.close();
      await health.close();
      audit.flush();
    },
  };
}
