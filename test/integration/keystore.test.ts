/**
 * Signing keys shared through a Secret on the real API server: the leader creates and rotates them, another
 * replica picks every change up through its informer, and a damaged Secret never takes the keys away.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { silentLogger } from '../../lib/log.ts';
import { SigningKeyStore } from '../../operator/identity/keystore.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';

const H = 3_600_000;
let client: KubeClient;
let ns: string;
const clock = { t: Date.now() };
const stores: SigningKeyStore[] = [];

function store(): SigningKeyStore {
  const s = new SigningKeyStore({
    client,
    namespace: ns,
    secretName: 'agentfence-signing-keys',
    logger: silentLogger,
    now: () => clock.t,
  });
  s.start();
  stores.push(s);
  return s;
}

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('keys');
});

afterAll(async () => {
  for (const s of stores) await s.stop();
  client.close();
});

describe('signing key store', () => {
  it('leader creates and rotates; a replica follows; a damaged Secret keeps the last good keys', async () => {
    const leader = store();
    const replica = store();
    expect(replica.ready()).toBe(false);

    const wait = await leader.rotate();
    expect(wait).toBe(H); // nothing due for 12 h; the leader still looks at least hourly
    const kid = await eventually(
      () => (replica.ready() ? replica.keys().current.kid : undefined),
      'replica loads keys',
    );
    expect(leader.keys().current.kid).toBe(kid);
    expect(await leader.rotate()).toBeGreaterThan(0); // nothing due: no write
    const rv1 = JSON.parse(await runOrThrow(['get', 'secret', 'agentfence-signing-keys', '-n', ns, '-o', 'json'])) as {
      metadata: { resourceVersion: string };
    };

    clock.t += 12 * H;
    await leader.rotate();
    const next = await eventually(
      () => Promise.resolve(replica.keys().next?.kid),
      'replica sees the published next key',
    );
    expect(replica.keys().current.kid).toBe(kid); // still signing with the old one

    clock.t += 8 * H;
    await leader.rotate();
    await eventually(() => (replica.keys().current.kid === next ? true : undefined), 'replica activates the next key');
    expect(replica.keys().previous.map((k) => k.kid)).toEqual([kid]);
    const rv2 = JSON.parse(await runOrThrow(['get', 'secret', 'agentfence-signing-keys', '-n', ns, '-o', 'json'])) as {
      metadata: { resourceVersion: string };
    };
    expect(rv2.metadata.resourceVersion).not.toBe(rv1.metadata.resourceVersion);

    await runOrThrow([
      'patch',
      'secret',
      'agentfence-signing-keys',
      '-n',
      ns,
      '--type=merge',
      '-p',
      JSON.stringify({ data: { 'keys.json': Buffer.from('{"version":1}').toString('base64') } }),
    ]);
    await new Promise((r) => setTimeout(r, 500));
    expect(replica.ready()).toBe(true);
    expect(replica.keys().current.kid).toBe(next);

    await leader.rotate(); // the leader replaces the damaged Secret with fresh keys
    await eventually(
      () => (replica.keys().current.kid !== next ? true : undefined),
      'replica loads the regenerated keys',
    );
  });
});
