#!/usr/bin/env node
// Runs the compiled CLI when the package is built (npm pack, container image), else the TypeScript source
// directly: Node >= 22.18 strips types natively, so a checkout needs no build step. On an older Node it says
// which version it needs and how to get it instead of failing on the first `.ts` import.
import { existsSync } from 'node:fs';
import { nodeVersionProblem } from './node-version.mjs';

const problem = nodeVersionProblem(process.version, process.execPath);
if (problem) {
  process.stderr.write(problem);
  process.exit(1);
}
const compiled = new URL('../dist/cli/main.js', import.meta.url);
const { main } = await import(existsSync(compiled) ? compiled.href : new URL('../cli/main.ts', import.meta.url).href);
process.exitCode = await main(process.argv.slice(2));
