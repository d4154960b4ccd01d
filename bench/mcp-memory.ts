// Sidecar memory under concurrent MCP bodies (issue 10 item 10): 100 clients at once each POST a ~1 MB
// `tools/call` through the sidecar to an MCP rule, in several waves; the sidecar's RSS is sampled throughout
// and its peak printed next to the chart's memory limit (charts/agentfence/values.yaml, sidecar 128Mi).
// Bodies judged at once are bounded by the global budget of buffered bodies: past it, 503 + Retry-After.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request, Agent } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BENCH_POD, rssMB, startSidecar } from './support/sidecar.ts';

const CLIENTS = 100;
const WAVES = 3;
const BODY_BYTES = 1_000_000;
const LIMIT_MIB = 128;

const here = new URL('.', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'agentfence-bench-mcp-'));
chmodSync(work, 0o777);
const children: ChildProcess[] = [];

function startUpstream(): Promise<number> {
  const child = spawn(process.execPath, [join(here, 'support/upstream.ts')], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve) => child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
}

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

try {
  const upstreamPort = await startUpstream();
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
    // eslint-disable-next-line no-restricted-properties -- a bench knob, not configuration of the product
    (process.env.SIDECAR_NODE_FLAGS ?? '').split(' ').filter(Boolean),
  );
  await new Promise((r) => setTimeout(r, 1000));
  const pid = sidecar.child.pid;
  const idle = rssMB(pid);
  let peak = idle;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMB(pid))), 10);
  const body = mcpBody(BODY_BYTES);
  const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  const counts = new Map<number, number>();
  for (let wave = 0; wave < WAVES; wave++) {
    const statuses = await Promise.all(
      Array.from({ length: CLIENTS }, () => post(sidecar.port, upstreamPort, body, agent)),
    );
    for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1);
  }
  clearInterval(sampler);
  agent.destroy();
  await new Promise((r) => setTimeout(r, 500));
  const after = rssMB(pid);
  const lines = readFileSync(sidecar.auditFile, 'utf8').split('\n').length - 1;
  const f = (n: number): string => n.toFixed(1);
  console.log(`| sidecar RSS | MiB |`);
  console.log('|---|---|');
  console.log(`| idle | ${f(idle)} |`);
  console.log(`| peak, ${WAVES} waves of ${CLIENTS} concurrent ${BODY_BYTES}-byte MCP bodies | ${f(peak)} |`);
  console.log(`| after | ${f(after)} |`);
  console.log(`| chart limit (sidecar.resources.limits.memory) | ${LIMIT_MIB} |`);
  console.log('');
  console.log(
    `responses: ${[...counts].map(([s, n]) => `${n} x ${s === -1 ? 'error' : s}`).join(', ')}; ${lines} audit lines; peak ${peak <= LIMIT_MIB ? 'within' : 'OVER'} the ${LIMIT_MIB} MiB limit`,
  );
} finally {
  for (const c of children) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  rmSync(work, { recursive: true, force: true });
}
