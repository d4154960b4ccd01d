import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createAuditSink, type AuditRecord } from '../../sidecar/audit.ts';
import { cachingResolver } from '../../sidecar/addresses.ts';

const record = (path: string): AuditRecord => ({
  time: '2026-11-22T00:00:00.000Z',
  requestId: 'r',
  agent: 'a',
  pod: 'p',
  namespace: 'n',
  method: 'GET',
  host: 'h',
  port: 80,
  path,
  decision: 'allow',
  reason: 'allowed',
  policy: 'p',
  rule: 'r',
  revision: 'sha256:1',
  mode: 'Enforce',
  status: 200,
  bytesIn: 0,
  bytesOut: 0,
  durationMs: 1,
});

describe('audit sink', () => {
  it('batches one JSON line per record', async () => {
    let written = '';
    const sink = createAuditSink(
      new Writable({
        write: (chunk: Buffer, _e, cb) => {
          written += chunk.toString();
          cb();
        },
      }),
    );
    sink.write(record('/a'));
    sink.write(record('/b'));
    await new Promise((r) => setImmediate(r));
    expect(
      written
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as AuditRecord).path),
    ).toEqual(['/a', '/b']);
  });

  it('drops and counts lines instead of buffering without bound when stdout does not drain', async () => {
    const stuck = new Writable({ highWaterMark: 1, write: () => undefined }); // never calls back: never drains
    const sink = createAuditSink(stuck, 10);
    sink.write(record('/first'));
    await new Promise((r) => setImmediate(r)); // first batch written; the stream is now backed up
    for (let i = 0; i < 25; i++) sink.write(record(`/${i}`));
    expect(sink.dropped()).toBe(15);
  });
});

describe('caching resolver', () => {
  it('reuses a lookup within its TTL and looks up again after', async () => {
    const clock = { t: 0 };
    const resolve = cachingResolver(5_000, 16, () => clock.t);
    const first = resolve('localhost');
    expect(resolve('localhost')).toBe(first);
    expect((await first).some((a) => a === '127.0.0.1' || a === '::1')).toBe(true);
    clock.t = 6_000;
    expect(resolve('localhost')).not.toBe(first);
  });

  it('does not cache failures', async () => {
    const resolve = cachingResolver();
    const failed = resolve('does-not-exist.invalid');
    await expect(failed).rejects.toThrow();
    expect(resolve('does-not-exist.invalid')).not.toBe(failed);
  });
});
