// `npm run bench`: runs every benchmark in bench/ (each prints its own table of figures and ratios).
import { readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const dir = new URL('.', import.meta.url);
for (const file of readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run-all.ts')
  .sort()) {
  console.log(`\n## ${file}\n`);
  execFileSync(process.execPath, [new URL(file, dir).pathname], { stdio: 'inherit' });
}
