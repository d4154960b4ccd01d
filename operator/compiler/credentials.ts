/**
 * A rule's credentials as compiled into the AgentEntitlement: where the value lives (Secret, key), how it goes on
 * the wire (header, format) and which version of the Secret the grant was compiled against. Never the value:
 * AgentEntitlements are readable by many; the value travels only in the entitlement stream to entitled pods
 * (operator/credentials.ts, operator/distribution/hub.ts). The compiler sees which keys a Secret has, not what
 * they hold.
 */
import { createHash } from 'node:crypto';
import { LABEL_CREDENTIAL } from '../../lib/api/constants.ts';
import { isCredentialValue } from '../../lib/credential-value.ts';
import type { Credentials, EntitlementCredentials } from '../../lib/api/types.generated.ts';
import type { ObjectMeta } from '../../lib/api/meta.ts';
import type { Problem } from './types.ts';

/** A Secret labelled agentfence.io/credential=true, as the compiler sees it: metadata and usable keys only. */
export interface CredentialSecretInput {
  metadata: ObjectMeta;
  /** Keys whose value can be sent as a header value (printable, no line breaks; see credentialValue). */
  keys: readonly string[];
}

export const DEFAULT_CREDENTIAL_FORMAT = '{value}';

/**
 * The version of one key of one Secret incarnation: changes on every write of the Secret (its resourceVersion),
 * and tells nothing about the value (a hash of the value would let anyone who reads AgentEntitlements test
 * guesses of a short secret against it).
 */
export function credentialVersion(
  meta: { namespace?: string; name?: string; uid?: string; resourceVersion?: string },
  key: string,
): string {
  const text = [meta.namespace ?? '', meta.name ?? '', meta.uid ?? '', meta.resourceVersion ?? '', key].join('\n');
  return `sha256:${createHash('sha256').update(text).digest('hex').slice(0, 32)}`;
}

/**
 * The header value a Secret's data entry (base64) gives, or undefined when it cannot be one: surrounding
 * whitespace (a trailing newline from `kubectl create secret --from-file`) is dropped; what remains must pass
 * isCredentialValue.
 */
export function credentialValue(base64: string | undefined): string | undefined {
  if (base64 === undefined) return undefined;
  const value = Buffer.from(base64, 'base64').toString('latin1').trim();
  return isCredentialValue(value) ? value : undefined;
}

/** Indexes the labelled Secrets by `namespace/name`. */
export function indexCredentialSecrets(
  secrets: readonly CredentialSecretInput[] | undefined,
): Map<string, CredentialSecretInput> {
  const index = new Map<string, CredentialSecretInput>();
  for (const s of secrets ?? []) {
    if (s.metadata.labels?.[LABEL_CREDENTIAL] !== 'true') continue;
    index.set(`${s.metadata.namespace ?? 'default'}/${s.metadata.name ?? ''}`, s);
  }
  return index;
}

/**
 * The compiled credentials of a rule. A Secret that is missing, not labelled, or lacks a usable key compiles with
 * version '' (the sidecar refuses the rule's requests: credential_unavailable) and is reported as
 * CredentialUnavailable, naming the Secret.
 */
export function resolveCredentials(
  index: {
    credentialSecrets: ReadonlyMap<string, CredentialSecretInput>;
    unlabelledSecrets: ReadonlySet<string>;
  },
  namespace: string,
  ref: Credentials,
  problem: (reason: Problem['reason'], message: string) => void,
): EntitlementCredentials {
  const { name, key } = ref.secretRef;
  const secret = index.credentialSecrets.get(`${namespace}/${name}`);
  const usable = secret?.keys.includes(key) === true;
  if (!secret || !usable) {
    problem(
      'CredentialUnavailable',
      secret
        ? `credentials: Secret ${namespace}/${name} has no usable key ${key} (missing, empty, or not a valid header value); requests under this rule are refused until it does`
        : index.unlabelledSecrets.has(`${namespace}/${name}`)
          ? `credentials: Secret ${namespace}/${name} lacks the label ${LABEL_CREDENTIAL}=true (the controller reads only labelled Secrets); requests under this rule are refused until it has it`
          : `credentials: no Secret ${namespace}/${name} labelled ${LABEL_CREDENTIAL}=true (it is missing or lacks the label); requests under this rule are refused until it exists`,
    );
  }
  return {
    secret: name,
    key,
    header: ref.header.toLowerCase(),
    format: ref.format ?? DEFAULT_CREDENTIAL_FORMAT,
    version: secret && usable ? credentialVersion(secret.metadata, key) : '',
  };
}
