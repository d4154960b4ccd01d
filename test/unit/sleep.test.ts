import { getEventListeners } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../lib/log.ts';
import { sleep } from '../../lib/sleep.ts';
import { keyRotationLoop } from '../../operator/runtime.ts';

const abortListeners = (signal: AbortSignal): number => getEventListeners(signal, 'abort').length;

describe('sleep', () => {
  it('resolves after the delay and leaves no listener on the signal', async () => {
    const controller = new AbortController();
    for (let i = 0; i < 20; i++) await sleep(0, controller.signal);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('wakes at once when the signal aborts, and removes its listener', async () => {
    const controller = new AbortController();
    const pending = sleep(2 ** 31 - 1, controller.signal);
    expect(abortListeners(controller.signal)).toBe(1);
    controller.abort();
    await pending;
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('resolves at once for an aborted signal without listening', async () => {
    const controller = new AbortController();
    controller.abort();
    await sleep(2 ** 31 - 1, controller.signal);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('works without a signal', async () => {
    await expect(sleep(0)).resolves.toBeUndefined();
  });
});

describe('the signing key rotation loop', () => {
  it('does not add an abort listener per rotation', async () => {
    const controller = new AbortController();
    const seen: number[] = [];
    const keys = {
      rotate: (): Promise<number> => {
        seen.push(abortListeners(controller.signal));
        if (seen.length === 25) controller.abort();
        return Promise.resolve(0);
      },
    };
    await keyRotationLoop(keys, { signal: controller.signal, holds: () => true }, silentLogger);
    expect(seen).toHaveLength(25);
    expect(Math.max(...seen)).toBe(0);
  });
});

describe('one abortable sleep', () => {
  it('no source file outside lib/sleep.ts pairs setTimeout with an abort listener', () => {
    const root = join(import.meta.dirname, '../..');
    const offenders: string[] = [];
    for (const dir of ['lib', 'operator', 'webhook', 'sidecar', 'cli', 'localcluster']) {
      for (const entry of readdirSync(join(root, dir), { recursive: true, withFileTypes: true })) {
        if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
        const path = join(entry.parentPath, entry.name);
        const text = readFileSync(path, 'utf8');
        if (/\bsetTimeout\(/.test(text) && /addEventListener\('abort'/.test(text)) offenders.push(relative(root, path));
      }
    }
    expect(offenders.filter((f) => f !== join('lib', 'sleep.ts'))).toEqual([]);
  });

  it('no source file outside lib/sleep.ts writes its own sleep', () => {
    const root = join(import.meta.dirname, '../..');
    const offenders: string[] = [];
    for (const dir of ['lib', 'operator', 'webhook', 'cli', 'localcluster']) {
      for (const entry of readdirSync(join(root, dir), { recursive: true, withFileTypes: true })) {
        if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
        const path = join(entry.parentPath, entry.name);
        const text = readFileSync(path, 'utf8');
        if (/new Promise(<void>)?\(\((r|resolve)\) => setTimeout\((r|resolve), /.test(text))
          offenders.push(relative(root, path));
      }
    }
    expect(offenders).toEqual([]);
  });
});
