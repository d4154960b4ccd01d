/** The project image on a local node: hack/build-image.sh builds it without Docker and imports it. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.ts';
import type { LocalNode } from './node.ts';

/** Builds the image the Dockerfile describes as `ref` and imports it into the node's containerd. */
export function buildProjectImage(node: LocalNode, ref: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      join(packageRoot(), 'hack', 'build-image.sh'),
      ['--import', node.containerdSocket, node.binaries.ctr, ref],
      // Its stdout (the archive path) is not needed; its progress is shown only when it fails.
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let progress = '';
    child.stderr.on('data', (c: Buffer) => (progress = (progress + c.toString()).slice(-4000)));
    child.once('error', reject);
    child.once('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`build-image.sh exited ${code}:\n${progress}`)),
    );
  });
}
