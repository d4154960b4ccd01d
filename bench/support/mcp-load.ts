// The large-body case (issue 10 item 10, issue 19 target 1): 100 clients at once each POST a ~1 MB MCP
// `tools/call` through a sidecar to an MCP rule, in several waves, while the sidecar's RSS is sampled. Bodies
// judged at once are bounded by the global budget of buffered bodies: past it, 503 + Retry-After.
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { BENCH_POD, anonMB, rssMB, startSidecar } from './sidecar.ts';

export const MCP_CLIENTS = 100;
export const MCP_WAVES = 3;
export const MCP_BODY_BYTES = 1_000_000;

/** A `tools/call` of an allowed tool whose argument pads the body to `size` bytes. */
function mcpBody(size: number): Buffer {
  const head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_issues","arguments":{"q":"';
  const tail = '"}}}';
  return Buffer.from(head + 'x'.repeat(size - head.length - tail.length) + tail);
}

function post(proxyPort: number, upstreamPort: number, body: Buffer, agent: Agent): Promise<number> {
  return new Promise((resolve) => {
    const req = request({
      host: '127.0.0.1',
      port: proxyPort,
      method: 'POST',
      path: `http://127.0.0.1:${upstreamPort}/mcp`,
      headers: { 'content-type': 'application/json', 'content-length': body.length },
      agent,
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(-1));
    });
    req.on('error', () => resolve(-1));
    req.end(body);
  });
}

export interface McpLoadResult {
  idle: number;
  peak: number;
  after: number;
  /** The anonymous part of the RSS (what an OOM kill counts; see anonMB): at its peak, and after. */
  peakAnon: number;
  afterAnon: number;
  /** Responses by status (-1: connection error). */
  statuses: Map<number, number>;
  auditLines: number;
}

/** Starts its own sidecar (so its peak is this case's alone), runs the waves, stops nothing (children). */
export async function mcpLoad(
  work: string,
  upstreamPort: number,
  children: ChildProcess[],
  nodeFlags: string[] = [],
): Promise<McpLoadResult> {
  const sidecar = await startSidecar(
    work,
    {
      ...BENCH_POD,
      egress: [
        {
          policy: 'bench',
          rule: 'mcp',
          mode: 'Enforce',
          cidrs: ['127.0.0.1/32'],
          ports: [{ port: upstreamPort, protocol: 'TCP' }],
          mcp: { path: '/mcp', tools: ['search_issues'] },
        },
      ],
    },
    children,
    nodeFlags,
  );
  await new Promise((r) => setTimeout(r, 1000));
  const pid = sidecar.child.pid;
  const idle = rssMB(pid);
  let peak = idle;
  let peakAnon = anonMB(pid);
  const sampler = setInterval(() => {
    peak = Math.max(peak, rssMB(pid));
    peakAnon = Math.max(peakAnon, anonMB(pid));
  }, 10);
  const body = mcpBody(MCP_BODY_BYTES);
  const agent = new Agent({ keepAlive: true, maxSockets: MCP_CLIENTS });
  const statuses = new Map<number, number>();
  for (let wave = 0; wave < MCP_WAVES; wave++) {
    const results = await Promise.all(
      Array.from({ length: MCP_CLIENTS }, () => post(sidecar.port, upstreamPort, body, agent)),
    );
    for (const s of results) statuses.set(s, (statuses.get(s) ?? 0) + 1);
  }
  clearInterval(sampler);
  agent.destroy();
  await new Promise((r) => setTimeout(r, 500));
  const after = rssMB(pid);
  const afterAnon = anonMB(pid);
  const auditLines = readFileSync(sidecar.auditFile, 'utf8').split('\n').length - 1;
  sidecar.child.kill('SIGTERM');
  return { idle, peak, after, peakAnon, afterAnon, statuses, auditLines };
}

export const formatStatuses = (statuses: Map<number, number>): string =>
  [...statuses].map(([s, n]) => `${n} x ${s === -1 ? 'error' : s}`).join(', ');
