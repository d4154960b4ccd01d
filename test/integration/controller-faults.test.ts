/**
 * Faults the control loop must survive, injected into real controller processes (SIGSTOP/SIGCONT) on the real API
 * server, with real sidecars:
 *  - a pause longer than the staleness bound: the sidecar fails closed, reconnects with backoff during the pause,
 *    and is ready again as soon as the controller answers (not when its stream token expires);
 *  - a replica that stalls while another is healthy: the sidecar notices the silent stream and moves over before
 *    its staleness bound, so it never fails closed;
 *  - a leader paused past its lease while another replica takes over: after it resumes it writes nothing and
 *    delivers nothing it compiled (its sidecars get the record).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, resourcePath, type KubeClient, type KubeObject } from '../../lib/kube/client.ts';
import { RESOURCES } from '../../lib/kube/resources.ts';
import { createNamespace, cluster, eventually, runOrThrow } from '../support/cluster.ts';
import {
  createInjectedPod,
  startTestSidecar,
  startUpstream,
  type TestSidecar,
  workerPolicy,
} from '../support/agents.ts';
import { startReplicaSet, type ReplicaSet } from '../support/controller-processes.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import { silentLogger } from '../../lib/log.ts';
import { TokenIssuer } from '../../operator/identity/issuer.ts';
import { parseKeySet } from '../../operator/identity/keys.ts';
import { KEYS_DATA_KEY } from '../../operator/identity/keystore.ts';
import { controllerEntitlements } from '../../sidecar/entitlements.ts';

const LEASE = { durationMs: 4000, renewDeadlineMs: 3000, retryPeriodMs: 500 };
let client: KubeClient;
let upstream: Awaited<ReturnType<typeof startUpstream>>;
const cleanups: (() => Promise<void> | void)[] = [];

async function leaseHolder(ns: string): Promise<string> {
  const lease = JSON.parse(await runOrThrow(['get', 'lease', 'agentfence-controller', '-n', ns, '-o', 'json'])) as {
    spec?: { holderIdentity?: string };
  };
  return lease.spec?.holderIdentity ?? '';
}

/** One controller set, a namespace with a policy and an agent pod, and its sidecar. */
async function scenario(options: {
  names: string[];
  maxStalenessMs: number;
  trustDomains?: Record<string, string>;
  sidecar?: boolean;
  /** Replicas the front sends connections to at first (default: all). */
  route?: string[];
}): Promise<{ ns: string; system: string; set: ReplicaSet; sidecar?: TestSidecar }> {
  const system = await createNamespace('af-faults-system');
  const ns = await createNamespace('faults');
  const set = await startReplicaSet({
    namespace: system,
    names: options.names,
    heartbeatMs: 500,
    lease: LEASE,
    ...(options.trustDomains ? { trustDomains: options.trustDomains } : {}),
  });
  cleanups.push(() => set.stop());
  if (options.route) set.route(options.route);
  await runOrThrow(['apply', '-f', '-'], workerPolicy(ns, upstream.port));
  const pod = await createInjectedPod(ns, 'worker-0', 'worker');
  if (options.sidecar === false) return { ns, system, set };
  const sidecar = await startTestSidecar({
    ns,
    pod,
    controllerUrl: set.url,
    caPem: set.caPem,
    maxStalenessMs: options.maxStalenessMs,
  });
  cleanups.push(() => sidecar.stop());
  await eventually(async () => ((await sidecar.ready()) ? true : undefined), 'sidecar ready', 30_000);
  return { ns, system, set, sidecar };
}

/**
 * The sidecar's stream client on one replica's own port (not the front), with a token minted from the signing
 * keys the replicas share; records every snapshot.
 */
