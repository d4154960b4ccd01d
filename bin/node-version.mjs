// The Node.js version check, in plain JavaScript that any Node can parse: a checkout runs the TypeScript
// sources directly, which needs type stripping (Node >= 22.18). The required range is package.json's
// engines.node, the one place it is written.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The minimum version from package.json's engines.node (">=X.Y.Z"). */
export function requiredNode() {
  const range = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).engines.node;
  const m = /^>=\s*(\d+)\.(\d+)\.(\d+)$/.exec(range);
  if (!m) throw new Error(`package.json engines.node must be ">=X.Y.Z" (got "${range}")`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

/** A message saying which Node is needed and how to get it, or undefined when `version` (like "v20.1.0") suffices. */
export function nodeVersionProblem(version, execPath) {
  const want = requiredNode();
  const have = version.replace(/^v/, '').split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    if ((have[i] ?? 0) > want[i]) return undefined;
    if ((have[i] ?? 0) < want[i]) break;
    if (i === 2) return undefined;
  }
  const pinned = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).devDependencies?.node;
  const local = `${root}node_modules/.bin/node`;
  // The package is there but its install script did not run (npm's ignore-scripts): it has no binary.
  const unbuilt = !existsSync(local) && existsSync(`${root}node_modules/node/package.json`);
  const lines = [
    `agentfence needs Node.js >= ${want.join('.')}; this is ${version} (${execPath}).`,
    unbuilt
      ? '  node_modules/node has no binary: its install script did not run (ignore-scripts?). Run `npm rebuild node`,'
      : undefined,
    unbuilt ? '  then use the npm scripts (npm run demo, npm test) or npx agentfence <command>.' : undefined,
    unbuilt
      ? undefined
      : existsSync(local)
        ? `  This checkout has Node ${pinned ?? ''} in node_modules/.bin: use the npm scripts (npm run demo, npm test),`
        : `  In a checkout, \`npm ci\` installs Node ${pinned ?? '24'} into node_modules/.bin and the npm scripts use it`,
    unbuilt
      ? undefined
      : existsSync(local)
        ? `  npx agentfence <command>, or ${local} bin/agentfence.mjs <command>.`
        : `  (npm run demo, npm test, npx agentfence <command>).`,
    '  Or install Node.js 24 LTS: https://nodejs.org/en/download',
  ].filter((line) => line !== undefined);
  return `${lines.join('\n')}\n`;
}

// Run directly (the first step of `npm test`): exit 1 with the message on an old Node.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const problem = nodeVersionProblem(process.version, process.execPath);
  if (problem) {
    process.stderr.write(problem);
    process.exit(1);
  }
}
