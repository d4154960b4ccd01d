import * as prom from 'prom-client';
import { describe, expect, it } from 'vitest';
import { counter, createRegistry, gauge, histogram, Registry } from '../../lib/prom-text.ts';

/**
 * The same observations through prom-client and through lib/prom-text.ts: the sidecar's exposition must be what
 * prom-client would have written (names, types, labels, escaping, histogram buckets), byte for byte.
 */
describe('the sidecar metrics exposition', () => {
  it('writes what prom-client writes for the same counters, gauges and histograms', async () => {
    const theirs = new prom.Registry();
    const ours = new Registry();
    const odd = 'quote " backslash \\ newline \n end';

    const c1 = new prom.Counter({ name: 'a_total', help: `A ${odd}`, labelNames: ['d', 'e'], registers: [theirs] });
    const o1 = counter(ours, { name: 'a_total', help: `A ${odd}`, labelNames: ['d', 'e'] });
    c1.labels({ d: odd, e: 'z' }).inc();
    o1.labels({ d: odd, e: 'z' }).inc();
    c1.inc({ d: '1', e: '2' }, 2.5);
    o1.inc({ d: '1', e: '2' }, 2.5);
    c1.labels({ d: odd, e: 'z' }).inc(3);
    o1.labels({ d: odd, e: 'z' }).inc(3);

    new prom.Counter({ name: 'b_total', help: 'Never incremented.', registers: [theirs] });
    counter(ours, { name: 'b_total', help: 'Never incremented.', labelNames: [] });

    let calls = 0;
    new prom.Gauge({
      name: 'g_seconds',
      help: 'Collected.',
      registers: [theirs],
      collect() {
        this.set(1.25 + calls++);
      },
    });
    let ourCalls = 0;
    gauge(ours, {
      name: 'g_seconds',
      help: 'Collected.',
      labelNames: [],
      collect() {
        this.set(1.25 + ourCalls++);
      },
    });
    new prom.Gauge({
      name: 'info',
      help: 'Reset and set at scrape.',
      labelNames: ['revision'],
      registers: [theirs],
      collect() {
        this.reset();
        this.set({ revision: 'sha256:x' }, 1);
      },
    });
    gauge(ours, {
      name: 'info',
      help: 'Reset and set at scrape.',
      labelNames: ['revision'],
      collect() {
        this.reset();
        this.set({ revision: 'sha256:x' }, 1);
      },
    });
    const g1 = new prom.Gauge({ name: 'open', help: 'Up and down.', registers: [theirs] });
    const og1 = gauge(ours, { name: 'open', help: 'Up and down.', labelNames: [] });
    for (const g of [g1, og1]) {
      g.inc();
      g.inc();
      g.dec();
    }

    const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30];
    const h1 = new prom.Histogram({
      name: 'h_seconds',
      help: 'H.',
      labelNames: ['kind'],
      buckets,
      registers: [theirs],
    });
    const oh1 = histogram(ours, { name: 'h_seconds', help: 'H.', labelNames: ['kind'], buckets });
    const values = [0, 0.0005, 0.0007, 0.003, 0.2, 1, 29.9, 31, 1e-9, 0.1];
    for (const v of values) {
      h1.labels({ kind: 'http' }).observe(v);
      oh1.labels({ kind: 'http' }).observe(v);
    }
    h1.observe({ kind: 'connect' }, 12);
    oh1.observe({ kind: 'connect' }, 12);
    new prom.Histogram({
      name: 'empty',
      help: 'Nothing observed.',
      labelNames: ['kind'],
      buckets,
      registers: [theirs],
    });
    histogram(ours, { name: 'empty', help: 'Nothing observed.', labelNames: ['kind'], buckets });

    const expected = await theirs.metrics();
    expect(await ours.metrics()).toBe(expected);
    // A second scrape (collect hooks run again) still agrees.
    expect(await ours.metrics()).toBe(await theirs.metrics());
    expect(ours.contentType).toBe(theirs.contentType);
  });

  it('the get-or-create helpers return the registered family', () => {
    const r = new Registry();
    const a = counter(r, { name: 'x_total', help: 'X.', labelNames: ['k'] });
    expect(counter(r, { name: 'x_total', help: 'X.', labelNames: ['k'] })).toBe(a);
    expect(() => gauge(r, { name: 'x_total', help: 'X.', labelNames: [] })).toThrow(/already registered/);
  });

  it('refuses names and labels that would corrupt the exposition', () => {
    const r = new Registry();
    expect(() => counter(r, { name: 'bad-name', help: 'x', labelNames: [] })).toThrow(/invalid metric name/);
    expect(() => counter(r, { name: 'ok_total', help: 'x', labelNames: ['le'] })).toThrow(/invalid label name/);
    const c = counter(r, { name: 'ok2_total', help: 'x', labelNames: ['a'] });
    expect(() => c.inc({ b: 'x' } as unknown as { a: string })).toThrow(/not a label/);
    expect(() => c.inc({ a: 'x' }, -1)).toThrow(/only goes up/);
  });

  it('exports the process metrics a sidecar dashboard reads, under prom-client names and types', async () => {
    const text = await createRegistry().metrics();
    const theirs = new prom.Registry();
    prom.collectDefaultMetrics({ register: theirs });
    const types = (t: string): Map<string, string> =>
      new Map([...t.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1] ?? '', m[2] ?? '']));
    const ourTypes = types(text);
    const theirTypes = types(await theirs.metrics());
    expect(ourTypes.size).toBeGreaterThanOrEqual(8);
    for (const [name, type] of ourTypes) expect([name, theirTypes.get(name)]).toEqual([name, type]);
    expect(text).toMatch(/^process_resident_memory_bytes \d+$/m);
  });
});
