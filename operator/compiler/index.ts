export { compile, DEFAULT_DNS, DEFAULT_OPERATOR, DEFAULT_TRUST_DOMAIN, DEFAULT_CLUSTER_DOMAIN } from './compile.ts';
export { BASELINE_NAME, LABEL_POLICY, LABEL_POLICY_NAMESPACE } from './names.ts';
export type * from './types.ts';
