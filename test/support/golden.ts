/**
 * Golden files: compare generated text with a committed file. UPDATE_GOLDEN=1 rewrites the file (a deliberate,
 * reviewable diff); a missing file is a failure, never a fresh baseline, so a case cannot pass by being new.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { expect } from 'vitest';

export function expectGolden(path: string, actual: string): void {
  // eslint-disable-next-line no-restricted-properties -- test-only switch to refresh golden files
  if (process.env.UPDATE_GOLDEN === '1') {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, actual);
  }
  expect(existsSync(path), `${path} is missing; run with UPDATE_GOLDEN=1`).toBe(true);
  expect(actual, `${path} differs; review, then refresh with UPDATE_GOLDEN=1`).toBe(readFileSync(path, 'utf8'));
}
