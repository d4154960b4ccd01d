/**
 * The proxy under hostile or broken peers: connection resets injected at every phase (the proxy must keep
 * serving a well-behaved client, and never crash — an unhandled socket error fails this run), grant expiry
 * and idle timeouts closing tunnels, the global budget of buffered bodies, upgrades, aborted streams audited.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Matcher } from '../../sidecar/match.ts';
import {
  entitlement,
  exchange,
  nodeUpstream,
  rule,
  startProxy,
  statuses,
  type RunningProxy,
  type Upstream,
} from '../support/proxy-harness.ts';
import { eventually } from '../support/cluster.ts';

let up: Upstream;
let proxy: RunningProxy;
const ports = () => [{ port: up.port, protocol: 'TCP' as const }];
const rules = () => [
  rule({
    rule: 'orders',
    hosts: ['orders.test'],
    cidrs: ['127.0.0.1/32'],
    ports: ports(),
    http: [
      { methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/' }] },
      { methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/refund-requests' }] },
    ],
  }),
  rule({
    rule: 'mcp',
    hosts: ['mcp.test'],
    cidrs: ['127.0.0.1/32'],
    ports: ports(),
    mcp: { tools: ['search_issues'] },
  }),
  rule({ rule: 'open', hosts: ['open.test'], cidrs: ['127.0.0.1/32'], ports: ports() }),
];

beforeAll(async () => {
  up = await nodeUpstream();
  proxy = await startProxy(entitlement(rules()));
});
afterAll(async () => {
  await proxy.close();
  await up.close();
});

/** Opens a connection, sends the parts, waits until `until` is seen (if given), then resets it (TCP RST). */
async function resetAfter(port: number, parts: string[], until?: string): Promise<string> {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  await once(s, 'connect');
  let seen = '';
  s.on('data', (c: Buffer) => (seen += c.toString('latin1')));
  for (const p of parts) {
    s.write(p);
    await new Promise((r) => setTimeout(r, 20));
  }
  if (until) await eventually(() => (seen.includes(until) ? true : undefined), 'the expected event');
  s.resetAndDestroy();
  return seen;
}

async function wellBehaved(): Promise<void> {
  const raw = await exchange(proxy.port, [
    `GET http://orders.test:${up.port}/v1/orders/1 HTTP/1.1\r\nhost: orders.test\r\nconnection: close\r\n\r\n`,
  ]);
  expect(statuses(raw)).toEqual([200]);
}

const P = () => up.port;

