/**
 * The hub's two sources (operator/distribution/hub.ts): the leader's compiled publication, delivered while its
 * term holds, and the informer's record. Logic only, with in-memory sinks; the real path (controller, API server,
 * the sidecar's stream client) is tested in test/integration/fleet-delivery.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import { EntitlementHub, type PodKey } from '../../operator/distribution/hub.ts';

const pod = (name: string): PodKey => ({ namespace: 'ns', podName: name, podUID: `uid-${name}` });

const ae = (name: string, revision: string, managed = true): AgentEntitlement => ({
  apiVersion: 'agentfence.io/v1alpha1',
  kind: 'AgentEntitlement',
  metadata: { name, namespace: 'ns', ...(managed ? { labels: { [LABEL_MANAGED_BY]: MANAGED_BY } } : {}) },
  spec: {
    podName: name,
    podUID: `uid-${name}`,
    agent: 'a',
    spiffeID: 'spiffe://cluster.local/ns/ns/agent/a',
    revision,
    egress: [],
  },
});

/** A sink recording the revision of every snapshot and heartbeat it gets. */
function sink(): { snapshots: string[]; heartbeats: string[]; pods: string[]; send: () => boolean; close(): void } {
  const s = {
    snapshots: [] as string[],
    heartbeats: [] as string[],
    pods: [] as string[],
    send: (event: 'snapshot' | 'heartbeat', data: string): boolean => {
      const parsed = JSON.parse(data) as { revision: string; entitlement?: AgentEntitlement };
      if (event === 'snapshot') {
        s.snapshots.push(parsed.revision);
        s.pods.push(parsed.entitlement?.spec.podName ?? '');
      } else s.heartbeats.push(parsed.revision);
      return true;
    },
    close: () => undefined,
  };
  return s as unknown as ReturnType<typeof sink>;
}

describe('entitlement hub: the leader publication', () => {
  it('delivers a publication at once, only to the pods whose entitlement changed, each only its own', () => {
    const hub = new EntitlementHub(60_000);
    hub.upsert(ae('a', 'sha256:a1'));
    hub.upsert(ae('b', 'sha256:b1'));
    const [a, b] = [sink(), sink()];
    hub.subscribe(pod('a'), a);
    hub.subscribe(pod('b'), b);
    expect(hub.publish([ae('a', 'sha256:a2'), ae('b', 'sha256:b1')], () => true)).toBe(true);
    expect(a.snapshots).toEqual(['sha256:a1', 'sha256:a2']);
    expect(b.snapshots).toEqual(['sha256:b1']);
    expect([...a.pods, ...b.pods]).toEqual(['a', 'a', 'b']);
  });

  it('an older record arriving after a publication does not bring the older revision back', () => {
    const hub = new EntitlementHub(60_000);
    hub.upsert(ae('a', 'sha256:1'));
    const a = sink();
    hub.subscribe(pod('a'), a);
    hub.publish([ae('a', 'sha256:3')], () => true);
    hub.upsert(ae('a', 'sha256:2')); // a write of an earlier compile landing late
    hub.upsert(ae('a', 'sha256:3')); // the record catches up
    expect(a.snapshots).toEqual(['sha256:1', 'sha256:3']);
  });

  it('a managed entitlement missing from the publication is revoked at once; an unmanaged record still counts', () => {
    const hub = new EntitlementHub(60_000);
    hub.upsert(ae('a', 'sha256:a1'));
    hub.upsert(ae('hand', 'sha256:h1', false));
    const [a, hand] = [sink(), sink()];
    hub.subscribe(pod('a'), a);
    hub.subscribe(pod('hand'), hand);
    hub.publish([], () => true);
    expect(a.snapshots).toEqual(['sha256:a1', '']);
    expect(hand.snapshots).toEqual(['sha256:h1']);
  });

  it('refuses a publication whose term no longer holds, and delivers nothing of one whose term stops holding', () => {
    const hub = new EntitlementHub(60_000);
    hub.upsert(ae('a', 'sha256:record'));
    const a = sink();
    hub.subscribe(pod('a'), a);
    expect(hub.publish([ae('a', 'sha256:deposed')], () => false)).toBe(false);
    expect(a.snapshots).toEqual(['sha256:record']);

    let holds = true;
    hub.publish([ae('a', 'sha256:leader')], () => holds);
    expect(a.snapshots).toEqual(['sha256:record', 'sha256:leader']);
    holds = false; // deposed, paused past its lease, or a renewal late: no step-down code has run yet
    // A sidecar that connects now gets the record, never the publication …
    const late = sink();
    hub.subscribe(pod('a'), late);
    expect(late.snapshots).toEqual(['sha256:record']);
    expect(hub.publishing()).toBe(false);
    // … a later publication of the same term is refused, and nothing is pushed: not the publication, and not the
    // lagging record either (that would widen again what the publication narrowed).
    expect(hub.publish([ae('a', 'sha256:leader2')], () => holds)).toBe(false);
    hub.upsert(ae('a', 'sha256:record')); // an ack's status write: an update event with the same record
    expect(a.snapshots).toEqual(['sha256:record', 'sha256:leader']);
    expect(late.snapshots).toEqual(['sha256:record']);
    // The term ends: every sidecar gets the record.
    hub.withdraw();
    expect(a.snapshots).toEqual(['sha256:record', 'sha256:leader', 'sha256:record']);
    // A renewal that comes through resumes delivery with the next publication.
    hub.publish([ae('a', 'sha256:next')], () => true);
    expect(a.snapshots.at(-1)).toBe('sha256:next');
    expect(late.snapshots.at(-1)).toBe('sha256:next');
  });

  it('withdraw() returns every sidecar to the record', () => {
    const hub = new EntitlementHub(60_000);
    hub.upsert(ae('a', 'sha256:record'));
    const a = sink();
    hub.subscribe(pod('a'), a);
    hub.publish([ae('a', 'sha256:compiled')], () => true);
    hub.withdraw();
    expect(a.snapshots).toEqual(['sha256:record', 'sha256:compiled', 'sha256:record']);
  });

  it('a pod incarnation never gets an entitlement compiled for an earlier pod of the same name', () => {
    const hub = new EntitlementHub(60_000);
    const next = sink();
    hub.subscribe({ namespace: 'ns', podName: 'a', podUID: 'uid-new' }, next);
    hub.publish([ae('a', 'sha256:old-pod')], () => true); // compiled for uid-a
    expect(next.snapshots).toEqual(['']);
  });
});

