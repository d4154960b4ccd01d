/**
 * The sidecar proxy on loopback, with two recording upstreams of different parsing habits (Node's http and
 * Go's net/http), for the data-path tests: each upstream reports exactly what it received.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { AgentEntitlement, EntitlementEgressRule } from '../../lib/api/types.generated.ts';
import { silentLogger } from '../../lib/log.ts';
import { createRegistry } from '../../lib/prom-text.ts';
import type { AuditRecord, AuditSink } from '../../sidecar/audit.ts';
import { Matcher } from '../../sidecar/match.ts';
import { FenceProxy, type ProxyOptions } from '../../sidecar/proxy.ts';

const root = new URL('../..', import.meta.url).pathname;
export const GO = '/usr/local/go/bin/go';

/** Builds a Go program under test/support (standard library only) into a cache keyed by its source. */
export function buildGo(name: string): string {
  const source = join(root, 'test/support', name, 'main.go');
  const hash = createHash('sha256').update(readFileSync(source)).digest('hex').slice(0, 12);
  const dir = join(homedir(), '.cache/agentfence/go-test');
  const out = join(dir, `${name}-${hash}`);
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  const built = spawnSync(GO, ['build', '-o', out, source], {
    encoding: 'utf8',
    // eslint-disable-next-line no-restricted-properties -- go build inherits the test's environment
    env: { ...process.env, GOFLAGS: '-mod=mod', GO111MODULE: 'on', GOTOOLCHAIN: 'local', CGO_ENABLED: '0' },
  });
  if (built.status !== 0) throw new Error(`go build ${name} failed: ${built.stderr}`);
  return out;
}

export interface Received {
  method: string;
  uri: string;
  host: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export interface Upstream {
  name: 'node' | 'go';
  port: number;
  received: Received[];
  /** Resolves once every request the upstream had received before this call is recorded. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Node's http server, recording; `/stream` streams slowly, `/reset` resets the connection mid-response. */
export async function nodeUpstream(host = '127.0.0.1'): Promise<Upstream> {
  const received: Received[] = [];
  const upgraded = new Set<Socket>();
  const server: Server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url?.startsWith('/__sync')) return res.end('sync');
      received.push({
        method: req.method ?? '',
        uri: req.url ?? '',
        host: req.headers.host ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      if (req.url === '/stream') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        let i = 0;
        const timer = setInterval(() => {
          if (i++ >= 50 || res.destroyed) {
            clearInterval(timer);
            res.end();
          } else res.write(`chunk ${i}\n`);
        }, 100);
        res.on('close', () => clearInterval(timer));
        return;
      }
      if (req.url === '/reset') {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' });
        res.write('partial');
        setTimeout(() => req.socket.resetAndDestroy(), 20);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' }).end('node-ok');
    });
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    received.push({
      method: req.method ?? '',
      uri: req.url ?? '',
      host: req.headers.host ?? '',
      headers: req.headers,
      body: '',
    });
    socket.on('error', () => undefined);
    upgraded.add(socket);
    socket.on('close', () => upgraded.delete(socket));
    socket.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n');
    socket.on('data', (d: Buffer) => socket.write(`echo:${d.toString()}`));
    socket.on('end', () => socket.end());
  });
  server.listen(0, host);
  await once(server, 'listening');
  return {
    name: 'node',
    port: (server.address() as AddressInfo).port,
    received,
    sync: () => Promise.resolve(),
    close: async () => {
      for (const s of upgraded) s.destroy();
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
}

/** Go's net/http server (test/support/go-upstream), recording through its stdout. */
export async function goUpstream(binary: string): Promise<Upstream> {
  const child: ChildProcess = spawn(binary, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  if (!child.stdout) throw new Error('go upstream has no stdout');
  const lines = createInterface({ input: child.stdout });
  const received: Received[] = [];
  let port = 0;
  const waiters: { uri: string; resolve: () => void }[] = [];
  const ready = new Promise<void>((resolve) => {
    lines.on('line', (line) => {
      if (line.startsWith('PORT ')) {
        port = Number(line.slice(5));
        resolve();
        return;
      }
      const r = JSON.parse(line) as {
        method: string;
        uri: string;
        host: string;
        headers: Record<string, string[]> | null;
        body: string;
      };
      const w = waiters.findIndex((x) => x.uri === r.uri);
      if (w >= 0) {
        waiters[w]?.resolve();
        waiters.splice(w, 1);
        return;
      }
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(r.headers ?? {}))
        headers[k.toLowerCase()] = v.length === 1 ? (v[0] ?? '') : v;
      received.push({ method: r.method, uri: r.uri, host: r.host, headers, body: r.body });
    });
  });
  await ready;
  let n = 0;
  return {
    name: 'go',
    port,
    received,
    sync: async () => {
      const uri = `/__sync/${++n}`;
      const seen = new Promise<void>((resolve) => waiters.push({ uri, resolve }));
      await fetch(`http://127.0.0.1:${port}${uri}`).then((r) => r.text());
      await seen;
    },
    close: async () => {
      child.kill('SIGTERM');
      if (child.exitCode === null) await once(child, 'exit');
    },
  };
}

export const rule = (over: Partial<EntitlementEgressRule> & { rule: string }): EntitlementEgressRule => ({
  policy: 'p',
  mode: 'Enforce',
  ports: [],
  ...over,
});

export function entitlement(egress: EntitlementEgressRule[]): AgentEntitlement {
  return {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: 'agent-0', namespace: 'support' },
    spec: {
      podName: 'agent-0',
      podUID: 'u-1',
      agent: 'support-agent',
      spiffeID: 'spiffe://cluster.local/ns/support/agent/support-agent',
      revision: 'sha256:test',
      egress,
    },
  };
}

