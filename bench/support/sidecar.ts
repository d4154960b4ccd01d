// The sidecar as the container runs it, for benchmarks: compiled JavaScript (type stripping would add ~30 MB of
// RSS), static entitlements from a JSON file (a pod's sidecar gets them from the controller and never loads the
// YAML parser, ~10 MB, which a YAML file would), audit lines to a file. Also the small process helpers benchmarks
// share.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { parse } from 'yaml';
import { sidecarRuntimeEnv } from '../../webhook/inject.ts';

const root = new URL('../..', import.meta.url).pathname;

/** The chart's memory limit for the sidecar container (sidecar.resources.limits.memory), in MiB. */
export const SIDECAR_LIMIT_MIB = ((): number => {
  const values = parse(readFileSync(join(root, 'charts/agentfence/values.yaml'), 'utf8')) as {
    sidecar: { resources: { limits: { memory: string } } };
  };
  const m = /^(\d+)Mi$/.exec(values.sidecar.resources.limits.memory);
  if (!m) throw new Error(`sidecar.resources.limits.memory is not in Mi: ${values.sidecar.resources.limits.memory}`);
  return Number(m[1]);
})();

/**
 * The environment a pod's sidecar runs with under the chart's limit (the webhook sets NODE_OPTIONS and
 * GLIBC_TUNABLES on the sidecar container). SIDECAR_RUNTIME_ENV=0 leaves them out for a comparison (Node's
 * and glibc's defaults).
 */
export const SIDECAR_ENV: Record<string, string> =
  // eslint-disable-next-line no-restricted-properties -- a bench knob, not configuration of the product
  process.env.SIDECAR_RUNTIME_ENV === '0'
    ? {}
    : Object.fromEntries(sidecarRuntimeEnv(`${SIDECAR_LIMIT_MIB}Mi`).map((e) => [e.name, e.value ?? '']));

/** SIDECAR_ENV in one line, for benchmark output. */
export const SIDECAR_ENV_TEXT =
  Object.entries(SIDECAR_ENV)
    .map(([k, v]) => `${k}='${v}'`)
    .join(' ') || "Node's and glibc's defaults";

/** The identity fields of the benchmarks' AgentEntitlement spec (the sidecar validates them as in a pod). */
export const BENCH_POD = {
  podName: 'bench',
  podUID: 'u',
  agent: 'bench',
  spiffeID: 'spiffe://cluster.local/ns/bench/agent/bench',
  revision: 'sha256:bench',
} as const;

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

export async function waitPort(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listening on ${port}`);
}

/** Resident set size of a process, in MB (MiB), from /proc. */
export function rssMB(pid: number | undefined): number {
  return statusMiB(pid, 'VmRSS');
}

/**
 * The anonymous part of the RSS (heap, buffers, allocator), in MiB. The rest is mostly the node binary's pages,
 * which are file-backed: a container at its limit has them reclaimed and read again, while anonymous memory
 * past the limit is what gets the container OOM-killed.
 */
export function anonMB(pid: number | undefined): number {
  return statusMiB(pid, 'RssAnon');
}

function statusMiB(pid: number | undefined, field: string): number {
  const status = readFileSync(`/proc/${pid ?? 0}/status`, 'utf8');
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) / 1024;
}

export interface SidecarProcess {
  child: ChildProcess;
  port: number;
  /** The admin listener (/metrics). */
  adminPort: number;
  auditFile: string;
}

/**
 * Builds the project into `work`/dist (once per `work`) and starts a sidecar in static mode with the given
 * entitlement spec (an AgentEntitlement `spec`). The child is pushed onto `children` for the caller to stop.
 */
export async function startSidecar(
  work: string,
  spec: Record<string, unknown>,
  children: ChildProcess[],
  /** More Node flags for the sidecar process only (it always gets SIDECAR_ENV, as in a pod). */
  nodeFlags: string[] = [],
  /** More sidecar flags (e.g. --trust-bundle-dir). */
  sidecarFlags: string[] = [],
): Promise<SidecarProcess> {
  const port = await freePort();
  const adminPort = await freePort();
  const entitlements = join(work, `entitlement-${port}.json`);
  writeFileSync(
    entitlements,
    JSON.stringify({
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentEntitlement',
      metadata: { name: 'bench', namespace: 'bench' },
      spec,
    }),
  );
  const auditFile = join(work, `audit-${port}.jsonl`);
  const dist = join(work, 'dist');
  if (!existsSync(dist)) {
    const built = spawnSync(
      process.execPath,
      [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.build.json'), '--outDir', dist],
      { stdio: 'inherit' },
    );
    if (built.status !== 0) throw new Error('build failed');
    symlinkSync(join(root, 'node_modules'), join(work, 'node_modules'));
  }
  const runner = `import(${JSON.stringify(join(dist, 'cli/main.js'))}).then((m) => m.main(process.argv.slice(1))).then((c) => { process.exitCode = c; })`;
  const child = spawn(
    process.execPath,
    [
      ...nodeFlags,
      '--input-type=module',
      '-e',
      runner,
      'sidecar',
      '--entitlements',
      entitlements,
      '--listen',
      `127.0.0.1:${port}`,
      '--admin-listen',
      `127.0.0.1:${adminPort}`,
      '--log-level',
      'warn',
      ...sidecarFlags,
    ],
    {
      stdio: ['ignore', openSync(auditFile, 'w'), 'inherit'],
      // eslint-disable-next-line no-restricted-properties -- the child's environment, as a pod's sidecar has it
      env: { ...process.env, NODE_OPTIONS: '', ...SIDECAR_ENV },
    },
  );
  children.push(child);
  await waitPort(port);
  return { child, port, adminPort, auditFile };
}
