/**
 * Lease leader election against the real API server: of two candidates exactly one leads; a leader that steps
 * down hands over at once (released lease), and one that vanishes without releasing is replaced only after the
 * lease expires.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { LeaderElector, type Lease } from '../../lib/kube/leader.ts';
import { cluster, createNamespace, eventually } from '../support/cluster.ts';

let client: KubeClient;
let ns: string;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('kube-leader');
});

afterAll(() => client.close());

const TIMING = { leaseDurationMs: 3000, renewDeadlineMs: 2000, retryPeriodMs: 300 };

function candidate(name: string, identity: string, releaseOnStop = true) {
  const log: string[] = [];
  let signal: AbortSignal | undefined;
  const elector = new LeaderElector({
    client,
    namespace: ns,
    name,
    identity,
    ...TIMING,
    releaseOnStop,
    onStartedLeading: (s) => {
      signal = s;
      log.push('started');
    },
    onStoppedLeading: () => log.push('stopped'),
  });
  return { elector, log, signal: () => signal };
}

const until = (probe: () => boolean, what: string, timeoutMs?: number): Promise<true> =>
  eventually(() => Promise.resolve(probe() ? true : undefined), what, timeoutMs);

describe('LeaderElector (real API server)', () => {
  it('elects exactly one leader and hands over on a graceful stop', async () => {
    const a = candidate('handover', 'a');
    const b = candidate('handover', 'b');
    a.elector.start();
    b.elector.start();
    try {
      await until(() => a.elector.isLeader() || b.elector.isLeader(), 'a leader');
      // Several renew rounds: still exactly one leader, never both.
      for (let i = 0; i < 10; i++) {
        expect(Number(a.elector.isLeader()) + Number(b.elector.isLeader())).toBe(1);
        await new Promise((r) => setTimeout(r, 150));
      }
      const [leader, follower] = a.elector.isLeader() ? [a, b] : [b, a];
      expect(follower.log).toEqual([]);
      const stoppedAt = Date.now();
      await leader.elector.stop();
      expect(leader.log).toEqual(['started', 'stopped']);
      expect(leader.signal()?.aborted).toBe(true);
      await until(() => follower.elector.isLeader(), 'the follower to take over', TIMING.leaseDurationMs);
      // Released, not expired: the follower needed about one retry period, not a lease duration.
      expect(Date.now() - stoppedAt).toBeLessThan(TIMING.leaseDurationMs);
      const lease = await client.get<Lease>(`/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/handover`);
      expect(lease.spec?.holderIdentity).toBe(follower === a ? 'a' : 'b');
      expect(lease.spec?.renewTime).toMatch(/\.\d{6}Z$/);
    } finally {
      await Promise.all([a.elector.stop(), b.elector.stop()]);
    }
  });

  it('waits for the lease to expire when the leader vanishes without releasing it', async () => {
    const a = candidate('expiry', 'a', false);
    a.elector.start();
    await until(() => a.elector.isLeader(), 'a to lead');
    const b = candidate('expiry', 'b');
    b.elector.start();
    try {
      await new Promise((r) => setTimeout(r, 500));
      expect(b.elector.isLeader()).toBe(false);
      const vanishedAt = Date.now();
      await a.elector.stop(); // no release: like a crashed process
      await until(() => b.elector.isLeader(), 'b to take over after expiry', TIMING.leaseDurationMs * 3);
      const waited = Date.now() - vanishedAt;
      expect(waited).toBeGreaterThanOrEqual(TIMING.leaseDurationMs - TIMING.retryPeriodMs * 2);
      // Generous upper bound: a loaded machine may delay polls; the point is "not before expiry".
      expect(waited).toBeLessThan(TIMING.leaseDurationMs * 2);
    } finally {
      await b.elector.stop();
    }
  });
});
