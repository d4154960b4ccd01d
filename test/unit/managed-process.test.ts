/**
 * ManagedProcess children never outlive their parent: the parent (a real Node process running ManagedProcess)
 * is SIGKILLed, and the grandchildren it started are gone within seconds. Also: stop() still stops the child
 * and reports the child's own exit, and a child that exits on its own takes its guard with it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManagedProcess } from '../../localcluster/process.ts';

const processModule = new URL('../../localcluster/process.ts', import.meta.url).href;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every descendant of pid, from /proc. */
function descendants(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parents.set(ppid, [...(parents.get(ppid) ?? []), Number(entry)]);
    } catch {
      // exited meanwhile
    }
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const c of parents.get(queue.shift() ?? -1) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

async function until(what: string, probe: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentfence-process-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ManagedProcess', () => {
  it('children are killed within seconds when the parent is SIGKILLed', async () => {
    // Two children, one of which ignores SIGTERM: only SIGKILL from the guard can end it.
    const script = `
      import { ManagedProcess } from ${JSON.stringify(processModule)};
      const a = ManagedProcess.start('sleeper', '/bin/sleep', ['300'], ${JSON.stringify(join(dir, 'a.log'))});
      const b = ManagedProcess.start('stubborn', '/bin/sh', ['-c', 'trap "" TERM; sleep 300 & wait'], ${JSON.stringify(join(dir, 'b.log'))});
      console.log(JSON.stringify([a.pid, b.pid]));
      setInterval(() => {}, 1000);
    `;
    const parent = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    parent.stdout.on('data', (c: Buffer) => (out += c.toString()));
    await until('the parent to start its children', () => out.includes(']'));
    const parentPid = parent.pid ?? -1;
    // guards, their watchers, the children and the stubborn child's sleep
    await until('every child to be running', () => descendants(parentPid).length >= 6);
    const tree = descendants(parentPid);
    expect(tree.every(alive)).toBe(true);

    parent.kill('SIGKILL');
    await until('every descendant to be gone', () => tree.every((pid) => !alive(pid)));
  }, 30_000);

  it('stop() ends the child and reports its exit; a child that exits on its own ends its guard', async () => {
    const p = ManagedProcess.start('sleeper', '/bin/sleep', ['300'], join(dir, 'c.log'));
    const pid = p.pid ?? -1;
    await until('the child to start', () => descendants(pid).length >= 2);
    const tree = descendants(pid);
    const status = await p.stop(5_000);
    expect(status.code).toBe(128 + 15); // the child's SIGTERM, passed through the guard
    expect(p.running).toBe(false);
    // Reaped by the guard before it exits; the check waits for the kernel all the same, never for a fixed time.
    await until('the guard, its watcher and the child to be gone', () => !tree.some(alive));

    const q = ManagedProcess.start('quick', '/bin/sh', ['-c', 'exit 7'], join(dir, 'd.log'));
    expect((await q.exited).code).toBe(7);
  });
});