describe('connection resets at every phase', () => {
  it.each([
    ['before the request line', () => [] as string[], undefined],
    ['mid request line', () => [`GET http://orders.test:${P()}/v1/or`], undefined],
    ['mid headers', () => [`GET http://orders.test:${P()}/v1/orders/1 HTTP/1.1\r\nhost: x\r\nx-a: 1`], undefined],
    [
      'mid body being judged (MCP)',
      () => [`POST http://mcp.test:${P()}/mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"jsonrpc":`],
      undefined,
    ],
    [
      'mid body being streamed upstream',
      () => [`POST http://orders.test:${P()}/v1/refund-requests HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc`],
      undefined,
    ],
    [
      'mid chunked body',
      () => [
        `POST http://orders.test:${P()}/v1/refund-requests HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab`,
      ],
      undefined,
    ],
    [
      'waiting for 100 Continue',
      () => [
        `POST http://mcp.test:${P()}/mcp HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n`,
      ],
      '100 Continue',
    ],
    [
      'after a denied CONNECT',
      () => [`CONNECT nothing.test:443 HTTP/1.1\r\nhost: x\r\n\r\n`],
      'no_rule_for_destination',
    ],
    [
      'after a denied GET',
      () => [`DELETE http://orders.test:${P()}/v1/orders/1 HTTP/1.1\r\nhost: x\r\n\r\n`],
      'method_not_allowed',
    ],
    [
      'mid blind tunnel',
      () => [`CONNECT open.test:${P()} HTTP/1.1\r\nhost: x\r\n\r\n`, 'GET /stream HTTP/1.1\r\nhost: x\r\n\r\n'],
      'chunk 1',
    ],
    [
      'mid inspected tunnel, mid request',
      () => [`CONNECT orders.test:${P()} HTTP/1.1\r\nhost: x\r\n\r\n`, 'GET /v1/orders/1 HTTP/1.1\r\nho'],
      '200 Connection Established',
    ],
    [
      'mid stream inside an inspected tunnel',
      () => [`CONNECT orders.test:${P()} HTTP/1.1\r\nhost: x\r\n\r\n`, 'GET /stream HTTP/1.1\r\nhost: x\r\n\r\n'],
      'chunk 1',
    ],
    ['mid stream', () => [`GET http://orders.test:${P()}/stream HTTP/1.1\r\nhost: x\r\n\r\n`], 'chunk 1'],
    [
      'mid WebSocket',
      () => [
        `GET http://open.test:${P()}/ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`,
        'hi',
      ],
      'echo:hi',
    ],
  ] as [string, () => string[], string | undefined][])('%s', async (_, parts, until) => {
    await resetAfter(proxy.port, parts(), until);
    await wellBehaved();
  });

  it('audits a stream the client aborted', async () => {
    const from = proxy.audits.length;
    await resetAfter(proxy.port, [`GET http://orders.test:${P()}/stream HTTP/1.1\r\nhost: x\r\n\r\n`], 'chunk 2');
    const line = await eventually(
      () => proxy.audits.slice(from).find((a) => a.path === '/stream'),
      'the expected event',
    );
    expect(line).toMatchObject({ decision: 'allow', reason: 'client_aborted', status: 200 });
  });

  it('survives an upstream that resets mid-response, and audits it', async () => {
    const from = proxy.audits.length;
    const raw = await exchange(proxy.port, [`GET http://orders.test:${P()}/reset HTTP/1.1\r\nhost: x\r\n\r\n`]);
    expect(raw).toMatch(/^HTTP\/1\.1 200/);
    const line = await eventually(
      () => proxy.audits.slice(from).find((a) => a.path === '/reset'),
      'the expected event',
    );
    expect(line.reason).toMatch(/upstream_aborted|client_aborted/);
    await wellBehaved();
  });

  it('survives a flood of resets across all phases at once', async () => {
    const all = [
      `CONNECT nothing.test:443 HTTP/1.1\r\n\r\n`,
      `CONNECT open.test:${P()} HTTP/1.1\r\n\r\n`,
      `GET http://orders.test:${P()}/stream HTTP/1.1\r\nhost: x\r\n\r\n`,
      `POST http://mcp.test:${P()}/mcp HTTP/1.1\r\ncontent-length: 50\r\n\r\n{`,
    ];
    await Promise.all(Array.from({ length: 40 }, (_, i) => resetAfter(proxy.port, [all[i % all.length] ?? ''])));
    await wellBehaved();
  });
});

