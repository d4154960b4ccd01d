/**
 * The sidecar runs in every agent pod, so what it loads is paid once per agent. The Kubernetes client, express and
 * the controller's modules cost tens of MB of RSS and the sidecar uses none of them: a flag helper that imported the
 * Kubernetes client once took the sidecar's idle RSS from ~74 to ~125 MiB. This loads the sidecar's command module
 * in a real Node process, records every module it resolves, and fails on any of them.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

const FORBIDDEN = [
  /node_modules\/@kubernetes\/client-node\//,
  /node_modules\/express\//,
  /\/lib\/kube\//,
  /\/operator\//,
  /\/webhook\//,
  /\/localcluster\//,
];

function modulesLoadedBy(entry: string): string[] {
  // module.registerHooks sees every resolution, static and dynamic, in this process.
  const script = `
    import { registerHooks } from 'node:module';
    const seen = new Set();
    registerHooks({ resolve(specifier, context, next) { const r = next(specifier, context); seen.add(r.url); return r; } });
    await import(${JSON.stringify(new URL(entry, `file://${root}/`).href)});
    process.stdout.write(JSON.stringify([...seen]));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  return JSON.parse(out) as string[];
}

describe('the sidecar loads only what it uses', () => {
  it('cli/sidecar.ts pulls in no Kubernetes client, express, or controller module', () => {
    const loaded = modulesLoadedBy('cli/sidecar.ts');
    expect(loaded.some((url) => url.endsWith('/sidecar/runtime.ts'))).toBe(true); // the hook saw the graph
    expect(loaded.filter((url) => FORBIDDEN.some((re) => re.test(url)))).toEqual([]);
  });

  it('the check notices a forbidden module (the controller command loads the Kubernetes client)', () => {
    const loaded = modulesLoadedBy('cli/operator.ts');
    expect(loaded.filter((url) => FORBIDDEN.some((re) => re.test(url))).length).toBeGreaterThan(0);
  });
});
