/**
 * `agentfence/api`: the AgentPolicy and AgentEntitlement types and the names every component shares, for
 * code that writes policies or reads entitlements.
 */
export * from './constants.ts';
export type * from './types.generated.ts';
