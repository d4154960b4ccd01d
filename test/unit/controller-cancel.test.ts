/**
 * A reconcile cut short on purpose — the controller stopping, or the replica losing its lease so that the fenced
 * client refuses its writes — is a cancellation, not a failure: no warning (the demo narration and operators'
 * alerts read warnings), no retry on this replica.
 */
import { describe, expect, it } from 'vitest';
import { Controller } from '../../lib/kube/controller.ts';
import { LeadershipLostError } from '../../lib/kube/fenced.ts';
import { createLogger } from '../../lib/log.ts';

function recordingLogger(): { logger: ReturnType<typeof createLogger>; lines: { level: string; msg: string }[] } {
  const lines: { level: string; msg: string }[] = [];
  const logger = createLogger({
    level: 'debug',
    write: (line) => lines.push(JSON.parse(line) as { level: string; msg: string }),
  });
  return { logger, lines };
}

describe('Controller cancellation', () => {
  it('logs a reconcile aborted by stop() as cancelled, not as a failure to retry', async () => {
    const { logger, lines } = recordingLogger();
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    const controller = new Controller({
      name: 't',
      logger,
      reconcile: (_key, { signal }) =>
        new Promise((_resolve, reject) => {
          entered();
          signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')), { once: true });
        }),
    });
    await controller.start();
    controller.queue.add('k');
    await inside;
    await controller.stop();
    expect(lines.filter((l) => l.level === 'warn' || l.level === 'error')).toEqual([]);
    expect(lines.map((l) => l.msg)).toContain('reconcile cancelled');
    expect(controller.queue.numRequeues('k')).toBe(0);
  });

  it('does not retry on this replica when its lease is gone mid-reconcile; other errors still retry with a warning', async () => {
    const { logger, lines } = recordingLogger();
    const errors: Error[] = [new LeadershipLostError('PATCH', '/x'), new Error('conflict')];
    let calls = 0;
    const controller = new Controller({
      name: 't',
      logger,
      backoff: { baseDelayMs: 60_000 },
      reconcile: () => {
        calls++;
        return Promise.reject(errors.shift() ?? new Error('unexpected'));
      },
    });
    await controller.start();
    controller.queue.add('lease');
    await until(() => calls === 1);
    controller.queue.add('other');
    await until(() => calls === 2);
    await controller.stop();
    expect(controller.queue.numRequeues('lease')).toBe(0);
    expect(controller.queue.numRequeues('other')).toBe(1);
    expect(lines.filter((l) => l.level === 'warn').map((l) => l.msg)).toEqual(['reconcile failed, will retry']);
  });
});

async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !done(); i++) await new Promise((r) => setTimeout(r, 5));
  if (!done()) throw new Error('condition not reached');
}
