/**
 * The probe and scrape endpoint every component serves: /healthz (the process answers), /readyz (every readiness
 * check passes, e.g. informer caches synced), /metrics (the component's private registry). Plain node:http: three
 * GET routes do not need a framework, and close() must be prompt and complete for tests and graceful shutdown.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Exposition } from './prom-text.ts';
import { silentLogger, type Logger } from './log.ts';

// node:http without its ESM facade, which loads undici (~13 MB resident) for WebSocket exports nobody here uses;
// the sidecar serves this endpoint too.
const { createServer } = process.getBuiltinModule('node:http');

export type Check = () => boolean | Promise<boolean>;

export interface HealthServerOptions {
  /** '0.0.0.0' in a pod (the kubelet probes the pod IP); '127.0.0.1' in tests. */
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** The component's metrics: a prom-client Registry (controller) or lib/prom-text.ts's (sidecar). */
  registry: Exposition;
  /** Named readiness checks; /readyz is 200 only when all pass. */
  readiness?: Record<string, Check>;
  /** A JSON document served at /status (e.g. the sidecar's identity and enforced revision). */
  status?: () => Record<string, unknown>;
  /** Named liveness checks; keep these to "the process is not wedged", never dependencies. */
  liveness?: Record<string, Check>;
  logger?: Logger;
}

export interface HealthServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const logger = options.logger ?? silentLogger;
  const server = createServer((req, res) => {
    handle(req, res, options).catch((err: unknown) => {
      logger.error('health endpoint failed', { err, path: req.url });
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  logger.info('health server listening', { host: options.host, port });
  return {
    url: `http://${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        // Scrapers keep connections alive; without this close() would wait for them to time out.
        server.closeAllConnections();
      }),
  };
}

async function handle(req: IncomingMessage, res: ServerResponse, options: HealthServerOptions): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://localhost').pathname;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
    return;
  }
  switch (path) {
    case '/healthz':
    case '/livez':
      await respondChecks(res, options.liveness ?? {});
      return;
    case '/readyz':
      await respondChecks(res, options.readiness ?? {});
      return;
    case '/status':
      if (options.status) {
        res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(options.status())}\n`);
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    case '/metrics': {
      const body = await options.registry.metrics();
      res.writeHead(200, { 'content-type': options.registry.contentType }).end(body);
      return;
    }
    default:
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  }
}

/** Kubernetes-style check output: one `[+]name ok` / `[-]name failed` line per check. */
async function respondChecks(res: ServerResponse, checks: Record<string, Check>): Promise<void> {
  const lines: string[] = [];
  let ok = true;
  for (const [name, check] of Object.entries(checks)) {
    let passed: boolean;
    try {
      passed = await check();
    } catch {
      passed = false;
    }
    ok &&= passed;
    lines.push(`[${passed ? '+' : '-'}]${name} ${passed ? 'ok' : 'failed'}`);
  }
  lines.push(ok ? 'ok' : 'failed');
  res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain; charset=utf-8' }).end(`${lines.join('\n')}\n`);
}
