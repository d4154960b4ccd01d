// Sidecar data-path benchmark, one run, side by side: direct, through the Agentfence sidecar (policy engine and
// audit on; audit lines to a file), through a naive Node forward proxy, and through squid when installed.
// Load from wrk (Debian package) in its own process. Also the sidecar's RSS idle and under load.
// Targets (PERFORMANCE.md): throughput at 16 connections >= squid; added latency p50 <= 0.30 ms and
// p99 <= 1.0 ms over direct at 1 connection; RSS <= 50 MB idle.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BENCH_POD, freePort, rssMB, startSidecar, waitPort } from './support/sidecar.ts';

const here = new URL('.', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'agentfence-bench-'));
chmodSync(work, 0o777);
const children: ChildProcess[] = [];
const DURATION = '8s';

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}
function startNode(script: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve) =>
    child.stdout.once('data', (d: Buffer) => resolve({ child, port: Number(d.toString().trim()) })),
  );
}

interface Result {
  rps: number;
  p50: number;
  p99: number;
}
function wrk(
  target: string,
  proxyPort: number | undefined,
  connections: number,
): { rps: number; p50: number; p99: number } {
  const args = ['-t1', `-c${connections}`, `-d${DURATION}`, '--latency'];
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
function measure(target: string, proxyPort?: number): Result {
  wrk(target, proxyPort, 16); // warm-up (JIT, pools)
  const c16 = wrk(target, proxyPort, 16);
  const c1 = wrk(target, proxyPort, 1);
  return { rps: c16.rps, p50: c1.p50, p99: c1.p99 };
}

try {
  if (!has('wrk')) throw new Error('wrk is required (apt-get install wrk)');
  const upstream = await startNode(join(here, 'support/upstream.ts'));
  const target = `http://127.0.0.1:${upstream.port}/x`;

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
  const sidecarPort = sidecar.port;
  const auditFile = sidecar.auditFile;
  await new Promise((r) => setTimeout(r, 1000));
  const idleRss = rssMB(sidecar.child.pid);

  const naive = await startNode(join(here, 'support/naive-proxy.ts'));

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

  const rows: [string, Result][] = [['direct (no proxy)', measure(target)]];
  const agentfence = measure(target, sidecarPort);
  const loadRss = rssMB(sidecar.child.pid);
  rows.push(['agentfence sidecar (policy + audit)', agentfence]);
  rows.push(['naive Node proxy (no policy)', measure(target, naive.port)]);
  if (squidPort) rows.push(['squid 5.7 (dst+port ACL, no cache)', measure(target, squidPort)]);

  const direct = rows[0]?.[1];
  const squid = rows.find(([n]) => n.startsWith('squid'))?.[1];
  const f = (n: number, d = 3): string => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
  console.log(`| path | req/s, 16 conns | p50 ms, 1 conn | p99 ms, 1 conn | req/s vs squid |`);
  console.log('|---|---|---|---|---|');
  for (const [name, r] of rows) {
    console.log(
      `| ${name} | ${Math.round(r.rps)} | ${f(r.p50)} | ${f(r.p99)} | ${squid ? `${(r.rps / squid.rps).toFixed(2)}x` : 'n/a'} |`,
    );
  }
  if (direct) {
    console.log('');
    console.log(
      `agentfence added latency over direct: p50 ${f(agentfence.p50 - direct.p50)} ms (target <= 0.30), p99 ${f(agentfence.p99 - direct.p99)} ms (target <= 1.0)`,
    );
  }
  const lines = readFileSync(auditFile, 'utf8').split('\n').length - 1;
  console.log(
    `agentfence sidecar RSS: ${f(idleRss, 1)} MB idle (target <= 50), ${f(loadRss, 1)} MB after load; ${lines} audit lines written`,
  );
} finally {
  for (const c of children) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  rmSync(work, { recursive: true, force: true });
}
