/**
 * Real clients through the sidecar proxy: curl, Python requests, a Go net/http client, Node's built-in fetch
 * with NODE_USE_ENV_PROXY=1 (which sends even http:// URLs as CONNECT: the tunnel is inspected) and the
 * official MCP SDK client over that fetch, against a real MCP server built with the SDK.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  buildGo,
  entitlement,
  nodeUpstream,
  rule,
  startProxy,
  type RunningProxy,
  type Upstream,
} from '../support/proxy-harness.ts';

const run = promisify(execFile);
// Each test starts client processes (Python, Node, Go): slow on a loaded machine.
vi.setConfig({ testTimeout: 60_000 });
let up: Upstream;
let mcp: Server;
let mcpPort: number;
let proxy: RunningProxy;
let proxyUrl: string;
let goClient: string;
const mcpCalls: string[] = [];

/** A stateless MCP server (SDK) with two tools; it records every tool it executes. */
async function startMcpServer(): Promise<void> {
  mcp = createServer((req, res) => {
    const server = new McpServer({ name: 'issues', version: '1.0.0' });
    for (const name of ['search_issues', 'delete_repo']) {
      server.registerTool(name, { description: name }, () => {
        mcpCalls.push(name);
        return { content: [{ type: 'text', text: `${name} done` }] };
      });
    }
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    void server.connect(transport).then(() => transport.handleRequest(req, res));
  });
  mcp.listen(0, '127.0.0.1');
  await once(mcp, 'listening');
  mcpPort = (mcp.address() as AddressInfo).port;
}

beforeAll(async () => {
  goClient = buildGo('go-client');
  up = await nodeUpstream();
  await startMcpServer();
  proxy = await startProxy(
    entitlement([
      rule({
        rule: 'orders',
        hosts: ['orders.test'],
        cidrs: ['127.0.0.1/32'],
        ports: [{ port: up.port, protocol: 'TCP' }],
        http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] }],
      }),
      rule({
        rule: 'mcp',
        hosts: ['mcp.test'],
        cidrs: ['127.0.0.1/32'],
        ports: [{ port: mcpPort, protocol: 'TCP' }],
        mcp: { path: '/mcp', tools: ['search_issues'] },
      }),
    ]),
  );
  proxyUrl = `http://127.0.0.1:${proxy.port}`;
}, 300_000);

afterAll(async () => {
  await proxy.close();
  await up.close();
  mcp.closeAllConnections();
  mcp.close();
});

const env = (): NodeJS.ProcessEnv => ({
  ...process.env, // eslint-disable-line no-restricted-properties -- the clients inherit the test's environment
  HTTP_PROXY: proxyUrl,
  HTTPS_PROXY: proxyUrl,
  http_proxy: proxyUrl,
  https_proxy: proxyUrl,
  NO_PROXY: '',
  no_proxy: '',
});