export interface RunningProxy {
  proxy: FenceProxy;
  port: number;
  audits: AuditRecord[];
  setMatcher(m: Matcher | undefined): void;
  close(): Promise<void>;
}

/** Names under `.test` resolve to loopback (the proxy's resolver; no DNS involved). */
export const testResolver = (host: string): Promise<string[]> =>
  host.endsWith('.test') ? Promise.resolve(['127.0.0.1']) : Promise.reject(new Error(`no such host ${host}`));

export async function startProxy(ent: AgentEntitlement, extra: Partial<ProxyOptions> = {}): Promise<RunningProxy> {
  const audits: AuditRecord[] = [];
  const audit: AuditSink = { write: (r) => audits.push(r), dropped: () => 0, flush: () => undefined };
  let matcher: Matcher | undefined = new Matcher(ent);
  const proxy = new FenceProxy({
    host: '127.0.0.1',
    port: 0,
    matcher: () => matcher,
    agent: () => ({ sub: ent.spec.spiffeID, pod: 'agent-0', namespace: 'support' }),
    audit,
    logger: silentLogger,
    registry: createRegistry(),
    resolver: testResolver,
    ...extra,
  });
  const { port } = await proxy.listen();
  return {
    proxy,
    port,
    audits,
    setMatcher: (m) => {
      matcher = m;
      proxy.revoke();
    },
    close: () => proxy.close(),
  };
}

/**
 * Sends exact bytes (one write per element) on a fresh connection and collects everything until the proxy
 * closes the connection, or until `quietMs` pass without data (connections kept alive).
 */
export function exchange(port: number, parts: (string | Buffer)[], quietMs = 3000): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let out = '';
    let timer: NodeJS.Timeout | undefined;
    const done = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(out);
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(done, quietMs);
    };
    s.on('connect', () => {
      void (async () => {
        for (const p of parts) {
          if (s.destroyed) break;
          s.write(p);
          await new Promise((r) => setTimeout(r, 15));
        }
        arm();
      })();
    });
    s.on('data', (c: Buffer) => {
      out += c.toString('latin1');
      arm();
    });
    s.on('close', done);
    s.on('error', done);
  });
}

/** Status codes of every response in a raw exchange, in order (100 Continue included). */
export const statuses = (raw: string): number[] => [...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
