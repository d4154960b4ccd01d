/**
 * Informer logic against a scripted fake API (list pages and watch sessions the test drives). The real API server
 * cases live in test/integration/kube-informer.test.ts; these cover paths a real server produces only rarely.
 */
import { describe, expect, it } from 'vitest';
import { KubeApiError, type KubeList, type KubeObject, type Query, type WatchEvent } from '../../lib/kube/client.ts';
import { Informer } from '../../lib/kube/informer.ts';
import { createLogger } from '../../lib/log.ts';

interface Session {
  query: Query;
  emit(event: WatchEvent): void;
  end(): void;
  fail(err: Error): void;
}

class FakeApi {
  lists: (() => KubeList)[] = [];
  listCalls: Query[] = [];
  sessions: Session[] = [];

  list<T extends KubeObject>(_path: string, query?: Query): Promise<KubeList<T>> {
    this.listCalls.push(query ?? {});
    const next = this.lists.shift();
    if (!next) return Promise.reject(new Error('no list scripted'));
    // Scripted pages may throw; that becomes the rejection a real request would give.
    return new Promise((resolve) => resolve(next() as KubeList<T>));
  }

  watch(_path: string, query: Query, onEvent: (e: WatchEvent) => void, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const session: Session = {
        query,
        emit: (e) => {
          try {
            onEvent(e);
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)));
          }
        },
        end: resolve,
        fail: reject,
      };
      signal?.addEventListener('abort', () => resolve(), { once: true });
      this.sessions.push(session);
    });
  }
}

const obj = (name: string, rv: string): KubeObject => ({ metadata: { name, namespace: 'ns', resourceVersion: rv } });
const list =
  (rv: string, ...items: KubeObject[]) =>
  () => ({ metadata: { resourceVersion: rv }, items });

