/**
 * The sidecar in static mode with real sockets: real upstream HTTP and TCP servers on 127.0.0.1, requests
 * through the proxy like an agent's HTTP client sends them, audit lines read back.
 */
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createTcpServer, connect, type Server as TcpServer, type Socket } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { AuditRecord, AuditSink } from '../../sidecar/audit.ts';
import { startSidecar, type RunningSidecar } from '../../sidecar/runtime.ts';
import { silentLogger } from '../../lib/log.ts';
import { createRegistry } from '../../lib/prom-text.ts';
import { eventually } from '../support/cluster.ts';

let upstream: Server;
let upstreamPort: number;
let hits = 0;
let lastHeaders: Record<string, string | string[] | undefined> = {};
let echo: TcpServer;
let echoPort: number;
let dir: string;
let file: string;
let sidecar: RunningSidecar;
let proxyPort: number;
const audits: AuditRecord[] = [];
const audit: AuditSink = { write: (r) => audits.push(r), dropped: () => 0, flush: () => undefined };

function entitlement(revision: string, egress: unknown[]): string {
  return stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: 'agent-0', namespace: 'support' },
    spec: {
      podName: 'agent-0',
      podUID: 'u-1',
      agent: 'support-agent',
      spiffeID: 'spiffe://cluster.local/ns/support/agent/support-agent',
      revision,
      egress,
    },
  });
}

const baseRules = () => [
  {
    policy: 'support',
    rule: 'orders',
    mode: 'Enforce',
    hosts: ['orders.test'],
    cidrs: ['127.0.0.1/32'],
    ports: [{ port: upstreamPort, protocol: 'TCP' }],
    http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] }],
  },
  {
    policy: 'support',
    rule: 'hostonly',
    mode: 'Enforce',
    hosts: ['internal.test'],
    ports: [{ port: upstreamPort, protocol: 'TCP' }],
  },
  {
    policy: 'support',
    rule: 'echo',
    mode: 'Enforce',
    cidrs: ['127.0.0.1/32'],
    ports: [{ port: echoPort, protocol: 'TCP' }],
  },
  {
    policy: 'tools',
    rule: 'mcp',
    mode: 'Enforce',
    hosts: ['mcp.test'],
    cidrs: ['127.0.0.1/32'],
    ports: [{ port: upstreamPort, protocol: 'TCP' }],
    mcp: { path: '/mcp', tools: ['search_issues'] },
  },
];

/** A raw HTTP/1.1 exchange on one connection: what curl/requests do with HTTP_PROXY set. */
function raw(data: string, port = proxyPort): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.write(data));
    let out = '';
    s.on('data', (c: Buffer) => (out += c.toString()));
    s.on('end', () => resolve(out));
    s.on('error', reject);
    s.setTimeout(5000, () => {
      s.destroy();
      resolve(out);
    });
  });
}

async function viaProxy(
  method: string,
  url: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<{ status: number; body: string }> {
  const head = Object.entries({ ...headers, ...(body ? { 'content-length': String(Buffer.byteLength(body)) } : {}) })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  const res = await raw(
    `${method} ${url} HTTP/1.1\r\nhost: ${new URL(url).host}\r\nconnection: close\r\n${head}\r\n${body ?? ''}`,
  );
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(res)?.[1] ?? 0);
  return { status, body: res.slice(res.indexOf('\r\n\r\n') + 4) };
}

function tunnel(target: string): Promise<{ status: number; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const s = connect(proxyPort, '127.0.0.1', () => s.write(`CONNECT ${target} HTTP/1.1\r\nhost: ${target}\r\n\r\n`));
    s.once('data', (c: Buffer) =>
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(c.toString())?.[1] ?? 0), socket: s }),
    );
    s.on('error', reject);
  });
}

