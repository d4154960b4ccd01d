import { afterEach, describe, expect, it } from 'vitest';
import { startHealthServer, type HealthServer } from '../../lib/health.ts';
import { counter, createRegistry } from '../../lib/metrics.ts';

let server: HealthServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

describe('health server', () => {
  it('serves /healthz, gates /readyz on its checks, and exposes the private registry on /metrics', async () => {
    const registry = createRegistry({ defaultMetrics: false });
    counter(registry, { name: 'things_total', help: 'Things.', labelNames: [] }).inc(3);
    let synced = false;
    server = await startHealthServer({
      host: '127.0.0.1',
      port: 0,
      registry,
      readiness: { 'informers-synced': () => synced, 'async-check': () => Promise.resolve(true) },
    });
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);

    const notReady = await fetch(`${server.url}/readyz`);
    expect(notReady.status).toBe(503);
    expect(await notReady.text()).toContain('[-]informers-synced failed');
    synced = true;
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.text()).toContain('[+]informers-synced ok');

    const metrics = await fetch(`${server.url}/metrics`);
    expect(metrics.headers.get('content-type')).toContain('text/plain');
    expect(await metrics.text()).toContain('things_total 3');
    expect((await fetch(`${server.url}/nope`)).status).toBe(404);
  });

  it('treats a throwing check as failing', async () => {
    server = await startHealthServer({
      host: '127.0.0.1',
      port: 0,
      registry: createRegistry({ defaultMetrics: false }),
      readiness: {
        broken: () => {
          throw new Error('x');
        },
      },
    });
    expect((await fetch(`${server.url}/readyz`)).status).toBe(503);
  });

  it('closes promptly even with a keep-alive connection open, and frees the port', async () => {
    const s = await startHealthServer({ host: '127.0.0.1', port: 0, registry: createRegistry() });
    await (await fetch(`${s.url}/metrics`)).text(); // leaves a pooled keep-alive connection
    const started = Date.now();
    await s.close();
    expect(Date.now() - started).toBeLessThan(1000);
    await expect(fetch(`${s.url}/healthz`)).rejects.toThrow();
  });
});
