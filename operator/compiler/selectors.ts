/**
 * Label selectors compiled once into predicates, and a per-namespace label index over pods so that a policy
 * only looks at the pods that could match (the smallest posting list of its matchLabels).
 */
import type { LabelSelector } from '../../lib/api/types.generated.ts';

export type Labels = Readonly<Record<string, string>>;
export type LabelPredicate = (labels: Labels) => boolean;

export function compileSelector(selector: LabelSelector): LabelPredicate {
  const exact = Object.entries(selector.matchLabels ?? {});
  const expressions = (selector.matchExpressions ?? []).map((e): LabelPredicate => {
    const values = new Set(e.values ?? []);
    switch (e.operator) {
      case 'In':
        return (l) => l[e.key] !== undefined && values.has(l[e.key] ?? '');
      case 'NotIn':
        return (l) => l[e.key] === undefined || !values.has(l[e.key] ?? '');
      case 'Exists':
        return (l) => l[e.key] !== undefined;
      case 'DoesNotExist':
        return (l) => l[e.key] === undefined;
    }
  });
  return (labels) => exact.every(([k, v]) => labels[k] === v) && expressions.every((p) => p(labels));
}

/** A selector that also requires the given labels (merged into matchLabels unless that would conflict). */
export function andLabels(selector: LabelSelector, extra: Record<string, string>): LabelSelector {
  const matchLabels: Record<string, string> = { ...selector.matchLabels };
  const matchExpressions = [...(selector.matchExpressions ?? [])];
  for (const [key, value] of Object.entries(extra)) {
    const existing = matchLabels[key];
    // A conflicting value keeps the user's label and adds ours as an expression: the result selects nothing,
    // exactly like the user's selector intersected with ours.
    if (existing !== undefined && existing !== value) matchExpressions.push({ key, operator: 'In', values: [value] });
    else matchLabels[key] = value;
  }
  return matchExpressions.length > 0 ? { matchLabels, matchExpressions } : { matchLabels };
}

export interface Labelled {
  labels: Labels;
}

/** Objects of one namespace, indexed by `key=value`. */
export class LabelIndex<T extends Labelled> {
  readonly all: T[] = [];
  private readonly byLabel = new Map<string, T[]>();

  add(item: T): void {
    this.all.push(item);
    for (const [k, v] of Object.entries(item.labels)) {
      const key = `${k}=${v}`;
      const list = this.byLabel.get(key);
      if (list) list.push(item);
      else this.byLabel.set(key, [item]);
    }
  }

  select(selector: LabelSelector, predicate: LabelPredicate = compileSelector(selector)): T[] {
    let candidates = this.all;
    for (const [k, v] of Object.entries(selector.matchLabels ?? {})) {
      const list = this.byLabel.get(`${k}=${v}`) ?? [];
      if (list.length < candidates.length) candidates = list;
    }
    return candidates.filter((item) => predicate(item.labels));
  }
}
