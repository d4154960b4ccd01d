/** The entitlement-integrity policy embeds usernames in CEL: anything that could break out of the string is refused. */
import { describe, expect, it } from 'vitest';
import { CONTROL_PLANE_DELETERS, entitlementIntegrityPolicy } from '../../webhook/manifests.ts';

const expression = (p: Record<string, unknown>): string =>
  (p.spec as { validations: { expression: string }[] }).validations[0]?.expression ?? '';

describe('entitlementIntegrityPolicy', () => {
  it('admits the controller for everything and the control plane only for DELETE', () => {
    const e = expression(entitlementIntegrityPolicy({ controller: 'system:serviceaccount:af:ctrl' }));
    expect(e).toBe(
      `request.userInfo.username == 'system:serviceaccount:af:ctrl' || (request.operation == 'DELETE' && request.userInfo.username in [${CONTROL_PLANE_DELETERS.map((d) => `'${d}'`).join(', ')}])`,
    );
  });

  it.each(["x' || true || '", 'a"b', 'a\\b', '', 'a b', 'x'.repeat(254)])(
    'refuses the username %j with an error naming it',
    (bad) => {
      expect(() => entitlementIntegrityPolicy({ controller: bad })).toThrow(/invalid Kubernetes username/);
      expect(() => entitlementIntegrityPolicy({ controller: 'ok', deleters: [bad] })).toThrow(
        /invalid Kubernetes username/,
      );
    },
  );
});
