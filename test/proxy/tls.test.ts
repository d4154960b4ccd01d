/**
 * HTTPS inspection end to end on loopback: the proxy with a real pod CA, local HTTPS upstreams with their own
 * test CA (the rules' caBundle), and real clients — curl, Python urllib and requests, Node fetch, Go net/http —
 * configured only through the environment the webhook renders (TRUST_ENV, with the bundle directory of this
 * test in place of the pod's mount path, plus the proxy variables).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { POD_CA_FILE, PodCA, TRUST_BUNDLE_FILE } from '../../sidecar/pod-ca.ts';
import { Matcher } from '../../sidecar/match.ts';
import { TRUST_DIR, TRUST_ENV } from '../../webhook/inject.ts';
import { buildGo, entitlement, rule, startProxy, type RunningProxy } from '../support/proxy-harness.ts';
import { httpsUpstream, testPki, type HttpsUpstream, type TestPki } from '../support/tls-upstreams.ts';

const run = promisify(execFile);
vi.setConfig({ testTimeout: 60_000 });

let pki: TestPki;
let ca: PodCA;
let bundleDir: string;
let proxy: RunningProxy;
let proxyUrl: string;
let good: HttpsUpstream;
let bad: { self: HttpsUpstream; expired: HttpsUpstream; wrong: HttpsUpstream };
let goClient: string;
let goStream: string;
let upstreamCaDir: string;

const api = () => `https://api.test:${good.port}`;
/** What the upstream answers: it echoes the method, path and the Host it received (the checked authority). */
const echo = (path: string, method = 'GET') => JSON.stringify({ method, path, host: `api.test:${good.port}` });

function rules(apiPaths = ['/v1/']) {
  const http = [
    {
      methods: ['GET' as const, 'POST' as const],
      paths: apiPaths.map((value) => ({ type: 'PathPrefix' as const, value })),
    },
  ];
  return entitlement([
    rule({
      rule: 'api',
      hosts: ['api.test'],
      cidrs: ['127.0.0.1/32'],
      ports: [{ port: good.port, protocol: 'TCP' }],
      http,
      caBundle: pki.ca.certPem,
      audience: 'api.test',
    }),
    // The same upstream under a name whose rule trusts only the public roots: the test CA is not among them.
    rule({
      rule: 'public',
      hosts: ['public.test'],
      cidrs: ['127.0.0.1/32'],
      ports: [{ port: good.port, protocol: 'TCP' }],
      http,
    }),
    ...(['self', 'expired', 'wrong'] as const).map((name) =>
      rule({
        rule: name,
        hosts: [`${name}.test`],
        cidrs: ['127.0.0.1/32'],
        ports: [{ port: bad[name].port, protocol: 'TCP' }],
        http,
        caBundle: pki.ca.certPem,
      }),
    ),
    // A pinned client: blind tunnel to the same upstream (the client verifies the upstream itself).
    rule({
      rule: 'pinned',
      hosts: ['pinned.test'],
      cidrs: ['127.0.0.1/32'],
      ports: [{ port: good.port, protocol: 'TCP' }],
      tls: 'Passthrough',
    }),
  ]);
}

beforeAll(async () => {
  goClient = buildGo('go-client');
  goStream = buildGo('go-stream');
  pki = await testPki(['api.test', 'public.test', 'pinned.test', 'self.test', 'expired.test', 'wrong.test']);
  good = await httpsUpstream(pki.good);
  bad = {
    self: await httpsUpstream(pki.selfSigned),
    expired: await httpsUpstream(pki.expired),
    wrong: await httpsUpstream(pki.wrongName),
  };
  bundleDir = mkdtempSync(join(tmpdir(), 'agentfence-trust-'));
  upstreamCaDir = mkdtempSync(join(tmpdir(), 'agentfence-upstream-ca-'));
  writeFileSync(join(upstreamCaDir, 'upstream-ca.pem'), pki.ca.certPem);
  ca = await PodCA.create({ bundleDir });
  proxy = await startProxy(rules(), {
    interception: ca,
    tlsHandshakeTimeoutMs: 1500,
    tokenFor: (aud) => Promise.resolve(`token-for-${aud}`),
  });
  proxyUrl = `http://127.0.0.1:${proxy.port}`;
}, 300_000);

afterAll(async () => {
  await proxy.close();
  for (const u of [good, bad.self, bad.expired, bad.wrong]) await u.close();
  rmSync(bundleDir, { recursive: true, force: true });
  rmSync(upstreamCaDir, { recursive: true, force: true });
});

