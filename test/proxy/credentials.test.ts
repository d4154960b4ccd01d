/**
 * Brokered credentials in the sidecar's data path (inspected HTTPS on loopback: the proxy with a real pod CA, an
 * HTTPS upstream with its own test CA as the rule's caBundle, and a plain recording upstream): the header is set at
 * the seam between admission and forwarding, replacing the agent's own value, in any case spelling; only for
 * requests a rule with credentials allowed; never for would_deny traffic; only inside TLS the sidecar verified
 * (plain HTTP in any form is refused, credential_requires_tls); and a value that is not there refuses the request
 * (credential_unavailable) rather than sending it without. Plus the pieces: the stream's credentials member, the
 * cache, the matcher's inspection predicate and the hub's delivery.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { AgentEntitlement, EntitlementCredentials } from '../../lib/api/types.generated.ts';
import { credentialValue } from '../../operator/compiler/credentials.ts';
import { EntitlementHub } from '../../operator/distribution/hub.ts';
import { CredentialCache, parseDeliveredCredentials } from '../../sidecar/credentials.ts';
import { Matcher, needsInspection } from '../../sidecar/match.ts';
import { PodCA } from '../../sidecar/pod-ca.ts';
import {
  entitlement,
  exchange,
  nodeUpstream,
  rule,
  startProxy,
  statuses,
  type Upstream,
} from '../support/proxy-harness.ts';
import { httpsUpstream, testPki, type HttpsUpstream, type TestPki } from '../support/tls-upstreams.ts';

const VALUE = 'sk-unit-value-0123456789';
const creds = (over: Partial<EntitlementCredentials> = {}): EntitlementCredentials => ({
  secret: 'llm-api',
  key: 'token',
  header: 'authorization',
  format: 'Bearer {value}',
  version: 'sha256:v1',
  ...over,
});

let pki: TestPki;
let secure: HttpsUpstream;
let plain: Upstream;
let podCA: PodCA;
let bundleDir: string;
beforeAll(async () => {
  pki = await testPki(['api.test']);
  secure = await httpsUpstream(pki.good);
  plain = await nodeUpstream();
  bundleDir = mkdtempSync(join(tmpdir(), 'agentfence-cred-trust-'));
  podCA = await PodCA.create({ bundleDir });
}, 60_000);
afterAll(async () => {
  await secure.close();
  await plain.close();
  rmSync(bundleDir, { recursive: true, force: true });
});

/** Everything received on a socket until it closes. */
async function drain(s: Socket | ReturnType<typeof tlsConnect>): Promise<string> {
  let out = '';
  s.on('data', (c: Buffer) => (out += c.toString()));
  await once(s, 'close');
  return out;
}

/** A CONNECT to api.test on `port`; resolves with the raw socket once the proxy answered. */
async function tunnel(proxyPort: number, port: number): Promise<Socket> {
  const s = netConnect(proxyPort, '127.0.0.1');
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`CONNECT api.test:${port} HTTP/1.1\r\nhost: api.test:${port}\r\n\r\n`);
  const [head] = (await once(s, 'data')) as [Buffer];
  expect(head.toString()).toMatch(/^HTTP\/1\.1 200/);
  return s;
}

/** A GET over inspected HTTPS (CONNECT, then TLS trusting the pod CA): the raw response. */
async function get(proxyPort: number, path: string, headers: string[] = []): Promise<string> {
  const raw = await tunnel(proxyPort, secure.port);
  const t = tlsConnect({ socket: raw, servername: 'api.test', ca: podCA.caCertificates() });
  t.on('error', () => undefined);
  await once(t, 'secureConnect');
  const done = drain(t);
  t.write(
    `GET ${path} HTTP/1.1\r\nhost: api.test:${secure.port}\r\n${headers.map((h) => `${h}\r\n`).join('')}connection: close\r\n\r\n`,
  );
  return done;
}

