/**
 * Writes fenced by leadership: a client for the leader's work whose every mutating request (server-side apply,
 * delete, status, events — anything but GET) first checks that the term still holds a lease renewed within the
 * deadline, and carries the term's AbortSignal, so a deposed leader that wakes up (SIGCONT, a long pause) cannot
 * start a write with its stale view of the world, and writes in flight are cancelled when the term ends.
 * The check is synchronous and immediately before sending: after a pause, I/O callbacks (watch events that
 * trigger a reconcile) run before the timers that would notice the lost lease.
 */
import type { RequestInit, WriteClient } from './client.ts';
import type { LeaderTerm } from './leader.ts';

/** Thrown instead of writing when the term no longer holds its lease; the reconcile ends, nothing is written. */
export class LeadershipLostError extends Error {
  override readonly name = 'LeadershipLostError';
  constructor(method: string, path: string) {
    super(`not writing ${method} ${path}: this replica no longer holds a lease renewed within the deadline`);
  }
}

export function fencedClient(client: WriteClient, term: LeaderTerm): WriteClient {
  return {
    request<T>(method: string, path: string, init: RequestInit = {}): Promise<T> {
      if (method === 'GET') return client.request<T>(method, path, init);
      if (!term.holds()) return Promise.reject(new LeadershipLostError(method, path));
      const signal = init.signal ? AbortSignal.any([init.signal, term.signal]) : term.signal;
      return client.request<T>(method, path, { ...init, signal });
    },
  };
}

/** True for errors that mean "this term is over": stop the reconcile, do not count a failure against a policy. */
export function isLeadershipLoss(err: unknown, signal?: AbortSignal): boolean {
  return err instanceof LeadershipLostError || (signal?.aborted === true && err instanceof Error);
}
