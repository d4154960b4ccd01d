/**
 * A child process in its own process group, so stopping it also stops anything it spawned, with its output
 * in a log file. Stop = SIGTERM to the group, then SIGKILL after a grace period.
 *
 * The child never outlives this process, however this process ends (SIGKILL, a crash, the OOM killer): it
 * runs under a small POSIX shell guard that holds the read end of a pipe whose write end only this process
 * has. When this process is gone the kernel closes that end, the guard reads end-of-file and kills the child.
 * Portable (no prctl, no native code) and free while the parent lives (one blocked `read`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';

/**
 * Runs "$@" (without fd 3) in the background, in the guard's process group (ManagedProcess starts the guard
 * detached, as a group leader). A watcher subshell blocks reading fd 3 and at end-of-file SIGKILLs the whole
 * group: the child, anything it spawned, the guard. SIGTERM/SIGINT to the guard are passed on to the child
 * and the guard waits until it is gone, so the exit ManagedProcess sees is the child's. The trap comes first
 * so a stop() right after start() is not lost. Builtins only: one extra process, the watcher.
 */
const GUARD = `
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
"$@" 3<&- &
child=$!
( while read -r _ <&3; do :; done; kill -KILL 0 ) &
watcher=$!
exec 3<&-
while :; do
  wait "$child"; status=$?
  kill -0 "$child" 2>/dev/null || break
done
kill -KILL "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
exit "$status"
`;

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class ManagedProcess {
  readonly name: string;
  readonly logFile: string;
  readonly exited: Promise<ExitStatus>;
  private readonly child: ChildProcess;
  private exitStatus: ExitStatus | undefined;

  private constructor(name: string, child: ChildProcess, logFile: string) {
    this.name = name;
    this.child = child;
    this.logFile = logFile;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
      child.once('error', () => {
        this.exitStatus = { code: null, signal: null };
        resolve(this.exitStatus);
      });
    });
  }

  static start(name: string, binary: string, args: string[], logFile: string): ManagedProcess {
    const fd = openSync(logFile, 'a');
    try {
      // fd 3: the lifeline. Nothing is ever written to it; it only ends when this process does.
      const child = spawn('/bin/sh', ['-c', GUARD, `agentfence-guard(${name})`, binary, ...args], {
        detached: true,
        stdio: ['ignore', fd, fd, 'pipe'],
      });
      // The lifeline must not keep this process's event loop alive, and its end is no error of ours.
      const lifeline = child.stdio[3];
      if (lifeline instanceof Socket) {
        lifeline.unref();
        lifeline.on('error', () => undefined);
      }
      return new ManagedProcess(name, child, logFile);
    } finally {
      closeSync(fd); // the child holds its own copy
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitStatus === undefined;
  }

  /** The last lines of the process output, for error messages. */
  logTail(lines = 20): string {
    try {
      return readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  async stop(graceMs = 10_000): Promise<ExitStatus> {
    if (!this.running || this.child.pid === undefined) return this.exited;
    this.signalGroup('SIGTERM');
    const timer = setTimeout(() => {
      this.signalGroup('SIGKILL');
    }, graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  private signalGroup(signal: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // Already gone.
    }
  }
}