/** The app container's environment as the webhook renders it, with this test's bundle directory. */
function appEnv(): NodeJS.ProcessEnv {
  const trust = Object.fromEntries(TRUST_ENV.map((e) => [e.name, (e.value ?? '').replace(TRUST_DIR, bundleDir)]));
  return {
    PATH: process.env.PATH ?? '', // eslint-disable-line no-restricted-properties -- to find the clients
    HOME: process.env.HOME ?? '', // eslint-disable-line no-restricted-properties -- pyenv needs it
    HTTP_PROXY: proxyUrl,
    HTTPS_PROXY: proxyUrl,
    http_proxy: proxyUrl,
    https_proxy: proxyUrl,
    NO_PROXY: 'localhost,127.0.0.1,::1',
    no_proxy: 'localhost,127.0.0.1,::1',
    ...trust,
  };
}

async function attempt(cmd: string, args: string[], extra: NodeJS.ProcessEnv = {}) {
  try {
    const { stdout, stderr } = await run(cmd, args, { env: { ...appEnv(), ...extra }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/**
 * A streaming client: resolves once its output shows the first event while the upstream still holds the
 * second (nothing is released until then), then releases it and returns the whole output. A proxy that
 * buffered the response would never show the first event, and the wait fails.
 */
async function streamsIncrementally(id: string, cmd: string, args: string[], extra: NodeJS.ProcessEnv = {}) {
  const child = spawn(cmd, args, { env: { ...appEnv(), ...extra }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = once(child, 'exit');
  await vi.waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`client exited early: ${out} ${err}`);
      expect(out).toContain('one');
    },
    { timeout: 30_000, interval: 50 },
  );
  const beforeRelease = out;
  good.release(id);
  await exited;
  return { beforeRelease, out, err };
}

const lastAudit = (pred: (a: RunningProxy['audits'][number]) => boolean) =>
  vi.waitFor(
    () => {
      const hit = [...proxy.audits].reverse().find(pred);
      if (!hit) throw new Error('no such audit line yet');
      return hit;
    },
    { timeout: 10_000, interval: 50 },
  );

describe('the trust bundle', () => {
  it('holds the public roots and the pod CA, and no private key', () => {
    const files = readdirSync(bundleDir).sort();
    expect(files).toEqual([TRUST_BUNDLE_FILE, POD_CA_FILE].sort());
    const bundle = readFileSync(join(bundleDir, TRUST_BUNDLE_FILE), 'utf8');
    expect(bundle).toContain(ca.caCertificates()[0]);
    expect(bundle.match(/BEGIN CERTIFICATE/g)?.length).toBeGreaterThan(50);
    for (const f of files) expect(readFileSync(join(bundleDir, f), 'utf8')).not.toMatch(/PRIVATE KEY/);
    expect(readFileSync(join(bundleDir, POD_CA_FILE), 'utf8')).toBe(ca.caCertificates().join(''));
  });
});

describe('real clients through inspection, configured only by the rendered environment', () => {
  it('curl: allowed call unchanged, denied path gets the 403 JSON, SSE streams', async () => {
    const ok = await attempt('curl', ['-sS', '-i', `${api()}/v1/orders/1?q=x`]);
    expect(ok.stderr).toBe('');
    expect(ok.stdout).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
    expect(ok.stdout).toMatch(/x-upstream: verified/i);
    expect(ok.stdout).toContain(echo('/v1/orders/1?q=x'));
    // Identity on the wire, inside TLS, exactly as for plain HTTP.
    expect(good.received.at(-1)?.headers.authorization).toBe('Bearer token-for-api.test');
    const denied = await attempt('curl', ['-sS', '-w', '\n%{http_code}', `${api()}/admin/users`]);
    expect(denied.stdout).toMatch(/"reason":"path_not_allowed".*\n403$/s);
    const s = await streamsIncrementally('curl', 'curl', ['-sS', '-N', `${api()}/v1/sse?id=curl`]);
    expect(s.beforeRelease).not.toContain('two');
    expect(s.out).toBe('data: one\n\ndata: two\n\n');
  });

  it('Python urllib: allowed, denied, streamed', async () => {
    const script = (path: string) =>
      [
        'import sys, urllib.request, urllib.error',
        'try:',
        `    r = urllib.request.urlopen("${api()}${path}")`,
        '    print(r.status, r.headers["x-upstream"], flush=True)',
        '    for line in r:',
        '        print(line.decode().strip(), flush=True)',
        'except urllib.error.HTTPError as e:',
        '    print(e.code, e.read().decode())',
      ].join('\n');
    const ok = await attempt('python3', ['-c', script('/v1/orders/2')]);
    expect(ok.stdout.split('\n').slice(0, 2)).toEqual(['200 verified', echo('/v1/orders/2')]);
    expect((await attempt('python3', ['-c', script('/admin')])).stdout).toMatch(/^403 .*"reason":"path_not_allowed"/);
    const s = await streamsIncrementally('urllib', 'python3', ['-c', script('/v1/sse?id=urllib')]);
    expect(s.beforeRelease).not.toContain('two');
    expect(s.out).toContain('data: two');
  });

  it('Python requests: allowed, denied, streamed', async () => {
    const script = (path: string) =>
      [
        'import requests',
        `r = requests.get("${api()}${path}", stream=True)`,
        'print(r.status_code, r.headers.get("x-upstream"), flush=True)',
        'for line in r.iter_lines(chunk_size=1):',
        '    print(line.decode(), flush=True)',
      ].join('\n');
    const ok = await attempt('python3', ['-c', script('/v1/orders/3')]);
    expect(ok.stdout.split('\n').slice(0, 2)).toEqual(['200 verified', echo('/v1/orders/3')]);
    expect((await attempt('python3', ['-c', script('/admin')])).stdout).toMatch(
      /^403 None\n.*"reason":"path_not_allowed"/,
    );
    const s = await streamsIncrementally('requests', 'python3', ['-c', script('/v1/sse?id=requests')]);
    expect(s.beforeRelease).not.toContain('two');
    expect(s.out).toContain('data: two');
  });

  it('Node fetch (NODE_USE_ENV_PROXY=1): allowed, denied, streamed', async () => {
    const script = (path: string) =>
      `const r = await fetch(${JSON.stringify(`${api()}${path}`)}); console.log(r.status, r.headers.get('x-upstream')); const d = new TextDecoder(); for await (const c of r.body) process.stdout.write(d.decode(c));`;
    const env = { NODE_USE_ENV_PROXY: '1' };
    const ok = await attempt(process.execPath, ['--input-type=module', '-e', script('/v1/orders/4')], env);
    expect(ok.stdout).toBe(`200 verified\n${echo('/v1/orders/4')}`);
    const denied = await attempt(process.execPath, ['--input-type=module', '-e', script('/admin')], env);
    expect(denied.stdout).toMatch(/^403 null\n.*"reason":"path_not_allowed"/);
    const s = await streamsIncrementally(
      'node',
      process.execPath,
      ['--input-type=module', '-e', script('/v1/sse?id=node')],
      env,
    );
    expect(s.beforeRelease).not.toContain('two');
    expect(s.out).toContain('data: two');
  });

  it('Go net/http: allowed, denied, streamed', async () => {
    const ok = await attempt(goClient, ['GET', `${api()}/v1/orders/5`]);
    expect(ok.stdout).toBe(`200 OK\n${echo('/v1/orders/5')}`);
    expect((await attempt(goClient, ['GET', `${api()}/admin`])).stdout).toMatch(/^403 path_not_allowed\n.*"reason"/);
    const s = await streamsIncrementally('go', goStream, [`${api()}/v1/sse?id=go`]);
    expect(s.beforeRelease).not.toContain('two');
    expect(s.out).toContain('data: two');
  });

  // The JVM reads none of the variables: the setup docs/sidecar.md describes (a PKCS12 truststore built with
  // keytool from the bundle, proxy and trust flags in JAVA_TOOL_OPTIONS), checked with the JDK's HttpClient.
  it.skipIf(spawnSync('sh', ['-c', 'command -v java && command -v keytool']).status !== 0)(
    'the JVM (java.net.http) with the documented truststore and proxy flags',
    async () => {
      const store = join(upstreamCaDir, 'pod-trust.p12');
      rmSync(store, { force: true });
      const imported = await attempt('keytool', [
        '-importcert',
        '-noprompt',
        '-alias',
        'agentfence-pod-ca',
        '-file',
        join(bundleDir, POD_CA_FILE),
        '-keystore',
        store,
        '-storetype',
        'PKCS12',
        '-storepass',
        'changeit',
      ]);
      expect(imported.code, imported.stderr).toBe(0);
      const javaEnv = {
        JAVA_TOOL_OPTIONS: `-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=${proxy.port} -Djavax.net.ssl.trustStore=${store} -Djavax.net.ssl.trustStorePassword=changeit`,
      };
      const getJava = new URL('../support/java-client/Get.java', import.meta.url).pathname;
      const ok = await attempt('java', [getJava, `${api()}/v1/orders/jvm`], javaEnv);
      expect(ok.stdout).toBe(`200\n${echo('/v1/orders/jvm')}`);
      const denied = await attempt('java', [getJava, `${api()}/admin`], javaEnv);
      expect(denied.stdout).toMatch(/^403\n.*"reason":"path_not_allowed"/);
    },
  );

  it('pools upstream TLS: many client tunnels, one upstream connection', async () => {
    await attempt('curl', ['-sS', `${api()}/v1/orders/warm`]);
    const before = good.connections();
    for (let i = 0; i < 5; i++) {
      const out = await attempt('curl', ['-sS', `${api()}/v1/orders/pooled-${i}`]);
      expect(out.stdout).toBe(echo(`/v1/orders/pooled-${i}`));
    }
    expect(good.connections()).toBe(before);
  });

  it('audits inspected requests with method, path, status and tls: inspected (no query, no headers)', async () => {
    await attempt('curl', ['-sS', `${api()}/v1/orders/77?secret=s3cr3t`]);
    const line = await lastAudit((a) => a.path === '/v1/orders/77');
    expect(line).toMatchObject({ method: 'GET', host: 'api.test', status: 200, decision: 'allow', tls: 'inspected' });
    expect(line.bytesOut).toBeGreaterThan(0);
    expect(JSON.stringify(proxy.audits)).not.toContain('s3cr3t');
    expect(JSON.stringify(proxy.audits)).not.toContain('token-for-');
  });
});

/** A CONNECT on a raw socket; resolves with the socket once the proxy answered 200. */
async function connectTunnel(authority: string): Promise<Socket> {
  const s = netConnect(proxy.port, '127.0.0.1');
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  const [head] = (await once(s, 'data')) as [Buffer];
  expect(head.toString()).toMatch(/^HTTP\/1\.1 200/);
  return s;
}

/** A TLS handshake over a tunnel; resolves with the socket or the error. */
function handshake(s: Socket, options: ConnectionOptions): Promise<TLSSocket | Error> {
  return new Promise((resolve) => {
    const t = tlsConnect({ socket: s, ca: ca.caCertificates(), ...options });
    t.once('secureConnect', () => resolve(t));
    t.once('error', (e: Error) => resolve(e));
  });
}

async function stillServing(): Promise<void> {
  const ok = await attempt('curl', ['-sS', `${api()}/v1/orders/ok`]);
  expect(ok.stdout).toContain('"path":"/v1/orders/ok"');
}

describe('bad input: a clear refusal, nothing forwarded, the proxy still serving', () => {
  it('a client that does not trust the pod CA: handshake fails, audit tls_client_rejected', async () => {
    const before = good.received.length;
    // curl and Go, each trusting only the upstream's CA (not the pod CA): both abort the handshake.
    const pinned = join(upstreamCaDir, 'upstream-ca.pem');
    const rejected = () =>
      proxy.audits.filter((a) => a.reason === 'tls_client_rejected' && a.tls === 'inspected').length;
    const out = await attempt('curl', ['-sS', `${api()}/v1/orders/1`], { CURL_CA_BUNDLE: pinned });
    expect(out.code).not.toBe(0);
    expect(out.stderr).toMatch(/certificate/i);
    await vi.waitFor(() => expect(rejected()).toBe(1));
    const go = await attempt(goClient, ['GET', `${api()}/v1/orders/1`], { SSL_CERT_FILE: pinned });
    expect(go.stdout).toMatch(/ERROR .*certificate/);
    await vi.waitFor(() => expect(rejected()).toBe(2));
    expect(good.received.length).toBe(before);
    await stillServing();
  });

  it.each([
    ['self', 'self-signed'],
    ['expired', 'expired'],
    ['wrong', 'wrong-name'],
  ] as const)(
    'an upstream with a %s certificate (%s): 502 upstream_certificate_invalid, nothing sent',
    async (name, _kind) => {
      const out = await attempt('curl', ['-sS', '-i', `https://${name}.test:${bad[name].port}/v1/x`]);
      expect(out.stdout).toMatch(/HTTP\/1\.1 502 upstream_certificate_invalid/);
      expect(out.stdout).toContain('"reason":"upstream_certificate_invalid"');
      expect(bad[name].received).toEqual([]);
      await lastAudit((a) => a.host === `${name}.test` && a.reason === 'upstream_certificate_invalid');
    },
  );

  it('a rule without caBundle trusts only the public roots: the test CA does not verify', async () => {
    const before = good.received.length;
    const out = await attempt('curl', ['-sS', '-i', `https://public.test:${good.port}/v1/x`]);
    expect(out.stdout).toMatch(/HTTP\/1\.1 502 upstream_certificate_invalid/);
    expect(good.received.length).toBe(before);
  });

  it('SNI that is not the CONNECT authority is refused', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    const r = await handshake(s, { servername: 'public.test' });
    expect(r).toBeInstanceOf(Error);
    await lastAudit((a) => a.reason === 'tls_sni_mismatch');
    await stillServing();
  });

  it('an IP-literal authority gets an IP SAN', async () => {
    // Alone: the other rules' cidrs (127.0.0.1/32) would match an IP-literal CONNECT too, and the
    // Passthrough one would make it blind.
    const ipRules = entitlement([
      rule({
        rule: 'ip',
        cidrs: ['127.0.0.1/32'],
        ports: [{ port: good.port, protocol: 'TCP' }],
        http: [{ paths: [{ type: 'PathPrefix', value: '/v1/' }] }],
        caBundle: pki.ca.certPem,
      }),
    ]);
    proxy.setMatcher(new Matcher(ipRules));
    try {
      const s = await connectTunnel(`127.0.0.1:${good.port}`);
      const r = await handshake(s, { host: '127.0.0.1' });
      expect(r).not.toBeInstanceOf(Error);
      const t = r as TLSSocket;
      expect(t.getPeerCertificate().subjectaltname).toBe('IP Address:127.0.0.1');
      t.destroy();
    } finally {
      proxy.setMatcher(new Matcher(rules()));
    }
  });

  it('a non-TLS, non-HTTP byte stream inside an intercepted CONNECT is refused', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    s.write(Buffer.from([0x00, 0x01, 0x02, 0xff, 0x10]));
    await once(s, 'close');
    await lastAudit((a) => a.reason === 'l7_rule_needs_plain_http');
    await stillServing();
  });

  it('a TLS ClientHello sent to the plain proxy port gets a TLS alert', async () => {
    const r = await new Promise<Error | TLSSocket>((resolve) => {
      const t = tlsConnect({ host: '127.0.0.1', port: proxy.port, servername: 'api.test', ca: ca.caCertificates() });
      t.once('secureConnect', () => resolve(t));
      t.once('error', resolve);
    });
    expect(r).toBeInstanceOf(Error);
    expect((r as Error).message).toMatch(/handshake failure|alert/i);
    await stillServing();
  });

  it('a pinned client keeps working through a Passthrough rule (audit tls: passthrough)', async () => {
    // The client trusts only the upstream's own CA: through a blind tunnel it sees the real certificate.
    const pinned = join(upstreamCaDir, 'upstream-ca.pem');
    const out = await attempt('curl', ['-sS', '--cacert', pinned, `https://pinned.test:${good.port}/anything`], {
      CURL_CA_BUNDLE: '',
    });
    expect(out.stdout).toContain('"path":"/anything"');
    const s = await connectTunnel(`pinned.test:${good.port}`);
    const r = await handshake(s, { servername: 'pinned.test', ca: pki.ca.certPem });
    expect(r).not.toBeInstanceOf(Error);
    (r as TLSSocket).destroy();
    await lastAudit((a) => a.host === 'pinned.test' && a.tls === 'passthrough');
  });

  it('h2-only clients are refused; clients offering h2 and http/1.1 fall back', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    const r = await handshake(s, { servername: 'api.test', ALPNProtocols: ['h2'] });
    expect(r).toBeInstanceOf(Error);
    await lastAudit((a) => a.reason === 'tls_alpn_unsupported');
    const both = await attempt('curl', ['-sS', '--http2', `${api()}/v1/orders/h2`]);
    expect(both.stdout).toContain('"path":"/v1/orders/h2"');
  });

  it('a client that stalls mid-handshake is dropped; the proxy keeps serving meanwhile', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    // The first bytes of a ClientHello record, then nothing.
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    await stillServing();
    await once(s, 'close');
    await lastAudit((a) => a.reason === 'tls_handshake_timeout');
  });

  it('1,000 concurrent intercepted handshakes all complete, one leaf minted for the name', async () => {
    const minted = ca.minted();
    const n = 1000;
    const results = await Promise.all(
      Array.from({ length: n }, async () => {
        const s = await connectTunnel(`api.test:${good.port}`);
        const t = await handshake(s, { servername: 'api.test' });
        if (t instanceof Error) return t.message;
        t.write('GET /v1/orders/c HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n');
        let body = '';
        t.on('data', (c: Buffer) => (body += c.toString()));
        await once(t, 'close');
        return body.split('\r\n')[0];
      }),
    );
    expect(results.filter((r) => r === 'HTTP/1.1 200 OK').length).toBe(n);
    expect(ca.minted()).toBe(minted);
    await stillServing();
  }, 180_000);
});

