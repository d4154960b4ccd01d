// Writes crds/*.yaml and lib/api/types.generated.ts from lib/api/schema.ts (then formats the types with prettier).
import { writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { renderCrdFiles, renderTypesFile } from '../lib/api/codegen.ts';

const root = new URL('..', import.meta.url);
const types = renderTypesFile();
for (const file of [...renderCrdFiles(), types]) {
  writeFileSync(new URL(file.path, root), file.content);
  console.log(`wrote ${file.path}`);
}
execFileSync('npx', ['prettier', '--write', types.path], { cwd: root, stdio: 'inherit' });