describe('entitlement hub: whenRecorded', () => {
  it('resolves once the record carries the revision, and false after the timeout', async () => {
    const hub = new EntitlementHub(60_000);
    hub.upsert(ae('a', 'sha256:1'));
    const waiting = hub.whenRecorded(pod('a'), 'sha256:2', 60_000);
    hub.upsert(ae('a', 'sha256:other'));
    hub.upsert(ae('a', 'sha256:2'));
    await expect(waiting).resolves.toBe(true);
    await expect(hub.whenRecorded(pod('a'), 'sha256:2', 10)).resolves.toBe(true);
    await expect(hub.whenRecorded(pod('a'), 'sha256:3', 10)).resolves.toBe(false);
    await expect(hub.whenRecorded({ ...pod('a'), podUID: 'other' }, 'sha256:2', 10)).resolves.toBe(false);
  });
});

describe('entitlement hub: credential values go only with the controller’s entitlements', () => {
  const VALUE = 'sk-hub-unit-value';
  const withCredential = (name: string, managed: boolean): AgentEntitlement => {
    const e = ae(name, `sha256:${name}-${String(managed)}`, managed);
    e.spec.egress = [
      {
        policy: 'p',
        rule: 'llm',
        mode: 'Enforce',
        hosts: ['api.test'],
        ports: [{ port: 443, protocol: 'TCP' }],
        credentials: { secret: 'llm-api', key: 'token', header: 'authorization', format: '{value}', version: 'v1' },
      },
    ];
    return e;
  };
  /** The credentials member of every snapshot a sink gets. */
  function creds(): { seen: unknown[]; send: (e: string, d: string) => boolean; close(): void } {
    const s = {
      seen: [] as unknown[],
      send: (event: string, data: string) => {
        if (event === 'snapshot') s.seen.push((JSON.parse(data) as { credentials?: unknown }).credentials);
        return true;
      },
      close: () => undefined,
    };
    return s;
  }
  const source = {
    value: (ns: string, secret: string, key: string, version: string) =>
      `${ns}/${secret}/${key}@${version}` === 'ns/llm-api/token@v1' ? VALUE : undefined,
  };
  const delivered = [{ secret: 'llm-api', key: 'token', version: 'v1', value: VALUE }];

  it('a hand-written entitlement naming a Secret is served without its value, leader or not', () => {
    for (const leader of [false, true]) {
      const hub = new EntitlementHub(60_000, source);
      hub.upsert(withCredential('forged', false));
      if (leader) hub.publish([], () => true);
      const s = creds();
      hub.subscribe(pod('forged'), s);
      expect(hub.entitlementFor(pod('forged')).spec.egress).toHaveLength(1);
      expect(s.seen).toEqual([undefined]);
      // Rotation, refresh and rewrites of the same object bring no value either.
      hub.refreshCredentials();
      hub.upsert(withCredential('forged', false));
      expect(JSON.stringify(s.seen)).not.toContain(VALUE);
      hub.stop();
    }
  });

  it('the leader’s publication and the controller’s record objects carry the value', () => {
    const leader = new EntitlementHub(60_000, source);
    const a = creds();
    leader.subscribe(pod('agent'), a);
    leader.publish([withCredential('agent', true)], () => true);
    expect(a.seen.at(-1)).toEqual(delivered);
    leader.stop();
    const follower = new EntitlementHub(60_000, source);
    follower.upsert(withCredential('agent', true));
    const b = creds();
    follower.subscribe(pod('agent'), b);
    expect(b.seen).toEqual([delivered]);
    // The label removed (the object is no longer the controller's): the value is withdrawn.
    follower.upsert(withCredential('agent', false));
    expect(b.seen.at(-1)).toBeUndefined();
    follower.stop();
  });
});
