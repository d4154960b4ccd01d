/**
 * Audit lines are batched and serialized off the request path (sidecar/audit.ts); none may be lost when the
 * sidecar is stopped. A real sidecar process (static mode), a real upstream, real requests: some finished, some
 * still waiting on the upstream when SIGTERM arrives. Every request must have its line on stdout at exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'agentfence-shutdown-'));
let started: ChildProcess | undefined;
afterAll(() => {
  // A failed run must not leave its sidecar behind.
  if (started && started.exitCode === null && started.signalCode === null) started.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function get(proxyPort: number, url: string, agent: Agent): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port: proxyPort, path: url, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(-1));
    });
    req.on('error', () => resolve(-1));
    req.end();
  });
}

describe('sidecar shutdown', () => {
  it('writes the audit line of every request, finished or in flight, before it exits on SIGTERM', async () => {
    const held: ServerResponse[] = [];
    let arrivedHeld = 0;
    const upstream = createServer((req, res) => {
      if (req.url?.startsWith('/slow')) {
        held.push(res); // answered never: the sidecar is stopped while these wait
        arrivedHeld++;
        return;
      }
      res.end('ok');
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const upstreamPort = (upstream.address() as AddressInfo).port;
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
            {
              policy: 'p',
              rule: 'r',
              mode: 'Enforce',
              cidrs: ['127.0.0.1/32'],
              ports: [{ port: upstreamPort, protocol: 'TCP' }],
            },
          ],
        },
      }),
    );
    const child = spawn(
      process.execPath,
      [
        join(root, 'bin/agentfence.mjs'),
        'sidecar',
        '--entitlements',
        file,
        '--listen',
        '127.0.0.1:0',
        '--admin-listen',
        '127.0.0.1:0',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    started = child;
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const proxyPort = await new Promise<number>((resolve, reject) => {
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /"msg":"sidecar listening"[^\n]*"proxy":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(stderr);
        if (m) resolve(Number(m[1]));
      });
      child.on('exit', () => reject(new Error(`the sidecar exited before listening: ${stderr}`)));
    });

    const agent = new Agent({ keepAlive: true, maxSockets: 50 });
    const DONE = 300;
    const IN_FLIGHT = 20;
    const denied = get(proxyPort, 'http://127.0.0.1:1/not-entitled', agent);
    const finished = await Promise.all(
      Array.from({ length: DONE }, (_, i) => get(proxyPort, `http://127.0.0.1:${upstreamPort}/ok/${i}`, agent)),
    );
    expect(finished.every((s) => s === 200)).toBe(true);
    expect(await denied).toBe(403);
    const slow = Array.from({ length: IN_FLIGHT }, (_, i) =>
      get(proxyPort, `http://127.0.0.1:${upstreamPort}/slow/${i}`, new Agent()),
    );
    while (arrivedHeld < IN_FLIGHT) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await Promise.all(slow);
    agent.destroy();
    for (const res of held) res.destroy();
    upstream.close();

    const lines = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { requestId: string; path: string; reason: string });
    expect(lines).toHaveLength(DONE + IN_FLIGHT + 1);
    expect(new Set(lines.map((l) => l.requestId)).size).toBe(lines.length);
    expect(lines.filter((l) => l.path.startsWith('/ok/'))).toHaveLength(DONE);
    expect(lines.filter((l) => l.path.startsWith('/slow/'))).toHaveLength(IN_FLIGHT);
    expect(lines.filter((l) => l.path === '/not-entitled')).toHaveLength(1);
  }, 60_000);
});
