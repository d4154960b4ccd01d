/**
 * A child process in its own process group, so stopping it also stops anything it spawned, with its output
 * in a log file. Stop = SIGTERM to the group, then SIGKILL after a grace period.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';

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
      const child = spawn(binary, args, { detached: true, stdio: ['ignore', fd, fd] });
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
