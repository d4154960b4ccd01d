/**
 * The Node.js version check that bin/agentfence.mjs and `npm test` run first: an old Node gets a message
 * naming the version it needs and how to get it, not a stack trace about `.ts` files.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { nodeVersionProblem, requiredNode } from '../../bin/node-version.mjs';

const run = promisify(execFile);
const cli = new URL('../../bin/agentfence.mjs', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
  engines: { node: string };
  devDependencies: Record<string, string>;
};

describe('node version check', () => {
  it('reads the minimum from package.json engines.node', () => {
    expect(`>=${requiredNode().join('.')}`).toBe(pkg.engines.node);
  });

  it('accepts the minimum and newer, refuses older (each component compared numerically)', () => {
    const [major, minor, patch] = requiredNode();
    expect(nodeVersionProblem(`v${major}.${minor}.${patch}`, '/n')).toBeUndefined();
    expect(nodeVersionProblem(`v${major}.${minor + 1}.0`, '/n')).toBeUndefined();
    expect(nodeVersionProblem(`v${major + 2}.0.0`, '/n')).toBeUndefined();
    expect(nodeVersionProblem(`v${major}.${minor - 1}.99`, '/n')).toMatch(/needs Node\.js >= /);
    expect(nodeVersionProblem(`v${major - 2}.99.99`, '/n')).toMatch(/needs Node\.js >= /);
    expect(nodeVersionProblem('v20.20.2', '/usr/bin/node')).toContain('this is v20.20.2 (/usr/bin/node)');
  });

  it('the project pins the node package that npm scripts run on, with its install script allowed', () => {
    const root = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      devDependencies: Record<string, string>;
      allowScripts?: Record<string, boolean>;
    };
    expect(root.devDependencies.node).toMatch(/^\d+\.\d+\.\d+$/);
    expect(nodeVersionProblem(`v${root.devDependencies.node ?? ''}`, '/n')).toBeUndefined();
    expect(root.allowScripts?.node).toBe(true);
    // npm ci put it first on the npm scripts' PATH: this test runs on it.
    expect(process.version).toBe(`v${root.devDependencies.node ?? ''}`);
  });

  // The machine's own Node, when it is older than the minimum (Node 20 on the CI machines).
  const systemNode = '/usr/bin/node';
  const old = existsSync(systemNode) ? execFileSync(systemNode, ['--version'], { encoding: 'utf8' }).trim() : '';
  it.runIf(old !== '' && nodeVersionProblem(old, systemNode) !== undefined)(
    `bin/agentfence.mjs under ${old || 'an old Node'} says which version it needs and how to get it`,
    async () => {
      const err = (await run(systemNode, [cli, 'demo', '--help']).catch((e: unknown) => e)) as {
        code?: number;
        stderr?: string;
      };
      expect(err.code).toBe(1);
      expect(err.stderr).toContain(`agentfence needs Node.js ${pkg.engines.node.replace('>=', '>= ')}`);
      expect(err.stderr).toContain('node_modules/.bin');
      expect(err.stderr).toContain('https://nodejs.org');
      expect(err.stderr).not.toContain('ERR_UNKNOWN_FILE_EXTENSION');
      expect(err.stderr).not.toMatch(/^\s+at /m);
    },
  );
});