beforeAll(async () => {
  upstream = createHttpServer((req, res) => {
    hits++;
    lastHeaders = req.headers;
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => res.end(JSON.stringify({ path: req.url, method: req.method, body })));
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  upstreamPort = (upstream.address() as AddressInfo).port;
  echo = createTcpServer((s) => s.pipe(s));
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as AddressInfo).port;
  dir = await mkdtemp(join(tmpdir(), 'agentfence-sidecar-'));
  file = join(dir, 'entitlement.yaml');
  await writeFile(file, entitlement('sha256:01', baseRules()));
  sidecar = await startSidecar(
    {
      listen: { host: '127.0.0.1', port: 0 },
      adminListen: { host: '127.0.0.1', port: 0 },
      mode: { kind: 'static', file },
      maxStalenessMs: 60_000,
      pod: { name: 'agent-0', namespace: 'support' },
    },
    silentLogger,
    {
      audit,
      registry: createRegistry({ defaultMetrics: false }),
      // Test DNS: the test names resolve to loopback, where the upstreams listen.
      resolver: (host) => Promise.resolve(host.endsWith('.test') ? ['127.0.0.1'] : []),
    },
  );
  proxyPort = Number(new URL(sidecar.proxyUrl).port);
});

afterAll(async () => {
  await sidecar.stop();
  upstream.close();
  echo.close();
  await rm(dir, { recursive: true, force: true });
});

