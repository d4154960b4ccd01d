/**
 * Every Markdown file in the repository (outside node_modules) links only to files that exist, and to headings
 * that exist in them: a README line that cites a document or a section that is gone is a broken promise to the
 * reader. Anchors follow GitHub's slugs (lower case, spaces → '-', punctuation other than '-' and '_' removed,
 * repeats numbered -1, -2, …). Any mention of `docs/<name>.md`, linked or not, must name a file that exists.
 */
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../lib/paths.ts';

const SKIP_DIRS = new Set(['node_modules', '.git']);

function markdownFiles(root: string): string[] {
  const found: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        if (!SKIP_DIRS.has(entry.name)) walk(join(dir, entry.name));
      } else if (entry.isFile() && entry.name.toLowerCase().endsWith('.md')) {
        found.push(join(dir, entry.name));
      }
    }
  };
  walk(root);
  return found.sort();
}

/** The lines of a Markdown text outside fenced code blocks, with their 1-based numbers. */
function proseLines(text: string): { line: string; n: number }[] {
  const out: { line: string; n: number }[] = [];
  let fence: string | undefined;
  text.split('\n').forEach((line, i) => {
    const m = /^\s{0,3}(`{3,}|~{3,})/.exec(line);
    if (m?.[1] !== undefined) {
      const marker = m[1];
      if (fence === undefined) fence = marker;
      else if (marker[0] === fence[0] && marker.length >= fence.length) fence = undefined;
      return;
    }
    if (fence === undefined) out.push({ line, n: i + 1 });
  });
  return out;
}

/** GitHub's anchor for a heading's text. */
export function githubSlug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // links and images: their text
    .replace(/`/g, '')
    .replace(/<[^>]+>/g, '');
  return text
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\p{M} _-]/gu, '')
    .replace(/ /g, '-');
}

/** Every anchor a Markdown text offers: its headings' slugs (repeats numbered) and explicit HTML ids/names. */
function anchorsOf(text: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  for (const { line } of proseLines(text)) {
    const h = /^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$/.exec(line);
    if (h?.[1] !== undefined) {
      const base = githubSlug(h[1]);
      const count = seen.get(base) ?? 0;
      seen.set(base, count + 1);
      anchors.add(count === 0 ? base : `${base}-${count}`);
    }
    for (const m of line.matchAll(/<a\s[^>]*(?:id|name)="([^"]+)"/g)) if (m[1] !== undefined) anchors.add(m[1]);
  }
  return anchors;
}

/** Link targets of a line: inline links and images, and reference definitions; code spans are not links. */
function linkTargets(line: string): string[] {
  const prose = line.replace(/`[^`]*`/g, '``');
  const targets: string[] = [];
  for (const m of prose.matchAll(/\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+"[^"]*")?\s*\)/g))
    if (m[1] !== undefined) targets.push(m[1]);
  const def = /^\s{0,3}\[[^\]]+\]:\s+(<[^>]*>|\S+)/.exec(prose);
  if (def?.[1] !== undefined) targets.push(def[1]);
  return targets.map((t) => (t.startsWith('<') ? t.slice(1, -1) : t));
}

/** Problems of the Markdown files under root, one sentence each naming the file, the line and the target. */
export function linkProblems(root: string): string[] {
  const problems: string[] = [];
  const anchorCache = new Map<string, Set<string>>();
  const anchorsOfFile = (file: string): Set<string> => {
    let anchors = anchorCache.get(file);
    if (anchors === undefined) {
      anchors = anchorsOf(readFileSync(file, 'utf8'));
      anchorCache.set(file, anchors);
    }
    return anchors;
  };
  for (const file of markdownFiles(root)) {
    const text = readFileSync(file, 'utf8');
    const where = (n: number): string => `${relative(root, file)}:${n}`;
    for (const { line, n } of proseLines(text)) {
      for (const target of linkTargets(line)) {
        if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('//')) continue; // a URL, not a file
        const hash = target.indexOf('#');
        const pathPart = decodeURIComponent(hash === -1 ? target : target.slice(0, hash));
        const anchor = hash === -1 ? undefined : decodeURIComponent(target.slice(hash + 1));
        const dest =
          pathPart === '' ? file : pathPart.startsWith('/') ? join(root, pathPart) : resolve(dirname(file), pathPart);
        if (!existsSync(dest)) {
          problems.push(`${where(n)}: link to ${target}: ${relative(root, dest)} does not exist`);
          continue;
        }
        if (anchor !== undefined && anchor !== '' && statSync(dest).isFile() && dest.toLowerCase().endsWith('.md')) {
          if (!anchorsOfFile(dest).has(anchor.toLowerCase())) {
            problems.push(
              `${where(n)}: link to ${target}: no heading in ${relative(root, dest)} has the anchor #${anchor}`,
            );
          }
        }
      }
    }
    // Mentions of docs/<name>.md anywhere, linked or not, in code spans and code blocks too.
    text.split('\n').forEach((line, i) => {
      for (const m of line.matchAll(/(?<![\w./-])((?:\.{1,2}\/)*docs\/[\w.-]+\.md)/g)) {
        const mention = m[1];
        if (mention === undefined) continue;
        const candidates = mention.startsWith('.')
          ? [resolve(dirname(file), mention)]
          : [resolve(dirname(file), mention), join(root, mention)];
        if (!candidates.some((c) => existsSync(c)))
          problems.push(`${where(i + 1)}: mentions ${mention}, which does not exist`);
      }
    });
  }
  return problems;
}