async function streamOnReplica(
  system: string,
  ns: string,
  podName: string,
  set: ReplicaSet,
  replica: { port: number; trustDomain: string },
): Promise<AgentEntitlement[]> {
  const secret = JSON.parse(
    await runOrThrow(['get', 'secret', 'agentfence-signing-keys', '-n', system, '-o', 'json']),
  ) as { data: Record<string, string> };
  const keys = parseKeySet(Buffer.from(secret.data[KEYS_DATA_KEY] ?? '', 'base64').toString('utf8'));
  const pod = JSON.parse(await runOrThrow(['get', 'pod', podName, '-n', ns, '-o', 'json'])) as {
    metadata: { uid: string };
  };
  const issuer = new TokenIssuer({ issuer: set.url, trustDomain: replica.trustDomain, keys: () => keys });
  const { token } = await issuer.issue({
    namespace: ns,
    agent: 'worker',
    podName,
    podUID: pod.metadata.uid,
    serviceAccountName: 'agent',
    revision: '',
    audience: set.url,
    ttlSeconds: 600,
  });
  const snapshots: AgentEntitlement[] = [];
  const source = controllerEntitlements({
    controllerUrl: `https://127.0.0.1:${replica.port}`,
    caPem: set.caPem,
    token: () => token,
    logger: silentLogger,
    onSnapshot: (ae) => snapshots.push(ae),
    onHeartbeat: () => undefined,
  });
  await source.start();
  cleanups.push(() => source.stop());
  return snapshots;
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  upstream = await startUpstream();
});

// Each scenario's controllers reconcile cluster-wide: stop them before the next scenario starts its own.
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => {
  upstream.close();
  client.close();
});