describe('sidecar proxy (static mode)', () => {
  it('forwards an allowed GET and audits it', async () => {
    const res = await viaProxy('GET', `http://orders.test:${upstreamPort}/v1/orders/42?token=secret`);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ path: '/v1/orders/42?token=secret', method: 'GET' });
    const line = audits.find((a) => a.path === '/v1/orders/42');
    expect(line).toMatchObject({
      decision: 'allow',
      policy: 'support',
      rule: 'orders',
      revision: 'sha256:01',
      status: 200,
      host: 'orders.test',
    });
    expect(JSON.stringify(line)).not.toContain('secret'); // query removed
  });

  it('denies with a JSON 403 naming what is missing, and never reaches the upstream', async () => {
    const before = hits;
    const post = await viaProxy('POST', `http://orders.test:${upstreamPort}/v1/orders/42`, {}, '{}');
    expect(post.status).toBe(403);
    expect(JSON.parse(post.body)).toMatchObject({
      reason: 'method_not_allowed',
      request: { method: 'POST', host: 'orders.test', path: '/v1/orders/42' },
      revision: 'sha256:01',
      agent: 'spiffe://cluster.local/ns/support/agent/support-agent',
    });
    const other = await viaProxy('GET', `http://billing.test:${upstreamPort}/`);
    expect(JSON.parse(other.body)).toMatchObject({ reason: 'no_rule_for_destination' });
    const traversal = await viaProxy('GET', `http://orders.test:${upstreamPort}/v1/orders/..%2F..%2Fadmin`);
    // Encoded separators are ambiguous between upstream parsers: refused, never decoded and forwarded.
    expect(traversal.status).toBe(400);
    expect(JSON.parse(traversal.body)).toMatchObject({ reason: 'ambiguous_path' });
    expect(hits).toBe(before);
  });

  it('does not let a host rule reach an internal address without cidrs (DNS-rebinding safe)', async () => {
    const before = hits;
    const res = await viaProxy('GET', `http://internal.test:${upstreamPort}/`);
    expect(res.status).toBe(403);
    expect(JSON.parse(res.body)).toMatchObject({ reason: 'private_address' });
    expect(hits).toBe(before);
  });

  it('filters MCP tool calls', async () => {
    const call = (name: string) =>
      viaProxy(
        'POST',
        `http://mcp.test:${upstreamPort}/mcp`,
        { 'content-type': 'application/json' },
        JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name } }),
      );
    expect((await call('search_issues')).status).toBe(200);
    const denied = await call('delete_repo');
    expect(denied.status).toBe(403);
    expect(JSON.parse(denied.body)).toMatchObject({ reason: 'mcp_tool_not_allowed' });
  });

  it('strips a forged identity header and proxy credentials before forwarding', async () => {
    await viaProxy('GET', `http://orders.test:${upstreamPort}/v1/orders/1`, {
      'agentfence-identity': 'forged',
      'proxy-authorization': 'Basic abc',
      authorization: 'Bearer app-token',
      cookie: 'sid=1',
    });
    expect(lastHeaders['agentfence-identity']).toBeUndefined();
    expect(lastHeaders['proxy-authorization']).toBeUndefined();
    expect(lastHeaders.authorization).toBe('Bearer app-token');
    const text = JSON.stringify(audits);
    for (const secret of ['forged', 'Basic abc', 'app-token', 'sid=1']) expect(text).not.toContain(secret);
  });

  it('tunnels CONNECT to an allowed destination and refuses others with 403', async () => {
    const ok = await tunnel(`127.0.0.1:${echoPort}`);
    expect(ok.status).toBe(200);
    ok.socket.write('ping');
    const [data] = (await once(ok.socket, 'data')) as [Buffer];
    expect(data.toString()).toBe('ping');
    ok.socket.destroy();
    const denied = await tunnel(`127.0.0.1:${upstreamPort + 1 === echoPort ? upstreamPort + 2 : upstreamPort + 1}`);
    expect(denied.status).toBe(403);
    denied.socket.destroy();
  });

  it('answers malformed, smuggling and oversized requests with 4xx while other connections keep working', async () => {
    expect(await raw('GARBAGE\r\n\r\n')).toMatch(/^HTTP\/1\.1 400/);
    const smuggle = await raw(
      `POST http://orders.test:${upstreamPort}/v1/orders/1 HTTP/1.1\r\nhost: orders.test\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n`,
    );
    expect(smuggle).toMatch(/^HTTP\/1\.1 400/);
    expect(
      await raw(`GET http://orders.test:${upstreamPort}/ HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`),
    ).toMatch(/^HTTP\/1\.1 431/);
    expect((await viaProxy('GET', `/v1/orders/1`.replace(/^/, `http://orders.test:${upstreamPort}`))).status).toBe(200);
    const origin = await raw('GET /v1/orders/1 HTTP/1.1\r\nhost: orders.test\r\nconnection: close\r\n\r\n');
    expect(origin).toMatch(/^HTTP\/1\.1 400/);
    expect(origin).toContain('absolute-form');
  });

  it('re-reads the file: a narrower snapshot applies to the next request and closes tunnels no longer entitled', async () => {
    const open = await tunnel(`127.0.0.1:${echoPort}`);
    expect(open.status).toBe(200);
    const closed = once(open.socket, 'close');
    await writeFile(
      file,
      entitlement(
        'sha256:02',
        baseRules().filter((r) => r.rule !== 'echo'),
      ),
    );
    await eventually(() => (sidecar.matcher()?.revision === 'sha256:02' ? true : undefined), 'reload', 10_000);
    await closed; // the tunnel was cut by the revocation
    expect((await tunnel(`127.0.0.1:${echoPort}`)).status).toBe(403);
    // A broken file keeps the last good snapshot.
    await writeFile(file, 'apiVersion: agentfence.io/v1alpha1\nkind: AgentEntitlement\nspec: {podName: 3}\n');
    await new Promise((r) => setTimeout(r, 1500));
    expect(sidecar.matcher()?.revision).toBe('sha256:02');
  });

  it('reports readiness and status on the admin port', async () => {
    const ready = await fetch(`${sidecar.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    const status = (await (await fetch(`${sidecar.adminUrl}/status`)).json()) as Record<string, unknown>;
    expect(status).toMatchObject({ revision: 'sha256:02', failClosed: false });
    const metrics = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
    expect(metrics).toContain('agentfence_sidecar_requests_total{decision="deny",reason="method_not_allowed"}');
  });
});
