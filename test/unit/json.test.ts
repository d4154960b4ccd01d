import { describe, expect, it } from 'vitest';
import { deepEqual, mergePatch } from '../../lib/kube/json.ts';

describe('deepEqual', () => {
  it.each([
    [{ a: 1, b: [1, 2] }, { b: [1, 2], a: 1 }, true],
    [{ a: 1 }, { a: 1, b: undefined }, true],
    [{ a: 1 }, { a: 1, b: null }, false],
    [[1, 2], [2, 1], false],
    [{ a: { b: 'x' } }, { a: { b: 'y' } }, false],
    [undefined, {}, false],
    [1, '1', false],
  ])('%j vs %j → %s', (a, b, equal) => {
    expect(deepEqual(a, b)).toBe(equal);
  });
});

describe('mergePatch', () => {
  it('is undefined when nothing changed', () => {
    expect(mergePatch({ a: { b: [1] } }, { a: { b: [1] } })).toBeUndefined();
  });

  it('nulls removed members, recurses into objects and replaces arrays whole', () => {
    expect(mergePatch({ a: 1, b: { c: 1, d: 2 }, e: [1, 2] }, { b: { c: 1, d: 3 }, e: [1], f: 'new' })).toEqual({
      a: null,
      b: { d: 3 },
      e: [1],
      f: 'new',
    });
  });
});