describe('the header seam', () => {
  const cache = new CredentialCache();
  cache.replace([{ secret: 'llm-api', key: 'token', version: 'sha256:v1', value: VALUE }]);
  const ent = (over: Partial<EntitlementCredentials> = {}, mode: 'Enforce' | 'Audit' = 'Enforce') =>
    entitlement([
      rule({
        rule: 'llm',
        mode,
        hosts: ['api.test'],
        cidrs: ['127.0.0.1/32'],
        ports: [
          { port: secure.port, protocol: 'TCP' },
          { port: plain.port, protocol: 'TCP' },
        ],
        http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/' }] }],
        caBundle: pki.ca.certPem,
        credentials: creds(over),
      }),
      // The same upstream without a profile: an upgrade is allowed only by such a rule.
      rule({
        rule: 'ws',
        mode,
        hosts: ['ws.test'],
        cidrs: ['127.0.0.1/32'],
        ports: [{ port: plain.port, protocol: 'TCP' }],
        credentials: creds(over),
      }),
    ]);
  const start = (e: AgentEntitlement, c: CredentialCache = cache) =>
    startProxy(e, { interception: podCA, credentialFor: (x) => c.header(x) });

  it('replaces the agent’s value, whatever case it sent the header in', async () => {
    const proxy = await start(ent());
    try {
      const before = secure.received.length;
      const out = await get(proxy.port, '/v1/models', ['AUTHORIZATION: Bearer brokered']);
      expect(statuses(out)).toEqual([200]);
      const seen = secure.received.slice(before);
      expect(seen.map((r) => r.headers.authorization)).toEqual([`Bearer ${VALUE}`]);
      expect(proxy.audits.at(-1)).toMatchObject({ decision: 'allow', credential: 'llm-api/token', tls: 'inspected' });
      expect(JSON.stringify(proxy.audits)).not.toContain(VALUE);
    } finally {
      await proxy.close();
    }
  });

  it('sets a custom header with a format whose value holds "$" patterns literally', async () => {
    const odd = new CredentialCache();
    odd.replace([{ secret: 'llm-api', key: 'token', version: 'sha256:v1', value: "k$&$1$'x" }]);
    const proxy = await start(ent({ header: 'x-api-key', format: '{value}' }), odd);
    try {
      const before = secure.received.length;
      expect(statuses(await get(proxy.port, '/v1/a', ['x-api-key: mine', 'x-api-key: again']))).toEqual([200]);
      expect(secure.received.slice(before).map((r) => r.headers['x-api-key'])).toEqual(["k$&$1$'x"]);
    } finally {
      await proxy.close();
    }
  });

  it('refuses with credential_unavailable when the value is missing or at another version, sending nothing', async () => {
    for (const c of [creds({ version: '' }), creds({ version: 'sha256:other' }), creds({ key: 'nope' })]) {
      const proxy = await start(ent(c));
      try {
        const before = secure.received.length;
        const out = await get(proxy.port, '/v1/models', ['authorization: Bearer brokered']);
        expect(statuses(out)).toEqual([503]);
        expect(out).toContain('credential_unavailable');
        expect(out).toContain(`${c.secret}/${c.key}`);
        expect(secure.received.length).toBe(before);
      } finally {
        await proxy.close();
      }
    }
  });

  it('denied and would_deny requests carry no credential', async () => {
    const proxy = await start(ent({}, 'Audit'));
    try {
      const before = secure.received.length;
      // Audit-only: the path no rule allows is forwarded as would_deny — with the agent's header, not the secret.
      const out = await get(proxy.port, '/admin', ['authorization: Bearer brokered']);
      expect(statuses(out)).toEqual([200]);
      expect(secure.received.slice(before).map((r) => r.headers.authorization)).toEqual(['Bearer brokered']);
      expect(proxy.audits.at(-1)).toMatchObject({ decision: 'would_deny' });
      expect(proxy.audits.at(-1)?.credential).toBeUndefined();
    } finally {
      await proxy.close();
    }
    const enforced = await start(ent());
    try {
      const before = secure.received.length;
      const out = await get(enforced.port, '/admin', ['authorization: Bearer brokered']);
      expect(statuses(out)).toEqual([403]);
      expect(out).not.toContain(VALUE);
      expect(secure.received.length).toBe(before);
    } finally {
      await enforced.close();
    }
  });

  describe('never outside TLS the sidecar verified: refused (credential_requires_tls), nothing forwarded', () => {
    const variants: [string, (proxyPort: number) => Promise<string>][] = [
      [
        'an absolute-form http:// request',
        (p) =>
          exchange(p, [
            `GET http://api.test:${plain.port}/v1/models HTTP/1.1\r\nhost: api.test:${plain.port}\r\nconnection: close\r\n\r\n`,
          ]),
      ],
      [
        'an absolute-form http:// request to the HTTPS port',
        (p) =>
          exchange(p, [
            `GET http://api.test:${secure.port}/v1/models HTTP/1.1\r\nhost: api.test:${secure.port}\r\nconnection: close\r\n\r\n`,
          ]),
      ],
      [
        'plaintext HTTP inside a CONNECT tunnel',
        async (p) => {
          const s = await tunnel(p, plain.port);
          const done = drain(s);
          s.write(`GET /v1/models HTTP/1.1\r\nhost: api.test:${plain.port}\r\nconnection: close\r\n\r\n`);
          return done;
        },
      ],
      [
        'a ws:// upgrade',
        (p) =>
          exchange(p, [
            `GET http://ws.test:${plain.port}/ws HTTP/1.1\r\nhost: ws.test:${plain.port}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`,
          ]),
      ],
    ];
    for (const [what, send] of variants) {
      it(what, async () => {
        const proxy = await start(ent());
        try {
          const before = [plain.received.length, secure.received.length];
          const out = await send(proxy.port);
          expect(statuses(out)).toEqual([403]);
          expect(out).toContain('credential_requires_tls');
          expect(out).not.toContain(VALUE);
          await plain.sync();
          expect([plain.received.length, secure.received.length]).toEqual(before);
          expect(proxy.audits.filter((a) => a.reason === 'credential_requires_tls')).toMatchObject([
            { decision: 'deny', status: 403, host: expect.stringMatching(/^(api|ws)\.test$/) as unknown },
          ]);
        } finally {
          await proxy.close();
        }
      });
    }
  });
});

