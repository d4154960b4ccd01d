/** Types for bin/node-version.mjs (plain JavaScript so that an old Node can run it). */
export function requiredNode(): [number, number, number];
export function nodeVersionProblem(version: string, execPath: string): string | undefined;