async function until(probe: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function setup(extra: { resyncPeriodMs?: number; staleAfterMs?: number } = {}) {
  const api = new FakeApi();
  const informer = new Informer({
    client: api,
    resource: { group: '', version: 'v1', resource: 'configmaps' },
    backoff: { baseDelayMs: 5, maxDelayMs: 20 },
    resyncPeriodMs: extra.resyncPeriodMs ?? 0,
    ...(extra.staleAfterMs ? { staleAfterMs: extra.staleAfterMs } : {}),
  });
  const events: string[] = [];
  informer.on({
    add: (o) => events.push(`add ${o.metadata.name ?? ''}`),
    update: (a, b) =>
      events.push(
        `update ${b.metadata.name ?? ''} ${a.metadata.resourceVersion ?? ''}→${b.metadata.resourceVersion ?? ''}`,
      ),
    delete: (o) => events.push(`delete ${o.metadata.name ?? ''}`),
  });
  return { api, informer, events };
}

describe('Informer', () => {
  it('follows pagination and watches from the list resourceVersion with bookmarks', async () => {
    const { api, informer, events } = setup();
    api.lists.push(() => ({ metadata: { resourceVersion: '10', continue: 'tok' }, items: [obj('a', '5')] }));
    api.lists.push(list('10', obj('b', '6')));
    informer.start();
    await informer.waitForSync();
    await until(() => api.sessions.length === 1, 'watch');
    expect(api.listCalls[1]?.continue).toBe('tok');
    expect(api.sessions[0]?.query).toMatchObject({ resourceVersion: '10', allowWatchBookmarks: true });
    expect(events).toEqual(['add a', 'add b']);
    await informer.stop();
  });

  it('on 410 in the stream relists and emits only real differences', async () => {
    const { api, informer, events } = setup();
    api.lists.push(list('10', obj('a', '1'), obj('b', '2'), obj('gone', '3')));
    api.lists.push(list('20', obj('a', '1'), obj('b', '7'), obj('c', '8')));
    informer.start();
    await until(() => api.sessions.length === 1, 'first watch');
    api.sessions[0]?.emit({
      type: 'ERROR',
      object: { kind: 'Status', code: 410, message: 'too old resource version' },
    });
    await until(() => api.sessions.length === 2, 'second watch');
    expect(api.sessions[1]?.query.resourceVersion).toBe('20');
    expect(events).toEqual(['add a', 'add b', 'add gone', 'delete gone', 'update b 2→7', 'add c']);
    expect(informer.keys().sort()).toEqual(['ns/a', 'ns/b', 'ns/c']);
    await informer.stop();
  });

  it('resumes from the last event or bookmark resourceVersion after a stream ends or fails, without relisting', async () => {
    const { api, informer, events } = setup();
    api.lists.push(list('10'));
    informer.start();
    await until(() => api.sessions.length === 1, 'first watch');
    api.sessions[0]?.emit({ type: 'ADDED', object: obj('a', '11') });
    api.sessions[0]?.emit({ type: 'BOOKMARK', object: { metadata: { resourceVersion: '15' } } });
    api.sessions[0]?.end();
    await until(() => api.sessions.length === 2, 'second watch');
    expect(api.sessions[1]?.query.resourceVersion).toBe('15');
    api.sessions[1]?.emit({ type: 'MODIFIED', object: obj('a', '16') });
    api.sessions[1]?.fail(new Error('socket hang up'));
    await until(() => api.sessions.length === 3, 'third watch after backoff');
    expect(api.sessions[2]?.query.resourceVersion).toBe('16');
    api.sessions[2]?.emit({ type: 'DELETED', object: obj('a', '17') });
    expect(events).toEqual(['add a', 'update a 11→16', 'delete a']);
    expect(api.listCalls).toHaveLength(1);
    await informer.stop();
  });

  it('never stops on list errors (403, 500, network): retries with backoff until a list succeeds', async () => {
    const { api, informer } = setup();
    api.lists.push(() => {
      throw new KubeApiError(403, 'Forbidden', 'configmaps is forbidden', 'GET', '/x');
    });
    api.lists.push(() => {
      throw new Error('ECONNREFUSED');
    });
    api.lists.push(list('3', obj('a', '1')));
    informer.start();
    await informer.waitForSync();
    expect(api.listCalls).toHaveLength(3);
    expect(informer.get('ns/a')).toBeDefined();
    await informer.stop();
  });

  it('relists when the watch keeps failing from the same resourceVersion', async () => {
    const { api, informer } = setup();
    api.lists.push(list('10', obj('a', '1')));
    api.lists.push(list('30', obj('a', '1')));
    informer.start();
    for (let i = 1; i <= 3; i++) {
      await until(() => api.sessions.length === i, `watch ${i}`);
      expect(api.listCalls).toHaveLength(1);
      api.sessions[i - 1]?.fail(new KubeApiError(504, 'Timeout', 'Too large resource version', 'WATCH', '/x'));
    }
    await until(() => api.sessions.length === 4, 'watch after relist');
    expect(api.listCalls).toHaveLength(2);
    expect(api.sessions[3]?.query.resourceVersion).toBe('30');
    await informer.stop();
  });

  it('backs off when expiries repeat without a healthy watch in between', async () => {
    const { api, informer } = setup();
    const expired: WatchEvent = { type: 'ERROR', object: { kind: 'Status', code: 410, message: 'too old' } };
    for (let i = 0; i < 3; i++) api.lists.push(list(String(10 + i)));
    informer.start();
    await until(() => api.sessions.length === 1, 'watch 1');
    api.sessions[0]?.emit(expired);
    await until(() => api.sessions.length === 2, 'watch 2');
    const relistedAt = Date.now();
    api.sessions[1]?.emit(expired);
    await until(() => api.sessions.length === 3, 'watch 3');
    // The second consecutive expiry waited for the backoff (5 ms · 2 with jitter) before relisting.
    expect(Date.now() - relistedAt).toBeGreaterThanOrEqual(9);
    expect(api.listCalls).toHaveLength(3);
    await informer.stop();
  });

  it('re-delivers every cached object on resync', async () => {
    const { api, informer, events } = setup({ resyncPeriodMs: 20 });
    api.lists.push(list('10', obj('a', '1'), obj('b', '2')));
    informer.start();
    await until(() => events.filter((e) => e.startsWith('update')).length >= 2, 'resync');
    expect(events).toContain('update a 1→1');
    expect(events).toContain('update b 2→2');
    await informer.stop();
  });

  it('isolates a throwing handler from the others and from the loop', async () => {
    const { api, informer, events } = setup();
    informer.on({
      add: () => {
        throw new Error('handler bug');
      },
    });
    api.lists.push(list('10', obj('a', '1')));
    informer.start();
    await until(() => api.sessions.length === 1, 'watch');
    api.sessions[0]?.emit({ type: 'ADDED', object: obj('b', '11') });
    expect(events).toEqual(['add a', 'add b']);
    expect(api.sessions).toHaveLength(1); // the watch itself kept going
    await informer.stop();
  });

  it('tears down a watch that went silent (half-open connection) and resumes', async () => {
    const { api, informer } = setup({ staleAfterMs: 100 });
    api.lists.push(list('10'));
    informer.start();
    await until(() => api.sessions.length === 1, 'first watch');
    await until(() => api.sessions.length === 2, 'watch restarted by the watchdog', 3000);
    expect(api.sessions[1]?.query.resourceVersion).toBe('10');
    await informer.stop();
  });

  it(
    'retries an unreachable or not-ready (503, 429) API server at least every unreachableMaxDelayMs, other HTTP errors with the full backoff',
    { timeout: 20_000 },
    async () => {
      const api = new FakeApi();
      const delays: { status: unknown; retryInMs: number }[] = [];
      const logger = createLogger({
        level: 'info', // the first failure of a run is logged at info, the rest at warn
        write: (line) => {
          const r = JSON.parse(line) as { msg?: string; status?: unknown; retryInMs?: number };
          if (r.msg === 'list/watch failed, retrying') delays.push({ status: r.status, retryInMs: r.retryInMs ?? 0 });
        },
      });
      for (let i = 0; i < 2; i++)
        api.lists.push(() => {
          throw new Error('connect ECONNREFUSED 127.0.0.1:6443');
        });
      // What a restarting kube-apiserver answers once it listens but before it serves everything.
      for (let i = 0; i < 2; i++) {
        api.lists.push(() => {
          throw new KubeApiError(503, undefined, 'before all known HTTP paths have been installed', 'GET', '/x');
        });
        api.lists.push(() => {
          throw new KubeApiError(429, 'TooManyRequests', 'storage is (re)initializing', 'GET', '/x');
        });
      }
      for (let i = 0; i < 2; i++)
        api.lists.push(() => {
          throw new KubeApiError(403, 'Forbidden', 'forbidden', 'GET', '/x');
        });
      api.lists.push(list('9', obj('a', '9')));
      const informer = new Informer({
        client: api,
        resource: { group: '', version: 'v1', resource: 'pods' },
        logger,
        backoff: { baseDelayMs: 5, maxDelayMs: 10_000 },
        unreachableMaxDelayMs: 50,
      });
      informer.start();
      await until(() => informer.hasSynced(), 'synced after the outage', 10_000);
      await informer.stop();
      const unreachable = delays.filter((d) => d.status !== 403).map((d) => d.retryInMs);
      const http = delays.filter((d) => d.status === 403).map((d) => d.retryInMs);
      expect(unreachable).toHaveLength(6);
      expect(Math.max(...unreachable)).toBeLessThanOrEqual(50); // uncapped, the sixth would wait 160 ms+
      expect(http).toHaveLength(2);
      expect(Math.max(...http)).toBeGreaterThan(50); // the backoff itself keeps growing
    },
  );
});

describe('informer failure logging', () => {
  it('logs a single list failure at info, and failures in a row at warn', async () => {
    const lines: { level: string; msg: string }[] = [];
    const logger = {
      debug: (msg: string) => lines.push({ level: 'debug', msg }),
      info: (msg: string) => lines.push({ level: 'info', msg }),
      warn: (msg: string) => lines.push({ level: 'warn', msg }),
      error: (msg: string) => lines.push({ level: 'error', msg }),
      child: () => logger,
    };
    const api = new FakeApi();
    const initializing = (): never => {
      throw new KubeApiError(429, 'TooManyRequests', 'storage is (re)initializing', 'GET', '/x');
    };
    api.lists.push(initializing, initializing, list('5', obj('a', '5')));
    const informer = new Informer({
      client: api,
      resource: { group: '', version: 'v1', resource: 'pods' },
      logger,
      backoff: { baseDelayMs: 1, maxDelayMs: 2 },
    });
    informer.start();
    await until(() => informer.list().length === 1, 'the third list to succeed');
    await informer.stop();
    const failures = lines.filter((l) => l.msg === 'list/watch failed, retrying').map((l) => l.level);
    expect(failures).toEqual(['info', 'warn']);
  });
});
