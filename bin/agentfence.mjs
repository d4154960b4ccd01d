#!/usr/bin/env node
// Runs the compiled CLI when the package is built (npm pack, container image), else the TypeScript source
// directly: Node >= 22.18 strips types natively, so a checkout needs no build step.
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/cli/main.js', import.meta.url);
const { main } = await import(existsSync(compiled) ? compiled.href : new URL('../cli/main.ts', import.meta.url).href);
process.exitCode = await main(process.argv.slice(2));