describe('Markdown links', () => {
  const root = packageRoot();

  it('finds the Markdown files of the repository, not those of node_modules', () => {
    const files = markdownFiles(root).map((f) => relative(root, f));
    expect(files).toContain('README.md');
    expect(files).toContain(join('docs', 'operations.md'));
    expect(files.some((f) => f.split(/[\\/]/).includes('node_modules'))).toBe(false);
  });

  it('every relative link, anchor and docs/<name>.md mention in the repository resolves', () => {
    expect(linkProblems(root)).toEqual([]);
  });

  it('the README keeps the two commands (the CI hook greps README.md for `npm test`)', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    expect(readme).toContain('npm ci && npm test');
    expect(readme).toContain('npm ci && npm run demo');
  });

  it('slugs headings as GitHub does', () => {
    expect(githubSlug('A real node (`--node`)')).toBe('a-real-node---node');
    expect(githubSlug('Reliability: faults and bounds')).toBe('reliability-faults-and-bounds');
    expect(githubSlug('What each layer enforces — and what it does not')).toBe(
      'what-each-layer-enforces--and-what-it-does-not',
    );
    expect(githubSlug('AgentPolicy (`agentfence.io/v1alpha1`, short name `ap`)')).toBe(
      'agentpolicy-agentfenceiov1alpha1-short-name-ap',
    );
    expect(githubSlug('snake_case and [a link](x.md)')).toBe('snake_case-and-a-link');
  });

  describe('on a tree with broken links', () => {
    const dir = mkdtempSync(join(tmpdir(), 'agentfence-docs-links-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    mkdirSync(join(dir, 'docs'));
    mkdirSync(join(dir, 'sub'));
    mkdirSync(join(dir, 'node_modules'));
    writeFileSync(
      join(dir, 'docs', 'guide.md'),
      '# Guide\n\n## First steps\n\n## First steps\n\n```sh\n# not a heading\n```\n',
    );
    writeFileSync(join(dir, 'node_modules', 'x.md'), '[broken](nowhere.md)\n');
    const readme = [
      '# Top',
      '[ok](docs/guide.md) [ok anchor](docs/guide.md#first-steps) [repeat](docs/guide.md#first-steps-1)',
      '[self](#top) [url](https://example.com/docs/gone.md) [dir](sub)',
      '[missing file](docs/gone.md)',
      '[missing anchor](docs/guide.md#last-steps)',
      '[code heading](docs/guide.md#not-a-heading)',
      '[missing self](#nowhere)',
      'Read `docs/absent.md` and docs/guide.md.',
      '`[in a code span](docs/guide.md#not-checked)`',
      '```',
      '[in a code block](not-checked.md)',
      '```',
    ].join('\n');
    writeFileSync(join(dir, 'README.md'), readme);
    writeFileSync(
      join(dir, 'sub', 'README.md'),
      '[up](../docs/guide.md#guide) [wrong up](docs/guide.md) see ../docs/other.md\n',
    );

    it('reports each broken one with file, line and target, and nothing else', () => {
      expect(linkProblems(dir)).toEqual([
        'README.md:4: link to docs/gone.md: docs/gone.md does not exist',
        'README.md:5: link to docs/guide.md#last-steps: no heading in docs/guide.md has the anchor #last-steps',
        'README.md:6: link to docs/guide.md#not-a-heading: no heading in docs/guide.md has the anchor #not-a-heading',
        'README.md:7: link to #nowhere: no heading in README.md has the anchor #nowhere',
        'README.md:4: mentions docs/gone.md, which does not exist',
        'README.md:8: mentions docs/absent.md, which does not exist',
        'sub/README.md:1: link to docs/guide.md: sub/docs/guide.md does not exist',
        'sub/README.md:1: mentions ../docs/other.md, which does not exist',
      ]);
    });
  });
});
