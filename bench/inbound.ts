// Inbound gate benchmark: an app called directly, and through the sidecar's gate with an agent token (verified
// once, then cached), side by side with the egress path of the same sidecar. Load from wrk in its own process.
// Targets (issue 18): added latency over direct p50 <= 0.3 ms, p99 <= 1 ms at one connection; throughput at 16
// connections reported next to egress. Figures are printed, never asserted.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const here = new URL('.', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'agentfence-bench-inbound-'));
const children: ChildProcess[] = [];
const DURATION = '8s';

function start(script: string, args: string[] = []): Promise<string> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
}

interface Result {
  rps: number;
  p50: number;
  p99: number;
}
function wrk(url: string, connections: number, options: { proxyPort?: number; header?: string } = {}): Result {
  const args = ['-t1', `-c${connections}`, `-d${DURATION}`, '--latency'];
  if (options.header) args.push('-H', options.header);
  if (options.proxyPort) {
    const script = join(work, `path-${options.proxyPort}.lua`);
    writeFileSync(script, `wrk.path = "${url}"\n`);
    args.push('-s', script, `http://127.0.0.1:${options.proxyPort}`);
  } else args.push(url);
  const out = spawnSync('wrk', args, { encoding: 'utf8' }).stdout;
  const ms = (label: string): number => {
    const m = new RegExp(`${label}\\s+([\\d.]+)(us|ms|s)`).exec(out);
    if (!m) return NaN;
    const v = Number(m[1]);
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v;
  };
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (non2xx) throw new Error(`wrk saw ${non2xx[1]} non-2xx responses:\n${out}`);
  return { rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0), p50: ms('50%'), p99: ms('99%') };
}
function measure(url: string, options: { proxyPort?: number; header?: string } = {}): Result {
  wrk(url, 16, options); // warm-up (JIT, pools, token cache)
  const c16 = wrk(url, 16, options);
  const c1 = wrk(url, 1, options);
  return { rps: c16.rps, p50: c1.p50, p99: c1.p99 };
}

try {
  if (spawnSync('sh', ['-c', 'command -v wrk']).status !== 0) throw new Error('wrk is required (apt-get install wrk)');
  const appPort = Number(await start(join(here, 'support/upstream.ts')));
  const { gatePort, proxyPort, token } = JSON.parse(
    await start(join(here, 'support/inbound-sidecar.ts'), [String(appPort)]),
  ) as { gatePort: number; proxyPort: number; token: string };
  const direct = measure(`http://127.0.0.1:${appPort}/x`);
  const inbound = measure(`http://127.0.0.1:${gatePort}/x`, { header: `agentfence-identity: ${token}` });
  const egress = measure(`http://127.0.0.1:${appPort}/x`, { proxyPort });
  const f = (n: number, d = 3): string => (Number.isFinite(n) ? n.toFixed(d) : 'n/a');
  console.log('| path | req/s, 16 conns | p50 ms, 1 conn | p99 ms, 1 conn |');
  console.log('|---|---|---|---|');
  for (const [name, r] of [
    ['direct to the app', direct],
    ['inbound gate (agent token verified, cached) → app', inbound],
    ['egress proxy (policy + audit) → app', egress],
  ] as const)
    console.log(`| ${name} | ${Math.round(r.rps)} | ${f(r.p50)} | ${f(r.p99)} |`);
  console.log('');
  console.log(
    `inbound added latency over direct: p50 ${f(inbound.p50 - direct.p50)} ms (target <= 0.3), p99 ${f(inbound.p99 - direct.p99)} ms (target <= 1.0)`,
  );
} finally {
  for (const c of children) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  rmSync(work, { recursive: true, force: true });
}
