/**
 * `demo --node` and `local-cluster --node` refuse at once, naming the reason, on a machine that cannot run a
 * node (here: not root) — before building or starting anything.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { demoCommand } from '../../cli/demo.ts';
import { localClusterCommand } from '../../cli/local-cluster.ts';
import type { CommandContext } from '../../cli/main.ts';

function context(argv: string[]): CommandContext {
  // No cache directory anywhere: had the command gone on, resolving the binaries would fail differently.
  return {
    argv,
    env: { AGENTFENCE_CACHE: '/nonexistent/agentfence-cache' },
    stdout: () => undefined,
    stderr: () => undefined,
  };
}

describe.skipIf(process.platform !== 'linux')('--node on a machine that cannot run a node', () => {
  afterEach(() => vi.restoreAllMocks());

  it('demo --node refuses, saying a node needs root', async () => {
    vi.spyOn(process, 'getuid').mockReturnValue(1000);
    await expect(demoCommand(context(['--node', '--once', '--no-build']))).rejects.toThrow(
      /^--node: a local node needs root/,
    );
  });

  it('local-cluster --node refuses the same way', async () => {
    vi.spyOn(process, 'getuid').mockReturnValue(1000);
    await expect(localClusterCommand(context(['--node', '--no-build']))).rejects.toThrow(
      /^--node: a local node needs root/,
    );
  });

  it('demo without --node does not ask for root (it fails later, on the missing binaries)', async () => {
    vi.spyOn(process, 'getuid').mockReturnValue(1000);
    await expect(demoCommand(context(['--once', '--no-build']))).rejects.toThrow(/not built|binaries/);
  });
});
