/**
 * The sidecar runs in every agent pod, so what it loads is paid once per agent. The Kubernetes client, express and
 * the controller's modules cost tens of MB of RSS and the sidecar uses none of them: a flag helper that imported the
 * Kubernetes client once took the sidecar's idle RSS from ~74 to ~125 MiB. This loads the sidecar's command module
 * in a real Node process, records every module it resolves, and fails on any of them.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

/**
 * Starts a static-mode sidecar (JSON entitlements) in its own process and reports, once it listens, which Node
 * internals (process.moduleLoadList) and which packages it has loaded.
 */
function loadedByRunningSidecar(): { internals: string[]; packages: string[] } {
  const dir = mkdtempSync(join(tmpdir(), 'agentfence-imports-'));
  try {
    const file = join(dir, 'entitlement.json');
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentEntitlement',
        metadata: { name: 'e', namespace: 'n' },
        spec: {
          podName: 'p',
          podUID: 'u',
          agent: 'a',
          spiffeID: 'spiffe://cluster.local/ns/n/agent/a',
          revision: 'sha256:r',
          egress: [
            { policy: 'p', rule: 'r', mode: 'Enforce', hosts: ['example.com'], ports: [{ port: 80, protocol: 'TCP' }] },
          ],
        },
      }),
    );
    const script = `
      import { registerHooks } from 'node:module';
      const seen = new Set();
      registerHooks({ resolve(specifier, context, next) { const r = next(specifier, context); seen.add(r.url); return r; } });
      const { sidecarCommand } = await import(${JSON.stringify(new URL('cli/sidecar.ts', `file://${root}/`).href)});
      void sidecarCommand({
        argv: ['--entitlements', ${JSON.stringify(file)}, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--log-level', 'error'],
        env: {}, stdout: () => undefined, stderr: (t) => process.stderr.write(t),
      });
      // Once both listeners (proxy, admin) are up, report.
      const deadline = Date.now() + 20000;
      const tick = () => setTimeout(() => {
        const servers = process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length;
        if (servers < 2 && Date.now() < deadline) return tick();
        process.stdout.write(JSON.stringify({ internals: process.moduleLoadList, packages: [...seen] }));
        process.exit(0);
      }, 50);
      tick();
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
    return JSON.parse(out) as { internals: string[]; packages: string[] };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Each case starts a Node process that loads a whole command's module graph: seconds on a loaded machine.
describe('the sidecar loads only what it uses', { timeout: 60_000 }, () => {
  it('cli/sidecar.ts pulls in no Kubernetes client, express, or controller module', () => {
    const loaded = modulesLoadedBy('cli/sidecar.ts');
    expect(loaded.some((url) => url.endsWith('/sidecar/runtime.ts'))).toBe(true); // the hook saw the graph
    expect(loaded.filter((url) => FORBIDDEN.some((re) => re.test(url)))).toEqual([]);
  });

  it('the check notices a forbidden module (the controller command loads the Kubernetes client)', () => {
    const loaded = modulesLoadedBy('cli/operator.ts');
    expect(loaded.filter((url) => FORBIDDEN.some((re) => re.test(url))).length).toBeGreaterThan(0);
  });

  it('a running static-mode sidecar loads no prom-client, YAML parser, undici, HTTP/2 or X.509 library', () => {
    // Each of these once sat in every sidecar's resident memory without being used there: prom-client ~17 MB,
    // yaml ~12 MB (only for a YAML entitlements file), undici ~13 MB (pulled in by ESM imports of node:http,
    // whose WebSocket exports are lazy getters), @peculiar/x509 with its ASN.1 schemas and the Reflect polyfill
    // ~21 MB (the pod CA writes its certificates with lib/tls/certificate.ts). node:tls (~8 MB) is expected:
    // the pod CA reads the public roots and builds leaf contexts with it at start.
    const { internals, packages } = loadedByRunningSidecar();
    expect(internals).toContain('NativeModule http'); // the report is real
    expect(internals).toContain('NativeModule tls'); // ... and sees a module the pod CA does load
    expect(internals.filter((m) => /undici|http2|worker_threads/.test(m))).toEqual([]);
    expect(
      packages.filter((url) =>
        /node_modules\/(prom-client|yaml|@opentelemetry|@peculiar\/|reflect-metadata|asn1js|pvtsutils|pvutils|tsyringe)/.test(
          url,
        ),
      ),
    ).toEqual([]);
  });
});
