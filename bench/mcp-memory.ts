// Sidecar memory under concurrent MCP bodies alone (bench:proxy prints the same case next to its other figures):
// 100 clients at once each POST a ~1 MB `tools/call`, in waves; the sidecar's peak RSS next to the chart's memory
// limit (charts/agentfence/values.yaml, sidecar 128Mi). The sidecar runs with a pod's environment (NODE_OPTIONS,
// GLIBC_TUNABLES; SIDECAR_RUNTIME_ENV=0 leaves it out); SIDECAR_NODE_FLAGS passes more Node flags to it only.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatStatuses, MCP_BODY_BYTES, MCP_CLIENTS, MCP_WAVES, mcpLoad } from './support/mcp-load.ts';
import { SIDECAR_ENV_TEXT, SIDECAR_LIMIT_MIB } from './support/sidecar.ts';

const here = new URL('.', import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), 'agentfence-bench-mcp-'));
chmodSync(work, 0o777);
const children: ChildProcess[] = [];

function startUpstream(): Promise<number> {
  const child = spawn(process.execPath, [join(here, 'support/upstream.ts')], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve) => child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
}

try {
  const upstreamPort = await startUpstream();
  const r = await mcpLoad(
    work,
    upstreamPort,
    children,
    // eslint-disable-next-line no-restricted-properties -- a bench knob, not configuration of the product
    (process.env.SIDECAR_NODE_FLAGS ?? '').split(' ').filter(Boolean),
  );
  const f = (n: number): string => n.toFixed(1);
  console.log(`sidecar environment (as injected): ${SIDECAR_ENV_TEXT}`);
  console.log('');
  console.log(`| sidecar | RSS MiB | anonymous MiB |`);
  console.log('|---|---|---|');
  console.log(`| idle | ${f(r.idle)} | |`);
  console.log(
    `| peak, ${MCP_WAVES} waves of ${MCP_CLIENTS} concurrent ${MCP_BODY_BYTES}-byte MCP bodies | ${f(r.peak)} | ${f(r.peakAnon)} |`,
  );
  console.log(`| after | ${f(r.after)} | ${f(r.afterAnon)} |`);
  console.log(`| chart limit (sidecar.resources.limits.memory) | ${SIDECAR_LIMIT_MIB} | |`);
  console.log('');
  console.log(
    `responses: ${formatStatuses(r.statuses)}; ${r.auditLines} audit lines; peak ${r.peak <= SIDECAR_LIMIT_MIB ? 'within' : 'OVER'} the ${SIDECAR_LIMIT_MIB} MiB limit`,
  );
} finally {
  for (const c of children) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  rmSync(work, { recursive: true, force: true });
}