describe('keep-alive, pipelining and revocation on one intercepted connection', () => {
  it('judges every request on the tunnel, and the next one after a narrowing by the new snapshot', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    const t = (await handshake(s, { servername: 'api.test' })) as TLSSocket;
    let raw = '';
    t.on('data', (c: Buffer) => (raw += c.toString('latin1')));
    // Pipelined: allowed, denied, allowed — each judged on its own.
    t.write(
      'GET /v1/a HTTP/1.1\r\nHost: api.test\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.test\r\n\r\nGET /v1/b HTTP/1.1\r\nHost: api.test\r\n\r\n',
    );
    await vi.waitFor(() =>
      expect([...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1])).toEqual(['200', '403', '200']),
    );
    // Narrowed: only /v1/a remains. The held connection is idle: it is closed, or its next request is judged anew.
    proxy.setMatcher(new Matcher(rules(['/v1/a'])));
    try {
      raw = '';
      if (!t.destroyed) {
        t.write('GET /v1/b HTTP/1.1\r\nHost: api.test\r\n\r\n');
        await Promise.race([
          once(t, 'close'),
          vi.waitFor(() => expect(raw).toMatch(/HTTP\/1\.1 403 path_not_allowed/)),
        ]);
      }
      expect(raw).not.toMatch(/HTTP\/1\.1 200/);
      const fresh = await attempt('curl', ['-sS', '-w', '\n%{http_code}', `${api()}/v1/b`]);
      expect(fresh.stdout).toMatch(/path_not_allowed.*\n403$/s);
    } finally {
      t.destroy();
      proxy.setMatcher(new Matcher(rules()));
    }
  });

  it('closes intercepted tunnels a new snapshot no longer entitles', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    const t = (await handshake(s, { servername: 'api.test' })) as TLSSocket;
    const closed = once(t, 'close');
    proxy.setMatcher(new Matcher(entitlement([])));
    try {
      await closed;
      await lastAudit((a) => a.reason === 'revoked' && a.tls === 'inspected');
    } finally {
      proxy.setMatcher(new Matcher(rules()));
    }
  });
});

