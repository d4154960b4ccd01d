// Sidecar data-path benchmark (issue 19 targets 1-3), everything side by side in one run on loopback: a bare Node
// HTTP server (the memory floor), the Agentfence sidecar (policy engine, audit to a file, metrics), a naive Node
// forward proxy, squid when installed, and direct requests. Load from wrk (Debian package) in its own process.
// Printed: idle RSS and its ratio to bare Node; RSS after >= 100k requests and with 1,000 open connections; the
// 100 x 1 MB MCP case's peak against the chart's limit; req/s at 16 connections as ratios to the naive proxy and
// squid; added p50/p99 at 1 connection; the sidecar's GC pauses under load (its nodejs_gc_duration_seconds).
// Ratios are only meaningful within one run: run it 2-3 times on a busy machine and report the range.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatStatuses, MCP_BODY_BYTES, MCP_CLIENTS, MCP_WAVES, mcpLoad } from './support/mcp-load.ts';
import {
  BENCH_POD,
  SIDECAR_LIMIT_MIB,
  SIDECAR_ENV_TEXT,
  freePort,
  rssMB,
  startSidecar,
  waitPort,
} from './support/sidecar.ts';

const here = new URL('.', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'agentfence-bench-'));
chmodSync(work, 0o777);
const children: ChildProcess[] = [];
const DURATION_S = 5;
/** Paths are measured in turn, round after round, so that load from other work on the machine hits all alike. */
const ROUNDS = 3;
const OPEN_CONNECTIONS = 1000;

/** The memory floor: the smallest idiomatic Node HTTP server (CommonJS, no type stripping, no dependencies). */
const BARE_SERVER = `require('node:http').createServer((req, res) => res.end('ok\\n'))
  .listen(0, '127.0.0.1', function () { console.log(this.address().port); });`;

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}
function startNode(args: string[]): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve) =>
    child.stdout.once('data', (d: Buffer) => resolve({ child, port: Number(d.toString().trim()) })),
  );
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Result {
  rps: number;
  p50: number;
  p99: number;
}
function wrk(target: string, proxyPort: number | undefined, connections: number, seconds = DURATION_S): Result {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency'];
  if (proxyPort) {
    const script = join(work, `path-${proxyPort}.lua`);
    writeFileSync(script, `wrk.path = "${target}"\n`);
    args.push('-s', script, `http://127.0.0.1:${proxyPort}`);
  } else args.push(target);
  const out = spawnSync('wrk', args, { encoding: 'utf8' }).stdout;
  const ms = (label: string): number => {
    const m = new RegExp(`${label}\\s+([\\d.]+)(us|ms|s)`).exec(out);
    if (!m) return NaN;
    const v = Number(m[1]);
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v;
  };
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (non2xx) throw new Error(`wrk saw ${non2xx[1]} non-2xx responses via port ${proxyPort ?? 'direct'}:\n${out}`);
  return { rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0), p50: ms('50%'), p99: ms('99%') };
}
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? (s[(s.length - 1) / 2] ?? NaN) : ((s[s.length / 2 - 1] ?? NaN) + (s[s.length / 2] ?? NaN)) / 2;
};
/** Each path: a warm-up (JIT, pools), then per round req/s at 16 connections and latency at 1; medians. */
function measureAll(paths: { name: string; port?: number }[], target: string, between?: () => void): Result[][] {
  for (const p of paths) wrk(target, p.port, 16, 3);
  const rounds: Result[][] = [];
  for (let r = 0; r < ROUNDS; r++) {
    rounds.push(
      paths.map((p) => {
        const c16 = wrk(target, p.port, 16);
        const c1 = wrk(target, p.port, 1);
        return { rps: c16.rps, p50: c1.p50, p99: c1.p99 };
      }),
    );
    between?.();
  }
  return rounds;
}