describe('the inspection predicate', () => {
  it('a credentials rule inspects HTTPS, even beside a rule that would tunnel blind', () => {
    const plain = rule({ rule: 'plain', hosts: ['api.test'], ports: [{ port: 443 }] });
    const brokered = rule({ rule: 'llm', hosts: ['api.test'], ports: [{ port: 443 }], credentials: creds() });
    expect(new Matcher(entitlement([plain])).decideConnect({ host: 'api.test', port: 443 }, 0)).toMatchObject({
      allow: true,
      rule: { rule: 'plain' },
    });
    expect(new Matcher(entitlement([plain])).decideConnect({ host: 'api.test', port: 443 }, 0)).not.toHaveProperty(
      'inspect',
    );
    const both = new Matcher(entitlement([plain, brokered]));
    expect(both.decideConnect({ host: 'api.test', port: 443 }, 0)).toMatchObject({ allow: true, inspect: true });
    // Requests inside are judged under the credentials rule first: they carry the credential.
    expect(both.decideHttp({ host: 'api.test', port: 443, method: 'GET', path: '/x' }, 0)).toMatchObject({
      allow: true,
      rule: { rule: 'llm' },
    });
    expect(both.rules.map(needsInspection)).toEqual([false, true]);
  });
});

describe('credential values', () => {
  it('the controller drops surrounding whitespace and refuses values that could write headers', () => {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    expect(credentialValue(b64('sk-abc\n'))).toBe('sk-abc');
    for (const bad of ['a\r\nx-evil: 1', 'a\nb', '', '   ', 'caf\u00e9', 'a\u0000b'])
      expect(credentialValue(b64(bad))).toBeUndefined();
  });

  it('the sidecar refuses malformed credentials from the stream without echoing the value', () => {
    expect(parseDeliveredCredentials(undefined)).toEqual([]);
    expect(() => parseDeliveredCredentials({})).toThrow(/list/);
    expect(() => parseDeliveredCredentials([{ secret: 's', key: 'k', version: 'v' }])).toThrow(/s\/k/);
    let message = '';
    try {
      parseDeliveredCredentials([{ secret: 's', key: 'k', version: 'v', value: 'top-secret\r\nx: y' }]);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain('not a valid header value');
    expect(message).not.toContain('top-secret');
  });

  it('the cache uses a value only at the version the rule names, and forgets what the next snapshot lacks', () => {
    const cache = new CredentialCache();
    cache.replace([{ secret: 'a', key: 'k', version: 'v1', value: 'one' }]);
    expect(cache.header({ secret: 'a', key: 'k', header: 'X-Key', format: '{value}', version: 'v1' })).toEqual({
      name: 'x-key',
      value: 'one',
    });
    expect(cache.header({ secret: 'a', key: 'k', header: 'x', format: '{value}', version: 'v2' })).toBeUndefined();
    cache.replace([]);
    expect(cache.header({ secret: 'a', key: 'k', header: 'x', format: '{value}', version: 'v1' })).toBeUndefined();
    expect(JSON.stringify(cache.describe())).not.toContain('one');
  });
});

describe('the hub delivers a value only to the pod whose rules name it, at the compiled version', () => {
  const ae = (pod: string, c?: EntitlementCredentials): AgentEntitlement => ({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: pod, namespace: 'ns', labels: { [LABEL_MANAGED_BY]: MANAGED_BY } },
    spec: {
      podName: pod,
      podUID: `${pod}-uid`,
      agent: pod,
      spiffeID: '',
      revision: `sha256:${pod}${c?.version ?? ''}`,
      egress: [rule({ rule: 'r', hosts: ['api.test'], ports: [{ port: 443 }], ...(c ? { credentials: c } : {}) })],
    },
  });

  it('streams values to the entitled pod only, re-sends on catch-up and rotation, never to others', () => {
    const store = new Map<string, string>([['ns/llm-api/token@sha256:v1', VALUE]]);
    const hub = new EntitlementHub(60_000, {
      value: (ns, secret, key, version) => store.get(`${ns}/${secret}/${key}@${version}`),
    });
    const events = new Map<string, string[]>();
    const sink = (pod: string) => {
      events.set(pod, []);
      return { send: (_e: string, data: string) => (events.get(pod)?.push(data), true), close: () => undefined };
    };
    hub.upsert(ae('entitled', creds()));
    hub.upsert(ae('other'));
    hub.subscribe({ namespace: 'ns', podName: 'entitled', podUID: 'entitled-uid' }, sink('entitled'));
    hub.subscribe({ namespace: 'ns', podName: 'other', podUID: 'other-uid' }, sink('other'));
    const last = (pod: string) => JSON.parse(events.get(pod)?.at(-1) ?? '{}') as { credentials?: unknown };
    expect(last('entitled').credentials).toEqual([
      { secret: 'llm-api', key: 'token', version: 'sha256:v1', value: VALUE },
    ]);
    expect(last('other').credentials).toBeUndefined();
    expect(events.get('other')?.join('')).not.toContain(VALUE);

    // Rotation seen first by this replica's Secret cache: the entitlement still names v1, so v1 stays delivered
    // (no snapshot without it), also when the entitlement object is rewritten with the same revision (an ack).
    const sent = events.get('entitled')?.length;
    store.delete('ns/llm-api/token@sha256:v1');
    hub.refreshCredentials();
    hub.upsert(ae('entitled', creds()));
    expect(events.get('entitled')?.length).toBe(sent);
    // The entitlement names v2 before this replica's Secret cache has it — no value, then the value.
    hub.upsert(ae('entitled', creds({ version: 'sha256:v2' })));
    expect(last('entitled').credentials).toBeUndefined();
    store.set('ns/llm-api/token@sha256:v2', 'rotated');
    const count = events.get('entitled')?.length;
    hub.refreshCredentials();
    expect(last('entitled').credentials).toEqual([
      { secret: 'llm-api', key: 'token', version: 'sha256:v2', value: 'rotated' },
    ]);
    expect(events.get('entitled')?.length).toBe((count ?? 0) + 1);
    // Nothing changed: nothing re-sent.
    hub.refreshCredentials();
    expect(events.get('entitled')?.length).toBe((count ?? 0) + 1);
    expect(events.get('other')?.length).toBe(1);
    hub.stop();
  });
});
