/**
 * The pod CA's private key stays in the sidecar's memory: the real sidecar process (the CLI, static mode, with
 * a trust-bundle directory as the webhook injects it) intercepts HTTPS, and then nothing it wrote — stdout
 * (audit), stderr (logs, at debug level), /status, /metrics, /readyz, the bundle directory and its own temporary
 * directory — holds a private key or any PEM block but certificates.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BENCH_POD, freePort } from '../../bench/support/sidecar.ts';
import { httpsUpstream, testPki, type HttpsUpstream } from '../support/tls-upstreams.ts';

const run = promisify(execFile);
const cli = new URL('../../bin/agentfence.mjs', import.meta.url).pathname;
vi.setConfig({ testTimeout: 60_000 });

let work: string;
let bundleDir: string;
let sidecarTmp: string;
let upstream: HttpsUpstream;
let child: ChildProcess;
let stdout = '';
let stderr = '';
let proxyPort: number;
let adminPort: number;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'agentfence-secrecy-'));
  bundleDir = join(work, 'trust');
  sidecarTmp = mkdtempSync(join(work, 'tmp-'));
  const pki = await testPki(['upstream.test']);
  upstream = await httpsUpstream(pki.good);
  const entitlement = {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: 'secrecy', namespace: 'bench' },
    spec: {
      ...BENCH_POD,
      egress: [
        {
          policy: 'p',
          rule: 'api',
          mode: 'Enforce',
          cidrs: ['127.0.0.1/32'],
          ports: [{ port: upstream.port, protocol: 'TCP' }],
          http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/' }] }],
          caBundle: pki.ca.certPem,
        },
      ],
    },
  };
  writeFileSync(join(work, 'entitlement.json'), JSON.stringify(entitlement));
  proxyPort = await freePort();
  adminPort = await freePort();
  child = spawn(
    process.execPath,
    [
      cli,
      'sidecar',
      '--entitlements',
      join(work, 'entitlement.json'),
      '--listen',
      `127.0.0.1:${proxyPort}`,
      '--admin-listen',
      `127.0.0.1:${adminPort}`,
      '--trust-bundle-dir',
      bundleDir,
      '--log-level',
      'debug',
    ],
    // eslint-disable-next-line no-restricted-properties -- the sidecar inherits the test's environment
    { env: { ...process.env, TMPDIR: sidecarTmp }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  await vi.waitFor(
    async () => {
      const res = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      expect(res.status).toBe(200);
    },
    { timeout: 90_000, interval: 200 },
  );
}, 120_000);

afterAll(async () => {
  if (child.exitCode === null) {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
  await upstream.close();
  rmSync(work, { recursive: true, force: true });
});

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => join(dir, f))
    .filter((f) => statSync(f).isFile());
}

/** PEM block labels in a text; a private key in any encoding would show as one of these. */
const pemLabels = (text: string): string[] =>
  [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----/g)].map((m) => m[1] ?? '');

describe('the pod CA private key', () => {
  it('is in no output of the sidecar and on no file system it writes, after real interception', async () => {
    const env = {
      // eslint-disable-next-line no-restricted-properties -- to find curl
      PATH: process.env.PATH ?? '',
      HTTPS_PROXY: `http://127.0.0.1:${proxyPort}`,
      https_proxy: `http://127.0.0.1:${proxyPort}`,
      CURL_CA_BUNDLE: join(bundleDir, 'ca-bundle.pem'),
    };
    const ok = await run('curl', ['-sS', `https://127.0.0.1:${upstream.port}/v1/orders/1`], { env });
    expect(ok.stdout).toContain('"path":"/v1/orders/1"');
    const denied = await run('curl', ['-sS', `https://127.0.0.1:${upstream.port}/admin`], { env });
    expect(denied.stdout).toContain('"reason":"path_not_allowed"');

    const readyz = await (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).text();
    expect(readyz).toContain('trustBundle');
    const status = await (await fetch(`http://127.0.0.1:${adminPort}/status`)).text();
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    child.kill('SIGTERM');
    await once(child, 'exit');

    const outputs: Record<string, string> = { stdout, stderr, status, metrics, readyz };
    for (const f of [...filesUnder(bundleDir), ...filesUnder(sidecarTmp)]) outputs[f] = readFileSync(f, 'utf8');
    for (const [where, text] of Object.entries(outputs)) {
      expect(text, where).not.toMatch(/PRIVATE KEY/);
      expect(new Set(pemLabels(text)), where).toSatisfy((labels: Set<string>) =>
        [...labels].every((l) => l === 'CERTIFICATE'),
      );
    }
    // The sidecar's own temporary directory stays empty; the bundle directory holds the two bundle files,
    // world-readable (any app UID) and holding certificates only.
    expect(filesUnder(sidecarTmp)).toEqual([]);
    expect(readdirSync(bundleDir).sort()).toEqual(['ca-bundle.pem', 'pod-ca.pem']);
    for (const f of filesUnder(bundleDir)) expect(statSync(f).mode & 0o777).toBe(0o644);
    // What /status shows is the fingerprint of the CA certificate in the bundle (nothing else of the CA).
    const podCa = new X509Certificate(readFileSync(join(bundleDir, 'pod-ca.pem')));
    const fingerprint = createHash('sha256').update(podCa.raw).digest('hex');
    expect(JSON.parse(status)).toMatchObject({ interceptionCA: { fingerprint } });
    expect(podCa.ca).toBe(true);
    expect(Date.parse(podCa.validTo) - Date.now()).toBeLessThanOrEqual(24 * 3600_000);
    // Audit lines for the inspected requests, without the query or headers.
    expect(stdout).toMatch(/"path":"\/v1\/orders\/1".*"tls":"inspected"/);
  });
});