/** Opens `n` keep-alive connections (each after one request, through the proxy when given) and leaves them open. */
async function openConnections(port: number, path: string, n: number): Promise<Agent> {
  const agent = new Agent({ keepAlive: true, maxSockets: n, keepAliveMsecs: 60_000 });
  const one = (): Promise<number> =>
    new Promise((resolve) => {
      const req = request({ host: '127.0.0.1', port, path, agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', () => resolve(-1));
      req.end();
    });
  const statuses = await Promise.all(Array.from({ length: n }, one));
  const bad = statuses.filter((s) => s !== 200).length;
  if (bad > 0) throw new Error(`${bad} of ${n} requests on new connections failed`);
  return agent;
}

interface GcTotals {
  count: number;
  seconds: number;
  /** Pauses of 1 ms or more. */
  over1ms: number;
  /** Upper bound of the largest pause (the smallest bucket holding them all). */
  maxLe: number;
}
async function gcTotals(adminPort: number): Promise<GcTotals> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const t: GcTotals = { count: 0, seconds: 0, over1ms: 0, maxLe: 0 };
  const buckets = new Map<number, number>();
  for (const m of text.matchAll(/^nodejs_gc_duration_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)$/gm)) {
    const value = Number(m[3]);
    if (m[1] === 'count') t.count += value;
    else if (m[1] === 'sum') t.seconds += value;
    else {
      const le = Number(/le="([^"]+)"/.exec(m[2] ?? '')?.[1]?.replace('+Inf', 'Infinity'));
      buckets.set(le, (buckets.get(le) ?? 0) + value);
    }
  }
  t.over1ms = t.count - (buckets.get(0.001) ?? 0);
  t.maxLe = [...buckets.keys()].sort((a, b) => a - b).find((le) => (buckets.get(le) ?? 0) >= t.count) ?? 0;
  return t;
}