async function attempt(cmd: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}) {
  try {
    const { stdout, stderr } = await run(cmd, args, { env: { ...env(), ...extraEnv }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('curl', () => {
  it('gets an allowed URL, is refused a forbidden method, keeps %20 encoded', async () => {
    const url = `http://orders.test:${up.port}/v1/orders`;
    expect((await attempt('curl', ['-sS', '-x', proxyUrl, `${url}/1`])).stdout).toBe('node-ok');
    const denied = await attempt('curl', ['-sS', '-x', proxyUrl, '-X', 'DELETE', '-w', '%{http_code}', `${url}/1`]);
    expect(denied.stdout).toMatch(/"reason":"method_not_allowed".*403$/);
    expect((await attempt('curl', ['-sS', '-x', proxyUrl, `${url}/my%20report.pdf`])).stdout).toBe('node-ok');
    expect(up.received.at(-1)?.uri).toBe('/v1/orders/my%20report.pdf');
  });

  it('tunnels plain HTTP through CONNECT (--proxytunnel) and judges it', async () => {
    const ok = await attempt('curl', ['-sS', '-p', '-x', proxyUrl, `http://orders.test:${up.port}/v1/orders/2`]);
    expect(ok.stdout).toBe('node-ok');
    const denied = await attempt('curl', [
      '-sS',
      '-p',
      '-x',
      proxyUrl,
      '-w',
      '%{http_code}',
      `http://orders.test:${up.port}/admin`,
    ]);
    expect(denied.stdout).toMatch(/path_not_allowed.*403$/);
  });

  it('shows the reason of a refused CONNECT', async () => {
    const denied = await attempt('curl', ['-sS', '-v', '-x', proxyUrl, 'https://nothing.test/']);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain('403 no_rule_for_destination');
  });
});

describe('Python requests', () => {
  const py = (code: string) => attempt('python3', ['-c', code]);
  it('gets an allowed URL and prints the reason of refusals', async () => {
    const out = await py(
      [
        'import requests',
        `p = {"http": "${proxyUrl}", "https": "${proxyUrl}"}`,
        `r = requests.get("http://orders.test:${up.port}/v1/orders/1", proxies=p)`,
        'print(r.status_code, r.text)',
        `r = requests.delete("http://orders.test:${up.port}/v1/orders/1", proxies=p)`,
        'print(r.status_code, r.reason)',
        'try:',
        '    requests.get("https://nothing.test/", proxies=p)',
        'except Exception as e:',
        '    print("error", e)',
      ].join('\n'),
    );
    const lines = out.stdout.trim().split('\n');
    expect(lines[0]).toBe('200 node-ok');
    expect(lines[1]).toBe('403 method_not_allowed');
    expect(lines[2]).toContain('403 no_rule_for_destination');
  });
});

describe('Go net/http client', () => {
  it('gets an allowed URL through HTTP_PROXY and sees the reason of refusals', async () => {
    expect((await attempt(goClient, ['GET', `http://orders.test:${up.port}/v1/orders/1`])).stdout).toBe(
      '200 OK\nnode-ok',
    );
    const denied = await attempt(goClient, ['DELETE', `http://orders.test:${up.port}/v1/orders/1`]);
    expect(denied.stdout).toMatch(/^403 method_not_allowed\n/);
    const tunnel = await attempt(goClient, ['GET', 'https://nothing.test/']);
    expect(tunnel.stdout).toContain('no_rule_for_destination');
  });

  it('cannot call a forbidden MCP tool', async () => {
    const body =
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_issues","NAME":"delete_repo"}}';
    const out = await attempt(goClient, ['POST', `http://mcp.test:${mcpPort}/mcp`, body]);
    expect(out.stdout).toMatch(/^403 mcp_message_invalid\n/);
  });
});

describe('Node fetch with NODE_USE_ENV_PROXY=1 (CONNECT even for http://)', () => {
  const fetchScript = (method: string, url: string) =>
    `fetch(${JSON.stringify(url)}, { method: ${JSON.stringify(method)} }).then(async (r) => console.log(r.status, await r.text()), (e) => console.log('error', e.cause?.message ?? e.message))`;
  it('is judged request by request inside the tunnel', async () => {
    const ok = await attempt(
      process.execPath,
      ['-e', fetchScript('GET', `http://orders.test:${up.port}/v1/orders/1`)],
      {
        NODE_USE_ENV_PROXY: '1',
      },
    );
    expect(ok.stdout.trim()).toBe('200 node-ok');
    const denied = await attempt(
      process.execPath,
      ['-e', fetchScript('DELETE', `http://orders.test:${up.port}/v1/orders/1`)],
      { NODE_USE_ENV_PROXY: '1' },
    );
    expect(denied.stdout).toMatch(/^403 .*method_not_allowed/);
    expect(proxy.audits.some((a) => a.method === 'CONNECT' && a.reason === 'inspected_tunnel')).toBe(true);
  });
});

describe('the MCP SDK client over Node fetch', () => {
  it('connects, lists tools, calls the allowed tool; the forbidden one never reaches the server', async () => {
    mcpCalls.length = 0;
    const out = await attempt(
      process.execPath,
      [new URL('../support/mcp-client.ts', import.meta.url).pathname, `http://mcp.test:${mcpPort}/mcp`],
      { NODE_USE_ENV_PROXY: '1' },
    );
    const result = JSON.parse(out.stdout.trim().split('\n').at(-1) ?? '{}') as Record<
      string,
      { ok: boolean; error?: string }
    >;
    expect(result.tools).toEqual(['delete_repo', 'search_issues']);
    expect(result.search_issues).toMatchObject({ ok: true });
    expect(result.delete_repo).toMatchObject({ ok: false });
    expect(result.delete_repo?.error).toContain('mcp_tool_not_allowed');
    expect(mcpCalls).toEqual(['search_issues']);
  });
});
