/** `npm run demo` as a user runs it (non-interactive): every step of the narration happens, and it exits cleanly. */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cluster } from '../support/cluster.ts';

const cli = new URL('../../bin/agentfence.mjs', import.meta.url).pathname;

describe('agentfence demo', () => {
  it('injects, issues identities, allows and denies, shows status and audit, narrows live, and exits', async () => {
    const binDir = cluster().binaries.kubectl.replace(/\/kubectl$/, '');
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
      (resolve) => {
        const child = spawn(process.execPath, [cli, 'demo', '--once', '--no-build'], {
          // eslint-disable-next-line no-restricted-properties -- passes the test's environment on
          env: { ...process.env, KUBEBUILDER_ASSETS: binDir },
        });
        let out = '';
        let err = '';
        child.stdout.on('data', (c: Buffer) => (out += c.toString()));
        child.stderr.on('data', (c: Buffer) => (err += c.toString()));
        child.once('exit', (c) => resolve({ code: c, stdout: out, stderr: err }));
      },
    );
    expect(stderr).not.toContain('agentfence demo:');
    expect(code).toBe(0);
    expect(stdout).toMatch(/support-agent-0 created through the API server → injected: agentfence-sidecar/);
    expect(stdout).toMatch(
      /support-agent\s+GET\s+:\d+\/v1\/orders\/42 → 200 .*"verifiedCaller":"spiffe:\/\/cluster\.local\/ns\/demo\/agent\/support-agent"/,
    );
    expect(stdout).toMatch(/support-agent\s+POST\s+:\d+\/v1\/orders\/42 → 403 method_not_allowed/);
    expect(stdout).toMatch(/research-agent\s+GET\s+:\d+\/v1\/orders\/42 → 403 no_rule_for_destination/);
    // HTTPS: inspected with the pod CA, a path-restricted API allowed on one path and refused on another.
    expect(stdout).toMatch(
      /research-agent\s+GET\s+https:\/\/:\d+\/repos\/agentfence\/issues → 200 .*"title":"TLS inspection"/,
    );
    expect(stdout).toMatch(/research-agent\s+GET\s+https:\/\/:\d+\/admin\/users → 403 path_not_allowed/);
    // Agent to agent through both sidecars: the callee's app sees the verified caller, not the forged header the
    // caller's app sent; a forged caller straight at the gate is refused.
    expect(stdout).toMatch(/research-agent-0 created .* inbound gate :15006 → app :\d+/);
    expect(stdout).toMatch(
      /support-agent\s+POST\s+http:\/\/[\d.]+:\d+\/v1\/research → 200 .*"caller":"spiffe:\/\/cluster\.local\/ns\/demo\/agent\/support-agent"/,
    );
    expect(stdout).toMatch(/forged caller\s+POST\s+http:\/\/[\d.]+:15006\/v1\/research → 401 missing_credential/);
    // Credentials: the agent sends a dummy key over HTTPS; the upstream gets the Secret's, shown only as a match,
    // a short digest and a length: no character of the key is printed.
    expect(stdout).toMatch(/research-agent\s+POST\s+https:\/\/:\d+\/v1\/chat\/completions → 200 .*Summary, paid for/);
    expect(stdout).toMatch(
      /the LLM API received an Authorization header that matches the Secret's key \(sha256 [0-9a-f]{8}…\), \d+ chars, not the agent's dummy/,
    );
    expect(stdout).not.toContain('sk-demo');
    expect(stdout).toMatch(/agentpolicy\.agentfence\.io\/support-agent\s+True\s+Enforce\s+1\s+1/);
    expect(stdout).toContain('networkpolicy.networking.k8s.io/agentfence-baseline');
    expect(stdout).toMatch(/"decision":"deny","reason":"method_not_allowed"/);
    expect(stdout).toMatch(/enforced \d+ ms after kubectl apply[\s\S]*→ 403 no_rule_for_destination/);
    // --once ends by itself: no promise of a cluster that keeps running, no Ctrl-C.
    expect(stdout).toMatch(/Done in [\d.]+ s\. Stopping the control plane/);
    expect(stdout).not.toContain('Press Ctrl-C');
    expect(stdout).not.toContain('keeps running');
    // The narration is not interrupted by component warnings (a routine retry while the API server warms up).
    expect(stderr).not.toContain('"level":"warn"');
  }, 120_000);
});