try {
  if (!has('wrk')) throw new Error('wrk is required (apt-get install wrk)');
  const upstream = await startNode([join(here, 'support/upstream.ts')]);
  const target = `http://127.0.0.1:${upstream.port}/x`;
  const bare = await startNode(['-e', BARE_SERVER]);

  // The sidecar, static mode, with a policy that is evaluated on every request (host, port, method, path).
  const sidecar = await startSidecar(
    work,
    {
      ...BENCH_POD,
      egress: [
        ...Array.from({ length: 20 }, (_, i) => ({
          policy: 'noise',
          rule: `r${i}`,
          mode: 'Enforce',
          hosts: [`api${i}.example.com`, `*.svc${i}.example`],
          ports: [{ port: 443, protocol: 'TCP' }],
        })),
        {
          policy: 'bench',
          rule: 'upstream',
          mode: 'Enforce',
          cidrs: ['127.0.0.1/32'],
          ports: [{ port: upstream.port, protocol: 'TCP' }],
          http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/' }] }],
        },
      ],
    },
    children,
  );
  await sleep(1000);
  const bareIdle = rssMB(bare.child.pid);
  const idleRss = rssMB(sidecar.child.pid);

  const naive = await startNode([join(here, 'support/naive-proxy.ts')]);
  let squidPort: number | undefined;
  if (has('squid')) {
    squidPort = await freePort();
    const conf = join(work, 'squid.conf');
    writeFileSync(
      conf,
      [
        `http_port 127.0.0.1:${squidPort}`,
        'acl upstream dst 127.0.0.1/32',
        `acl upstream_port port ${upstream.port}`,
        'http_access allow upstream upstream_port',
        'http_access deny all',
        'cache deny all',
        'access_log none',
        `cache_log ${join(work, 'squid-cache.log')}`,
        `pid_filename ${join(work, 'squid.pid')}`,
        `coredump_dir ${work}`,
        'shutdown_lifetime 0 seconds',
      ].join('\n'),
    );
    const squid = spawn('squid', ['-N', '-f', conf], { stdio: 'ignore' });
    children.push(squid);
    await waitPort(squidPort);
  }

  const paths = [
    { name: 'direct (no proxy)' },
    { name: 'agentfence sidecar (policy + audit + metrics)', port: sidecar.port },
    { name: 'naive Node proxy (no policy)', port: naive.port },
    ...(squidPort ? [{ name: 'squid (dst+port ACL, no cache)', port: squidPort }] : []),
  ];
  const gcBefore = await gcTotals(sidecar.adminPort);
  const rounds = measureAll(paths, target);
  const gcAfter = await gcTotals(sidecar.adminPort);
  const requestsServed = readFileSync(sidecar.auditFile, 'utf8').split('\n').length - 1;
  const loadRss = rssMB(sidecar.child.pid);
  const sidecarConns = await openConnections(sidecar.port, target, OPEN_CONNECTIONS);
  const bareConns = await openConnections(bare.port, '/', OPEN_CONNECTIONS);
  await sleep(500);
  const connRss = rssMB(sidecar.child.pid);
  const bareConnRss = rssMB(bare.child.pid);
  sidecarConns.destroy();
  bareConns.destroy();
  sidecar.child.kill('SIGTERM');
  const mcp = await mcpLoad(work, upstream.port, children);

  const column = (i: number, pick: (r: Result) => number): number[] => rounds.map((round) => pick(round[i] as Result));
  const med = (i: number): Result => ({
    rps: median(column(i, (r) => r.rps)),
    p50: median(column(i, (r) => r.p50)),
    p99: median(column(i, (r) => r.p99)),
  });
  const [, , naiveResult, squid] = paths.map((_, i) => med(i)) as [Result, Result, Result, Result?];
  /** Per-round ratios of path i to path j: their range shows how much the machine's load moved them. */
  const ratios = (i: number, j: number, pick: (r: Result) => number): string => {
    const rs = rounds.map((round) => pick(round[i] as Result) / pick(round[j] as Result));
    return `${median(rs).toFixed(2)}x (rounds ${Math.min(...rs).toFixed(2)}-${Math.max(...rs).toFixed(2)})`;
  };
  const f = (n: number, d = 3): string => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
  const x = (a: number, b: number | undefined): string => (b ? `${(a / b).toFixed(2)}x` : 'n/a');
  console.log(`medians of ${ROUNDS} interleaved rounds of ${DURATION_S} s per path and connection count`);
  console.log(`sidecar environment (as injected under the chart's limit): ${SIDECAR_ENV_TEXT}`);
  console.log('');
  console.log(`| path | req/s, 16 conns | vs naive proxy | vs squid | p50 ms, 1 conn | p99 ms, 1 conn |`);
  console.log('|---|---|---|---|---|---|');
  paths.forEach((p, i) => {
    const r = med(i);
    console.log(
      `| ${p.name} | ${Math.round(r.rps)} | ${x(r.rps, naiveResult.rps)} | ${x(r.rps, squid?.rps)} | ${f(r.p50)} | ${f(r.p99)} |`,
    );
  });
  console.log('');
  /** Added latency over direct per round; the least disturbed round is the best estimate on a busy machine. */
  const added = (pick: (r: Result) => number): string => {
    const d = rounds.map((round) => pick(round[1] as Result) - pick(round[0] as Result));
    return `${f(median(d))} ms (best round ${f(Math.min(...d))})`;
  };
  console.log(
    `sidecar added latency over direct at 1 conn: p50 ${added((r) => r.p50)}, p99 ${added((r) => r.p99)} (target p99 <= 1.0)`,
  );
  console.log(
    `sidecar throughput: ${ratios(1, 2, (r) => r.rps)} the naive Node proxy (target >= 0.95x)${squid ? `, ${ratios(1, 3, (r) => r.rps)} squid` : ''}`,
  );
  const gcCount = gcAfter.count - gcBefore.count;
  const gcMs = (gcAfter.seconds - gcBefore.seconds) * 1000;
  console.log(
    `sidecar GC during its load (${requestsServed} requests): ${gcCount} pauses, ${f(gcMs, 1)} ms in total (${f(gcMs / Math.max(gcCount, 1))} ms mean), ${gcAfter.over1ms - gcBefore.over1ms} of 1 ms or more, largest <= ${f(gcAfter.maxLe * 1000, 2)} ms`,
  );
  console.log('');
  const r = (n: number): string => x(n, bareIdle);
  console.log(`| memory (RSS) | MiB | vs bare Node idle | vs bare Node, same connections | target |`);
  console.log('|---|---|---|---|---|');
  console.log(`| bare Node HTTP server, idle | ${f(bareIdle, 1)} | 1.00x | | |`);
  console.log(
    `| bare Node HTTP server, ${OPEN_CONNECTIONS} open connections | ${f(bareConnRss, 1)} | ${r(bareConnRss)} | 1.00x | |`,
  );
  console.log(`| sidecar, idle | ${f(idleRss, 1)} | ${r(idleRss)} | | <= 1.15x |`);
  console.log(`| sidecar, after ${requestsServed} requests | ${f(loadRss, 1)} | ${r(loadRss)} | | |`);
  console.log(
    `| sidecar, after those and with ${OPEN_CONNECTIONS} open connections | ${f(connRss, 1)} | ${r(connRss)} | ${x(connRss, bareConnRss)} | <= 1.5x |`,
  );
  console.log(
    `| sidecar (fresh), peak over ${MCP_WAVES} waves of ${MCP_CLIENTS} concurrent ${MCP_BODY_BYTES}-byte MCP bodies | ${f(mcp.peak, 1)} | ${r(mcp.peak)} | | <= ${SIDECAR_LIMIT_MIB} MiB (chart limit) |`,
  );
  console.log('');
  console.log(
    `MCP case: ${formatStatuses(mcp.statuses)}; ${mcp.auditLines} audit lines; anonymous RSS (what an OOM kill counts) peak ${f(mcp.peakAnon, 1)} MiB, ${f(mcp.afterAnon, 1)} MiB after (RSS ${f(mcp.after, 1)})`,
  );
} finally {
  for (const c of children) c.kill('SIGTERM');
  await sleep(300);
  rmSync(work, { recursive: true, force: true });
}
