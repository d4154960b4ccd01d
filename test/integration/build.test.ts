/**
 * The package as `npm run build` makes it (tsc into dist/, what npm pack and the image ship): every `exports`
 * entry of package.json resolves and imports, and the built CLI finds hack/, crds/ and charts/ from the package
 * root (lib/paths.ts), not from beside its own compiled files. Built into a copy of the package, so that the
 * checkout's bin/agentfence.mjs keeps running the sources for the other tests.
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const pkg = mkdtempSync(join(tmpdir(), 'agentfence-built-'));

beforeAll(async () => {
  for (const entry of [
    'package.json',
    'tsconfig.json',
    'tsconfig.build.json',
    'bin',
    'hack',
    'crds',
    'charts',
    'examples',
  ])
    cpSync(join(root, entry), join(pkg, entry), { recursive: true });
  for (const src of ['lib', 'cli', 'operator', 'webhook', 'sidecar', 'localcluster'])
    cpSync(join(root, src), join(pkg, src), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(pkg, 'node_modules'));
  await run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
    cwd: pkg,
  });
  // What ships: dist/ without the TypeScript sources.
  for (const src of ['lib', 'cli', 'operator', 'webhook', 'sidecar', 'localcluster'])
    rmSync(join(pkg, src), { recursive: true });
}, 300_000);

afterAll(() => {
  rmSync(pkg, { recursive: true, force: true });
});

describe('after npm run build', () => {
  it('every exports entry of package.json resolves to a built file and imports', async () => {
    const exportsMap = (
      JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as { exports: Record<string, string> }
    ).exports;
    expect(Object.keys(exportsMap).length).toBeGreaterThan(0);
    for (const [name, target] of Object.entries(exportsMap)) {
      expect(existsSync(join(pkg, target)), `${name} → ${target}`).toBe(true);
      const mod = (await import(join(pkg, target))) as Record<string, unknown>;
      expect(Object.keys(mod).length, `${name} exports something`).toBeGreaterThan(0);
    }
  });

  it('the built CLI runs, and local-cluster finds hack/ from the package root', async () => {
    const cli = join(pkg, 'bin/agentfence.mjs');
    const help = await run(process.execPath, [cli, '--help']);
    expect(help.stdout).toContain('local-cluster');
    // No binaries in an empty cache and --no-build: the build script runs with --check and says so (before the
    // fix the compiled module looked for dist/hack/build-k8s-binaries.sh: spawn ENOENT).
    const err = (await run(process.execPath, [cli, 'local-cluster', '--no-build'], {
      env: { PATH: process.env.PATH, AGENTFENCE_CACHE: join(pkg, 'empty-cache') }, // eslint-disable-line no-restricted-properties -- the child's PATH
    }).catch((e: unknown) => e)) as { code?: number; stderr?: string };
    expect(err.stderr).toContain('control-plane binaries are not built yet');
    expect(err.stderr).not.toContain('ENOENT');
    expect(err.code).toBe(1);
  });
});
