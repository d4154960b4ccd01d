/**
 * The sidecar process, assembled: identity (controller mode), entitlements (static file or controller stream),
 * the fail-closed staleness bound, the proxy, the audit stream and the admin endpoints.
 * Ready (and the pod's startup probe passes) only once identity and a snapshot are both present.
 */
import { readFile } from 'node:fs/promises';
import type { AgentEntitlement } from '../lib/api/types.generated.ts';
import { startHealthServer, type HealthServer } from '../lib/health.ts';
import type { Logger } from '../lib/log.ts';
// Not prom-client: the sidecar's metrics cost a few kB instead of ~17 MB resident in every pod (lib/prom-text.ts).
import { counter, createRegistry, gauge, type Registry } from '../lib/prom-text.ts';
import { fetchWithCA, jsonFetchWithCA } from '../lib/verify/fetch-with-ca.ts';
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
import { InboundGate } from './inbound.ts';
import { InboundPolicy } from './inbound-policy.ts';
import type { Gate } from '../lib/inbound/gates.ts';
import { createAgentVerifier, type AgentVerifier } from '../lib/verify/index.ts';
import type { Resolver } from './addresses.ts';
import { defaultJwksUri } from '../lib/identity/claims.ts';

export interface SidecarConfig {
  listen: { host: string; port: number };
  adminListen: { host: string; port: number };
  mode:
    { kind: 'static'; file: string } | { kind: 'controller'; controllerUrl: string; tokenFile: string; caFile: string };
  /** The inbound gates (webhook-assigned `--inbound`); absent or empty: no gate. */
  inbound?: {
    host: string;
    gates: Gate[];
    /** Tests: listen on these ports instead of the gates' own (several pods on one host). */
    listenPorts?: number[];
    /** Tests: where the app listens (default 127.0.0.1). */
    appHost?: string;
  };
  /** Without a snapshot or heartbeat for this long, everything is denied. */
  maxStalenessMs: number;
  pod: { name: string; namespace: string };
  /** Where the trust bundle (public roots + pod CA) is written for the app containers; none: not written. */
  trustBundleDir?: string;
}

export interface RunningSidecar {
  proxyUrl: string;
  /** The gates' bound ports (order of config.inbound.gates). */
  gatePorts: number[];
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
  deps: {
    audit?: AuditSink;
    resolver?: Resolver;
    registry?: Registry;
    /** Fetch for user issuers' JWKS (tests: a private CA). */
    userFetch?: typeof fetch;
    /** Static mode: how agent tokens are verified (controller mode builds it from the controller's JWKS). */
    agentVerifier?: { issuer: string; verifier: AgentVerifier };
  } = {},
): Promise<RunningSidecar> {
  const registry = deps.registry ?? createRegistry();
  const audit = deps.audit ?? createAuditSink();
  let entitlement: AgentEntitlement | undefined;
  let matcher: Matcher | undefined;
  let inboundPolicy: InboundPolicy | undefined;
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
  const proxyRef: { current?: FenceProxy; gate?: InboundGate } = {};
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
      inboundPolicy = new InboundPolicy(next);
      proxyRef.current?.revoke();
      proxyRef.gate?.revoke();
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
      fetch: jsonFetchWithCA(caPem),
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
          proxyRef.gate?.revoke();
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
  gauge(registry, {
    name: 'agentfence_sidecar_identity_expiry_seconds',
    help: 'Seconds until the agent identity token expires (0: none; the sidecar fails closed).',
    labelNames: [],
    collect() {
      this.set(identity?.current()?.secondsToExpiry ?? 0);
    },
  });
  gauge(registry, {
    name: 'agentfence_sidecar_entitlement_age_seconds',
    help: 'Seconds since the last snapshot or heartbeat.',
    labelNames: [],
    collect() {
      this.set(lastContact ? (Date.now() - lastContact) / 1000 : 0);
    },
  });
  gauge(registry, {
    name: 'agentfence_sidecar_tls_leaf_mints_total',
    help: 'Interception leaf certificates minted (cache misses); a cached name costs no minting.',
    labelNames: [],
    collect() {
      this.set(podCA.minted());
    },
  });
  gauge(registry, {
    name: 'agentfence_sidecar_audit_dropped_total',
    help: 'Audit lines dropped because stdout could not keep up.',
    labelNames: [],
    collect() {
      this.set(audit.dropped());
    },
  });
  gauge(registry, {
    name: 'agentfence_sidecar_entitlement_revision_info',
    help: 'The entitlement revision enforced (value 1); absent while failing closed.',
    labelNames: ['revision'],
    collect() {
      this.reset();
      if (matcher) this.set({ revision: matcher.revision }, 1);
    },
  });

  // Agent tokens presented at the gate are verified against the controller's JWKS for this pod's own SPIFFE ID,
  // once the identity (and with it the issuer) is known.
  let agentVerifier = deps.agentVerifier;
  const controllerMode = config.mode.kind === 'controller' ? config.mode : undefined;
  const jwksFetch = controllerMode ? fetchWithCA(await readFile(controllerMode.caFile, 'utf8')) : undefined;
  const verifierNow = (): { issuer: string; verifier: AgentVerifier } | undefined => {
    if (agentVerifier || !identity || !controllerMode) return agentVerifier;
    const id = identity.current();
    const issuer = identity.issuer();
    if (!id || !issuer) return undefined;
    agentVerifier = {
      issuer,
      verifier: createAgentVerifier({
        issuer,
        audience: id.spiffeID,
        jwksUri: defaultJwksUri(controllerMode.controllerUrl),
        ...(jwksFetch ? { fetch: jwksFetch } : {}),
      }),
    };
    return agentVerifier;
  };
  const gate =
    config.inbound && config.inbound.gates.length > 0
      ? new InboundGate({
          host: config.inbound.host,
          gates: config.inbound.gates,
          ...(config.inbound.listenPorts ? { listenPorts: config.inbound.listenPorts } : {}),
          ...(config.inbound.appHost ? { appHost: config.inbound.appHost } : {}),
          policy: () => (matcher ? inboundPolicy : undefined),
          self: agentView,
          agentVerifier: verifierNow,
          ...(deps.userFetch ? { userFetch: deps.userFetch } : {}),
          audit,
          logger,
          registry,
        })
      : undefined;
  proxyRef.current = proxy;
  proxyRef.gate = gate;
  const { url: proxyUrl } = await proxy.listen();
  let gatePorts: number[];
  try {
    gatePorts = (await gate?.listen()) ?? [];
  } catch (err) {
    await proxy.close();
    await gate?.close();
    throw err;
  }
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
    await gate?.close();
    throw err;
  }
  logger.info('sidecar listening', { proxy: proxyUrl, admin: health.url, mode: config.mode.kind, gates: gatePorts });
  return {
    proxyUrl,
    gatePorts,
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
      await gate?.close();
      await health.close();
      audit.flush();
    },
  };
}