describe('the pod CA', () => {
  it('rotation publishes the next CA first, then signs with it, and keeps open connections', async () => {
    const s = await connectTunnel(`api.test:${good.port}`);
    const t = (await handshake(s, { servername: 'api.test' })) as TLSSocket;
    const first = ca.fingerprint();
    await ca.rotate(); // publishes the next CA beside the current one
    expect(ca.caCertificates()).toHaveLength(2);
    expect(readFileSync(join(bundleDir, POD_CA_FILE), 'utf8')).toBe(ca.caCertificates().join(''));
    expect(ca.fingerprint()).toBe(first);
    await ca.rotate(); // signs with the next one from now on
    expect(ca.fingerprint()).not.toBe(first);
    expect(ca.caCertificates()).toHaveLength(1);
    // The connection opened before both steps still works.
    let raw = '';
    t.on('data', (c: Buffer) => (raw += c.toString('latin1')));
    t.write('GET /v1/after-rotation HTTP/1.1\r\nHost: api.test\r\n\r\n');
    await vi.waitFor(() => expect(raw).toMatch(/^HTTP\/1\.1 200 OK/));
    t.destroy();
    // New connections verify against the new CA only.
    const fresh = await attempt('curl', ['-sS', `${api()}/v1/orders/new-ca`]);
    expect(fresh.stdout).toContain('"path":"/v1/orders/new-ca"');
  });
});
