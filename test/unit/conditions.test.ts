import { describe, expect, it } from 'vitest';
import {
  findCondition,
  isConditionTrue,
  metaTime,
  removeCondition,
  setCondition,
  type Condition,
} from '../../lib/kube/conditions.ts';

const t0 = new Date('2026-01-01T00:00:00.123Z');
const t1 = new Date('2026-01-01T00:05:00.456Z');

describe('conditions', () => {
  it('formats metav1.Time without fractional seconds', () => {
    expect(metaTime(t0)).toBe('2026-01-01T00:00:00Z');
  });

  it('adds a new condition with the transition time set to now', () => {
    const out = setCondition(undefined, { type: 'Ready', status: 'False', reason: 'Pending', message: 'm' }, t0);
    expect(out).toEqual([
      { type: 'Ready', status: 'False', reason: 'Pending', message: 'm', lastTransitionTime: '2026-01-01T00:00:00Z' },
    ]);
  });

  it('keeps lastTransitionTime when the status does not change, but updates reason, message and generation', () => {
    const first = setCondition(
      [],
      { type: 'Ready', status: 'False', reason: 'A', message: 'a', observedGeneration: 1 },
      t0,
    );
    const second = setCondition(
      first,
      { type: 'Ready', status: 'False', reason: 'B', message: 'b', observedGeneration: 2 },
      t1,
    );
    expect(second[0]).toEqual({
      type: 'Ready',
      status: 'False',
      reason: 'B',
      message: 'b',
      observedGeneration: 2,
      lastTransitionTime: '2026-01-01T00:00:00Z',
    });
  });

  it('moves lastTransitionTime when the status flips', () => {
    const first = setCondition([], { type: 'Ready', status: 'False', reason: 'A', message: '' }, t0);
    const second = setCondition(first, { type: 'Ready', status: 'True', reason: 'Ok', message: '' }, t1);
    expect(second[0]?.lastTransitionTime).toBe('2026-01-01T00:05:00Z');
  });

  it('does not mutate its input and keeps the order of other conditions', () => {
    const input: Condition[] = [
      { type: 'A', status: 'True', reason: 'R', message: '', lastTransitionTime: '2025-01-01T00:00:00Z' },
      { type: 'B', status: 'True', reason: 'R', message: '', lastTransitionTime: '2025-01-01T00:00:00Z' },
    ];
    const snapshot = structuredClone(input);
    const out = setCondition(input, { type: 'A', status: 'False', reason: 'X', message: '' }, t0);
    expect(input).toEqual(snapshot);
    expect(out.map((c) => c.type)).toEqual(['A', 'B']);
    expect(isConditionTrue(out, 'A')).toBe(false);
    expect(isConditionTrue(out, 'B')).toBe(true);
    expect(findCondition(removeCondition(out, 'A'), 'A')).toBeUndefined();
  });
});
