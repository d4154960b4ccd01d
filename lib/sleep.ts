/**
 * The one abortable sleep. Loops that wait between attempts (leader election, informer backoff, key rotation,
 * certificate upkeep) must wake at once when their signal aborts, and must not leave a listener behind on a
 * signal that lives as long as the process: each sleep removes its own listener however it ends.
 */

/** setTimeout fires after 1 ms for anything above 2^31-1 ms (24.8 days); waking early is harmless for a loop. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Resolves after ms, or as soon as signal aborts (at once if it already has). Never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.min(Math.max(0, ms), MAX_TIMER_MS));
    signal?.addEventListener('abort', done, { once: true });
  });
}