describe('controller paused longer than the staleness bound', () => {
  it('fails closed, reconnects with backoff during the pause, and is ready again as soon as the controller resumes', async () => {
    const { set, sidecar } = await scenario({ names: ['solo'], maxStalenessMs: 3000 });
    const sc = sidecar as TestSidecar;
    expect((await sc.get(`${upstream.url}/x`)).status).toBe(200);
    const [solo] = set.replicas;
    if (!solo) throw new Error('no replica');
    const connectionsBefore = set.connections.get('solo') ?? 0;
    solo.pause();
    try {
      await eventually(async () => ((await sc.ready()) ? undefined : true), 'fail closed', 15_000);
      const denied = await sc.get(`${upstream.url}/x`);
      expect(denied.status).toBe(403);
      expect(denied.body).toContain('no_entitlements');
      // While the controller is stopped the sidecar notices the silent stream and keeps trying, with backoff.
      await eventually(
        async () => ((await sc.metric('agentfence_sidecar_entitlement_stream_events_total')) >= 3 ? true : undefined),
        'stale stream detected',
      );
      const attemptsSince = (): number => (set.connections.get('solo') ?? 0) - connectionsBefore;
      await eventually(() => Promise.resolve(attemptsSince() >= 2 ? true : undefined), 'reconnect attempts', 20_000);
      const attempts = attemptsSince();
      expect(attempts).toBeLessThan(20); // backoff: not a tight loop
      expect(((await sc.status()).stream as { lastEvent?: string }).lastEvent).toBe('stale');
    } finally {
      solo.resume();
    }
    const resumed = Date.now();
    await eventually(async () => ((await sc.ready()) ? true : undefined), 'ready again after resume', 20_000);
    const recoveredMs = Date.now() - resumed;
    console.log(
      `sidecar ready again ${recoveredMs} ms after the controller resumed (stale-stream bound 1.5 s, backoff ≤ 10 s)`,
    );
    expect((await sc.get(`${upstream.url}/x`)).status).toBe(200);
  });

  it('moves to a healthy replica when its replica stalls, without failing closed', async () => {
    // Every connection of the sidecar (identity and stream) goes to "one"; then "one" stalls and the front sends
    // new connections to "two", as a Service would once "one" fails its readiness probe.
    const { set, sidecar } = await scenario({ names: ['one', 'two'], maxStalenessMs: 6000, route: ['one'] });
    const sc = sidecar as TestSidecar;
    const [one] = set.replicas;
    if (!one) throw new Error('no replica');
    const failClosedBefore = await sc.metric('agentfence_sidecar_fail_closed_total');
    const twoBefore = set.connections.get('two') ?? 0;
    set.route(['two']);
    one.pause();
    try {
      // Within the staleness bound the stream moves to "two"; the sidecar never denies in between.
      await eventually(
        () => ((set.connections.get('two') ?? 0) > twoBefore ? true : undefined),
        'reconnected to two',
        15_000,
      );
      for (let i = 0; i < 20; i++) {
        expect((await sc.get(`${upstream.url}/y`)).status).toBe(200);
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(await sc.metric('agentfence_sidecar_fail_closed_total')).toBe(failClosedBefore);
      expect(await sc.ready()).toBe(true);
    } finally {
      one.resume();
    }
  });
});

describe('a leader paused past its lease', () => {
  it('writes nothing after it resumes, while the new leader converges the cluster', async () => {
    // The two replicas compile different trust domains: every AgentEntitlement names its writer.
    const domains = { first: 'first.test', second: 'second.test' };
    const { ns, system, set } = await scenario({
      names: ['first', 'second'],
      maxStalenessMs: 30_000,
      trustDomains: domains,
      sidecar: false,
    });
    const holder = await eventually(async () => (await leaseHolder(system)) || undefined, 'a leader');
    const old = set.replicas.find((r) => r.name === holder);
    const successor = set.replicas.find((r) => r.name !== holder);
    if (!old || !successor) throw new Error('two replicas expected');
    const spiffe = async (): Promise<string> => {
      const ae = JSON.parse(await runOrThrow(['get', 'ae', 'worker-0', '-n', ns, '-o', 'json'])) as {
        spec: { spiffeID: string };
      };
      return ae.spec.spiffeID;
    };
    const oldDomain = domains[old.name as keyof typeof domains];
    const newDomain = domains[successor.name as keyof typeof domains];
    await eventually(
      async () => ((await spiffe()).includes(oldDomain) ? true : undefined),
      'entitlement written by the first leader',
    );
    // A sidecar's stream on the old leader itself: the leader delivers its compiled entitlements from memory, so
    // this is where a deposed leader's result would show.
    const snapshots = await streamOnReplica(system, ns, 'worker-0', set, { port: old.port, trustDomain: oldDomain });
    await eventually(() => (snapshots.some((e) => e.spec.spiffeID.includes(oldDomain)) ? true : undefined), 'stream');

    old.pause();
    let resumedAt: number;
    const writes: { at: number; spiffeID: string; rv: string }[] = [];
    const watch = new AbortController();
    try {
      await eventually(
        async () => ((await leaseHolder(system)) === successor.name ? true : undefined),
        'takeover',
        20_000,
      );
      await eventually(
        async () => ((await spiffe()).includes(newDomain) ? true : undefined),
        'the new leader rewrote the entitlement',
        20_000,
      );
      // A policy edit while the old leader sleeps: its caches will be stale when it wakes.
      await runOrThrow(['apply', '-f', '-'], workerPolicy(ns, upstream.port + 1));
      await eventually(async () => {
        const ae = JSON.parse(await runOrThrow(['get', 'ae', 'worker-0', '-n', ns, '-o', 'json'])) as {
          spec: { egress?: { ports?: { port: number }[] }[] };
        };
        return ae.spec.egress?.[0]?.ports?.[0]?.port === upstream.port + 1 ? true : undefined;
      }, 'the new leader applied the edit');
      const list = await client.list<KubeObject>(resourcePath(RESOURCES.agentEntitlements, { namespace: ns }));
      void client
        .watch(
          resourcePath(RESOURCES.agentEntitlements, { namespace: ns }),
          { resourceVersion: list.metadata.resourceVersion ?? '0' },
          (event) => {
            const obj = event.object as KubeObject & { spec?: { spiffeID?: string } };
            writes.push({ at: Date.now(), spiffeID: obj.spec?.spiffeID ?? '', rv: obj.metadata.resourceVersion ?? '' });
          },
          watch.signal,
        )
        .catch(() => undefined);
      await new Promise((r) => setTimeout(r, 500));
    } finally {
      old.resume();
      resumedAt = Date.now();
    }
    // Give a deposed leader every chance to write: its informers catch up and enqueue reconciles right away.
    await new Promise((r) => setTimeout(r, 6000));
    watch.abort();
    const byOld = writes.filter((w) => w.spiffeID.includes(oldDomain));
    expect(byOld, `writes by the deposed leader after it resumed at ${resumedAt}`).toEqual([]);
    // Nor did it deliver what it compiled after waking: the edit (port + 1) never reached its sidecar in its
    // trust domain — the sidecar got the new leader's record of it instead.
    const port = (e: AgentEntitlement): number | undefined => e.spec.egress?.[0]?.ports[0]?.port;
    expect(snapshots.filter((e) => e.spec.spiffeID.includes(oldDomain) && port(e) === upstream.port + 1)).toEqual([]);
    await eventually(
      () =>
        snapshots.at(-1)?.spec.spiffeID.includes(newDomain) &&
        port(snapshots.at(-1) as AgentEntitlement) === upstream.port + 1
          ? true
          : undefined,
      'the record delivered by the deposed replica',
    );
    expect(await spiffe()).toContain(newDomain);
    expect(await leaseHolder(system)).toBe(successor.name);
    expect(old.logs()).toMatch(/no longer holds a lease|lost leadership/);
  });
});