describe('tunnels', () => {
  it('dates CONNECT audit lines with the wall clock', async () => {
    const from = proxy.audits.length;
    await exchange(proxy.port, [`CONNECT nothing.test:443 HTTP/1.1\r\n\r\n`]);
    const line = proxy.audits.slice(from).find((a) => a.method === 'CONNECT');
    expect(Math.abs(Date.parse(line?.time ?? '') - Date.now())).toBeLessThan(60_000);
  });

  it('closes a tunnel when the grant it was opened under expires (static mode: no new snapshot)', async () => {
    const expiring = await startProxy(
      entitlement([
        rule({
          rule: 'brief',
          hosts: ['open.test'],
          cidrs: ['127.0.0.1/32'],
          ports: ports(),
          expiresAt: new Date(Date.now() + 1500).toISOString(),
        }),
      ]),
    );
    try {
      const s: Socket = connect(expiring.port, '127.0.0.1');
      s.on('error', () => undefined);
      await once(s, 'connect');
      s.write(`CONNECT open.test:${P()} HTTP/1.1\r\n\r\n`);
      const [first] = (await once(s, 'data')) as [Buffer];
      expect(first.toString()).toMatch(/^HTTP\/1\.1 200/);
      await once(s, 'close');
      const line = expiring.audits.find((a) => a.method === 'CONNECT');
      expect(line).toMatchObject({ decision: 'allow', reason: 'grant_expired' });
    } finally {
      await expiring.close();
    }
  });

  it('times out a slow client inside an inspected tunnel like one outside', async () => {
    const s: Socket = connect(proxy.port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.write(`CONNECT orders.test:${P()} HTTP/1.1\r\n\r\n`);
    await once(s, 'data');
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    s.write('GET /v1/orders/1 HTTP/1.1\r\nhost: x\r\n');
    await once(s, 'close');
    expect(got).toMatch(/^HTTP\/1\.1 408 /);
  }, 30_000);

  it('closes idle tunnels', async () => {
    const idle = await startProxy(entitlement(rules()), { tunnelIdleMs: 200 });
    try {
      const s: Socket = connect(idle.port, '127.0.0.1');
      s.on('error', () => undefined);
      await once(s, 'connect');
      s.write(`CONNECT open.test:${P()} HTTP/1.1\r\n\r\n`);
      await once(s, 'data');
      await once(s, 'close');
      expect(idle.audits.find((a) => a.method === 'CONNECT')).toMatchObject({ reason: 'idle_timeout' });
    } finally {
      await idle.close();
    }
  });

  it('closes tunnels a new snapshot no longer entitles', async () => {
    const s: Socket = connect(proxy.port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.write(`CONNECT open.test:${P()} HTTP/1.1\r\n\r\n`);
    await once(s, 'data');
    const closed = once(s, 'close');
    proxy.setMatcher(new Matcher(entitlement(rules().filter((r) => r.rule !== 'open'))));
    await closed;
    proxy.setMatcher(new Matcher(entitlement(rules())));
  });

  it('lets an allowed WebSocket upgrade through a rule without an L7 profile, and audits it', async () => {
    const from = proxy.audits.length;
    const s: Socket = connect(proxy.port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.write(`GET http://open.test:${P()}/ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`);
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    await eventually(() => (got.includes('\r\n\r\n') ? true : undefined), 'the expected event');
    expect(got).toMatch(/^HTTP\/1\.1 101 /);
    s.write('ping');
    await eventually(() => (got.includes('echo:ping') ? true : undefined), 'the expected event');
    s.end();
    const line = await eventually(() => proxy.audits.slice(from).find((a) => a.path === '/ws'), 'the expected event');
    expect(line).toMatchObject({ decision: 'allow', status: 101, host: 'open.test', method: 'GET' });
    expect(up.received.at(-1)).toMatchObject({ uri: '/ws', host: `open.test:${P()}` });
  });
});

describe('the budget of buffered bodies', () => {
  it('answers 503 with Retry-After when bodies being judged would pass it, and recovers', async () => {
    const small = await startProxy(entitlement(rules()), { maxBufferedBodyBytes: 1000, maxMcpBodyBytes: 800 });
    try {
      const holder = connect(small.port, '127.0.0.1');
      holder.on('error', () => undefined);
      await once(holder, 'connect');
      holder.write(`POST http://mcp.test:${P()}/mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 700\r\n\r\n{`);
      await new Promise((r) => setTimeout(r, 100));
      const body = `{"jsonrpc":"2.0","id":1,"method":"tools/list","pad":"${'x'.repeat(600)}"}`;
      const second = await exchange(small.port, [
        `POST http://mcp.test:${P()}/mcp HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      ]);
      expect(second).toMatch(/^HTTP\/1\.1 503 body_budget_exhausted\r\n/);
      expect(second.toLowerCase()).toContain('retry-after: 1');
      holder.resetAndDestroy();
      await eventually(async () => {
        const again = await exchange(small.port, [
          `POST http://mcp.test:${P()}/mcp HTTP/1.1\r\nhost: x\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
        ]);
        return statuses(again)[0] === 200 ? true : undefined;
      }, 'the expected event');
    } finally {
      await small.close();
    }
  });
});

describe('IPv6 literal destinations', () => {
  it('forwards Host with brackets, the authority that was checked', async () => {
    const v6 = await nodeUpstream('::1');
    const p6 = await startProxy(
      entitlement([rule({ rule: 'v6', cidrs: ['::1/128'], ports: [{ port: v6.port, protocol: 'TCP' }] })]),
    );
    try {
      const raw = await exchange(p6.port, [
        `GET http://[::1]:${v6.port}/x HTTP/1.1\r\nhost: [::1]\r\nconnection: close\r\n\r\n`,
      ]);
      expect(statuses(raw)).toEqual([200]);
      expect(v6.received.at(-1)).toMatchObject({ uri: '/x', host: `[::1]:${v6.port}` });
    } finally {
      await p6.close();
      await v6.close();
    }
  });
});

describe('a narrowing re-judges open tunnels by how they were opened', () => {
  const open = (over: Partial<Parameters<typeof rule>[0]> = {}) =>
    rule({ rule: 'open', hosts: ['open.test'], cidrs: ['127.0.0.1/32'], ports: ports(), ...over });
  const getOnly = { http: [{ methods: ['GET' as const], paths: [{ type: 'Exact' as const, value: '/ok' }] }] };
  const credentials = {
    secret: 'llm-api',
    key: 'token',
    header: 'authorization',
    format: 'Bearer {value}',
    version: 'sha256:v1',
  };

  /** A CONNECT to open.test; resolves with the socket and what it has received once the proxy answered 200. */
  async function tunnel(port: number): Promise<{ s: Socket; got: () => string; closed: Promise<unknown> }> {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    await once(s, 'connect');
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    const closed = once(s, 'close');
    s.write(`CONNECT open.test:${P()} HTTP/1.1\r\n\r\n`);
    await eventually(() => (got.includes('\r\n\r\n') ? true : undefined), 'the CONNECT answer');
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
    return { s, got: () => got, closed };
  }

  async function request(t: { s: Socket; got: () => string }, line: string): Promise<number[]> {
    const before = statuses(t.got()).length;
    t.s.write(`${line} HTTP/1.1\r\nhost: open.test:${P()}\r\n\r\n`);
    await eventually(() => (statuses(t.got()).length > before ? true : undefined), 'a response in the tunnel');
    return statuses(t.got()).slice(before);
  }

  const narrowings: [string, () => ReturnType<typeof rule>[]][] = [
    ['an http profile added', () => [open(getOnly)]],
    ['credentials added', () => [open({ credentials })]],
    ['tls: Inspect added', () => [open({ tls: 'Inspect' })]],
    ['the rule removed', () => []],
    ['another rule in its place', () => [open({ rule: 'other' })]],
    ['an inspected rule beside it', () => [open(), open({ rule: 'audited', tls: 'Inspect' })]],
  ];
  for (const [what, narrowed] of narrowings) {
    it(`closes a blind tunnel (revoked) when ${what}`, async () => {
      const p = await startProxy(entitlement([open()]));
      try {
        const t = await tunnel(p.port);
        expect(await request(t, 'DELETE /admin')).toEqual([200]);
        const from = p.audits.length;
        p.setMatcher(new Matcher(entitlement(narrowed())));
        await t.closed;
        expect(p.audits.slice(from).find((a) => a.method === 'CONNECT')).toMatchObject({
          reason: 'revoked',
          tls: 'passthrough',
        });
      } finally {
        await p.close();
      }
    });
  }

  it('keeps a blind tunnel whose rule is unchanged, and an inspected one (its requests are judged one by one)', async () => {
    const p = await startProxy(entitlement([open()]));
    const revoked = (from: number) => p.audits.slice(from).filter((a) => a.reason === 'revoked');
    try {
      const blind = await tunnel(p.port);
      let from = p.audits.length;
      p.setMatcher(new Matcher(entitlement([open(), rule({ rule: 'x', hosts: ['x.test'], ports: ports() })])));
      expect(revoked(from)).toEqual([]);
      expect(await request(blind, 'DELETE /admin')).toEqual([200]);
      blind.s.destroy();
      p.setMatcher(new Matcher(entitlement([open({ http: [{ methods: ['GET', 'DELETE'] }] })])));
      const inspected = await tunnel(p.port);
      expect(await request(inspected, 'DELETE /admin')).toEqual([200]);
      from = p.audits.length;
      // Closing happens inside revoke(): no revoked line right after it means the tunnel was kept.
      p.setMatcher(new Matcher(entitlement([open(getOnly)])));
      expect(revoked(from)).toEqual([]);
      inspected.s.destroy();
    } finally {
      await p.close();
    }
  });

  it('closes an upgrade tunnel when its destination now needs inspection', async () => {
    const p = await startProxy(entitlement([open()]));
    try {
      const s = connect(p.port, '127.0.0.1');
      s.on('error', () => undefined);
      await once(s, 'connect');
      let got = '';
      s.on('data', (c: Buffer) => (got += c.toString()));
      const closed = once(s, 'close');
      s.write(
        `GET http://open.test:${P()}/ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`,
      );
      await eventually(() => (got.includes('\r\n\r\n') ? true : undefined), 'the upgrade answer');
      expect(got).toMatch(/^HTTP\/1\.1 101 /);
      const from = p.audits.length;
      p.setMatcher(new Matcher(entitlement([open(getOnly)])));
      await closed;
      expect(p.audits.slice(from).find((a) => a.path === '/ws')).toMatchObject({ reason: 'revoked' });
    } finally {
      await p.close();
    }
  });
});
