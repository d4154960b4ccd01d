/**
 * The token exchange: a sidecar's projected service-account token in, an agent token out — only after the API
 * server confirms the token (TokenReview with our audience), the token is bound to a pod, and that pod is the
 * live, injected agent pod it claims to be. Modelled on SPIRE's k8s_psat attestor and istiod's CA.
 */
import { createHash } from 'node:crypto';
import {
  ANNOTATION_INJECTED,
  LABEL_AGENT,
  LABEL_INJECT,
  OPERATOR_AUDIENCE,
  TOKEN_TTL_DEFAULT_SECONDS,
} from '../../lib/api/constants.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import type { Pod, PodSpec } from '../../lib/kube/pod.ts';
import { agentSpiffeId } from '../../lib/identity/claims.ts';
import type { AgentIdentity, AgentVerifier } from '../../lib/verify/index.ts';
import type { IssuedToken, TokenIssuer } from './issuer.ts';
import { parseDurationSeconds } from '../../lib/api/duration.ts';
import { CodedError } from '../../lib/errors.ts';
import { fenceChecker } from '../../webhook/fence.ts';
import type { InjectorConfig } from '../../webhook/inject.ts';
import { ReviewGuard, SkippedReview, type ReviewGuardOptions, type SkipReason } from './review-guard.ts';

export { ANNOTATION_INJECTED, OPERATOR_AUDIENCE };

export type RefusalCode =
  | 'missing_token'
  | 'token_invalid'
  | 'wrong_audience'
  | 'not_a_service_account'
  | 'not_pod_bound'
  | 'pod_not_found'
  | 'pod_uid_mismatch'
  | 'pod_terminating'
  | 'pod_not_injected'
  | 'pod_not_fenced'
  | 'service_account_mismatch'
  | 'invalid_agent_label'
  | 'entitlement_pending'
  | 'audience_not_entitled'
  | 'invalid_request'
  | 'rate_limited'
  | 'review_unavailable';

const STATUS: Record<RefusalCode, number> = {
  missing_token: 401,
  token_invalid: 401,
  wrong_audience: 401,
  not_a_service_account: 403,
  not_pod_bound: 403,
  pod_not_found: 403,
  pod_uid_mismatch: 403,
  pod_terminating: 403,
  pod_not_injected: 403,
  pod_not_fenced: 403,
  service_account_mismatch: 403,
  invalid_agent_label: 403,
  entitlement_pending: 503,
  audience_not_entitled: 403,
  invalid_request: 400,
  rate_limited: 429,
  review_unavailable: 503,
};

export class Refusal extends CodedError<RefusalCode> {
  get status(): number {
    return STATUS[this.code];
  }
}

export interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
}

/** The exchange's view of the one Pod type (lib/kube/pod.ts): what a token's pod is checked against. */
export interface PodIdentity extends Pick<Pod, 'metadata'> {
  spec?: Pick<PodSpec, 'serviceAccountName' | 'nodeName'> & { [field: string]: unknown };
}

/** What the exchange needs from the cluster; the operator backs it with the API server and its caches. */
export interface IdentityCluster {
  reviewToken(token: string, audiences: string[]): Promise<TokenReviewStatus>;
  getPod(namespace: string, name: string): Promise<PodIdentity | undefined>;
  getEntitlement(namespace: string, podName: string): Promise<AgentEntitlement | undefined>;
}

export interface ReviewedSubject {
  namespace: string;
  serviceAccount: string;
  podName: string;
  podUID: string;
}

/** Checks a TokenReview result: authenticated for our audience, a service account, bound to exactly one pod. */
export function subjectFromReview(status: TokenReviewStatus, audience: string): ReviewedSubject {
  if (!status.authenticated) {
    // The API server checks audiences and the bound object itself before it authenticates; keep its verdict
    // specific. Its error text names audiences and objects, never the token.
    const error = status.error ?? '';
    if (/audience/i.test(error)) throw new Refusal('wrong_audience', `the token is not for audience ${audience}`);
    if (/UID|recreated/i.test(error)) {
      throw new Refusal('pod_uid_mismatch', 'the token belongs to an earlier pod of the same name');
    }
    throw new Refusal('token_invalid', `the API server did not authenticate the token${error ? `: ${error}` : ''}`);
  }
  // An audience-unaware API server would echo nothing: refuse rather than assume.
  if (!status.audiences?.includes(audience)) {
    throw new Refusal('wrong_audience', `the token is not for audience ${audience}`);
  }
  const username = status.user?.username ?? '';
  const parts = username.split(':');
  if (parts.length !== 4 || parts[0] !== 'system' || parts[1] !== 'serviceaccount' || !parts[2] || !parts[3]) {
    throw new Refusal('not_a_service_account', 'the token does not belong to a service account');
  }
  if (!status.user?.groups?.includes('system:serviceaccounts')) {
    throw new Refusal('not_a_service_account', 'the token does not belong to a service account');
  }
  const extra = status.user.extra ?? {};
  const podNames = extra['authentication.kubernetes.io/pod-name'] ?? [];
  const podUIDs = extra['authentication.kubernetes.io/pod-uid'] ?? [];
  if (podNames.length !== 1 || podUIDs.length !== 1 || !podNames[0] || !podUIDs[0]) {
    throw new Refusal('not_pod_bound', 'the token is not bound to a pod (use the projected token the sidecar mounts)');
  }
  return { namespace: parts[2], serviceAccount: parts[3], podName: podNames[0], podUID: podUIDs[0] };
}

const AGENT_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** Checks the live pod against the reviewed token; returns the agent name. */
export function checkPod(pod: PodIdentity | undefined, subject: ReviewedSubject): string {
  if (!pod) throw new Refusal('pod_not_found', `pod ${subject.namespace}/${subject.podName} does not exist`);
  if (pod.metadata.uid !== subject.podUID) {
    throw new Refusal(
      'pod_uid_mismatch',
      `pod ${subject.namespace}/${subject.podName} was replaced; the token belongs to an earlier pod`,
    );
  }
  if (pod.metadata.deletionTimestamp) throw new Refusal('pod_terminating', 'the pod is terminating');
  if (pod.metadata.labels?.[LABEL_INJECT] !== 'true' || !pod.metadata.annotations?.[ANNOTATION_INJECTED]) {
    throw new Refusal('pod_not_injected', 'the pod is not an injected agent pod');
  }
  if ((pod.spec?.serviceAccountName ?? 'default') !== subject.serviceAccount) {
    throw new Refusal('service_account_mismatch', 'the pod runs as another service account');
  }
  const agent = pod.metadata.labels[LABEL_AGENT] ?? subject.serviceAccount;
  if (!AGENT_NAME.test(agent)) throw new Refusal('invalid_agent_label', `agent name '${agent}' is not a DNS label`);
  return agent;
}

/**
 * The live pod must carry the sidecar exactly as this controller injects it (webhook/fence.ts renders it again
 * and compares): a label or annotation added later, a swapped sidecar image or an ephemeral container is refused.
 */
export function checkFenced(pod: PodIdentity | undefined, fenced: (pod: unknown) => string | undefined): void {
  const problem = fenced(pod);
  if (problem) throw new Refusal('pod_not_fenced', `the pod is not fenced as injected: ${problem}`);
}

export interface ExchangeOptions {
  cluster: IdentityCluster;
  issuer: TokenIssuer;
  /** Verifies our own agent tokens (for audience-specific token requests). */
  selfVerifier: AgentVerifier;
  /** `iss` of our tokens, also the audience of the sidecar's own identity token. */
  issuerUrl: string;
  trustDomain: string;
  /** The injector configuration: an identity only for a pod whose live spec carries the sidecar exactly as injected. */
  injector: InjectorConfig;
  /** Earlier injector configurations whose pods are still accepted (while agent workloads roll to a new sidecar). */
  acceptedInjectors?: readonly InjectorConfig[];
  reviewCacheMs?: number;
  /** Token bucket per pod: burst and refill per second. */
  rateLimit?: { burst: number; perSecond: number };
  /** Shape check, negative cache and rate limits in front of the TokenReview (see review-guard.ts). */
  reviewGuard?: Omit<ReviewGuardOptions, 'audience' | 'now'>;
  /** Called once per presented token that missed the positive cache: reviewed, or why not. */
  onReview?: (outcome: 'reviewed' | 'review_failed' | SkipReason) => void;
  now?: () => number;
}

export interface ExchangeResult extends IssuedToken {
  spiffeID: string;
  revision: string;
  /** Seconds after which the sidecar should refresh (half-life; the client adds jitter). */
  refreshAfterSeconds: number;
}

interface CachedReview {
  subject: ReviewedSubject;
  until: number;
}

export class IdentityExchange {
  private readonly options: ExchangeOptions;
  private readonly reviews = new Map<string, CachedReview>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly fenced: (pod: unknown) => string | undefined;
  private readonly guard: ReviewGuard;
  private readonly inFlight = new Map<string, Promise<ReviewedSubject>>();

  constructor(options: ExchangeOptions) {
    this.options = options;
    this.fenced = fenceChecker(options.injector, options.acceptedInjectors);
    this.guard = new ReviewGuard({
      ...options.reviewGuard,
      audience: OPERATOR_AUDIENCE,
      now: () => this.now(),
    });
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  /** POST /v1/identity: projected service-account token → the agent's identity token (aud = the issuer). */
  async exchange(serviceAccountToken: string | undefined, source?: string): Promise<ExchangeResult> {
    if (!serviceAccountToken)
      throw new Refusal('missing_token', 'send the projected service-account token as a Bearer token');
    const subject = await this.review(serviceAccountToken, source);
    this.takeToken(subject.podUID);
    return this.issueFor(subject, this.options.issuerUrl);
  }

  /** POST /v1/token: the sidecar's identity token → a token for one destination audience it is entitled to. */
  async tokenFor(identityToken: string | undefined, audience: unknown): Promise<ExchangeResult> {
    if (
      typeof audience !== 'string' ||
      audience.length === 0 ||
      audience.length > 256 ||
      !/^[\x21-\x7e]+$/.test(audience)
    ) {
      throw new Refusal(
        'invalid_request',
        'audience must be a non-empty string of at most 256 visible ASCII characters',
      );
    }
    let identity: AgentIdentity;
    try {
      identity = await this.options.selfVerifier.verify(identityToken);
    } catch (err) {
      throw new Refusal(
        identityToken ? 'token_invalid' : 'missing_token',
        err instanceof Error ? err.message : 'invalid identity token',
      );
    }
    if (identity.audience !== this.options.issuerUrl)
      throw new Refusal('wrong_audience', 'present the identity token from /v1/identity');
    this.takeToken(identity.pod.uid);
    const subject: ReviewedSubject = {
      namespace: identity.namespace,
      serviceAccount: identity.serviceAccount,
      podName: identity.pod.name,
      podUID: identity.pod.uid,
    };
    return this.issueFor(subject, audience);
  }

  private async issueFor(subject: ReviewedSubject, audience: string): Promise<ExchangeResult> {
    const { cluster, issuer, issuerUrl, trustDomain } = this.options;
    const pod = await cluster.getPod(subject.namespace, subject.podName);
    const agent = checkPod(pod, subject);
    checkFenced(pod, this.fenced);
    const entitlement = await cluster.getEntitlement(subject.namespace, subject.podName);
    if (!entitlement || entitlement.spec.podUID !== subject.podUID) {
      throw new Refusal(
        'entitlement_pending',
        'the operator has not compiled this pod’s entitlements yet; retry shortly',
      );
    }
    // A destination audience the pod's rules name, or the identity of an agent its rules reach (peers).
    const entitled = entitlement.spec.egress?.some(
      (rule) => rule.audience === audience || rule.peers?.some((p) => p.spiffeID === audience),
    );
    if (audience !== issuerUrl && !entitled) {
      throw new Refusal('audience_not_entitled', `no entitlement of this pod names audience ${audience}`);
    }
    const ttlSeconds = parseDurationSeconds(entitlement.spec.tokenTTL) ?? TOKEN_TTL_DEFAULT_SECONDS;
    const issued = await issuer.issue({
      namespace: subject.namespace,
      agent,
      podName: subject.podName,
      podUID: subject.podUID,
      serviceAccountName: subject.serviceAccount,
      ...(pod?.spec?.nodeName ? { nodeName: pod.spec.nodeName } : {}),
      revision: entitlement.spec.revision,
      audience,
      ttlSeconds,
    });
    return {
      ...issued,
      spiffeID: agentSpiffeId(trustDomain, subject.namespace, agent),
      revision: entitlement.spec.revision,
      refreshAfterSeconds: Math.max(1, Math.floor((issued.expiresAt - issued.issuedAt) / 2)),
    };
  }

  /**
   * TokenReview, cached briefly by token hash so a burst of pod starts does not stampede the API server; one
   * review per token at a time; and in front of it the guard (shape, negative cache, rate limits), so invalid
   * tokens cost the API server (almost) nothing.
   */
  private async review(token: string, source?: string): Promise<ReviewedSubject> {
    const key = createHash('sha256').update(token).digest('hex');
    const now = this.now();
    const cached = this.reviews.get(key);
    if (cached && cached.until > now) return cached.subject;
    const pending = this.inFlight.get(key);
    if (pending) return pending;
    try {
      this.guard.admit(token, key, source);
    } catch (err) {
      if (!(err instanceof SkippedReview)) throw err;
      this.options.onReview?.(err.reason);
      throw err.refusal;
    }
    const review = this.reviewOnce(token, key).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, review);
    return review;
  }

  private async reviewOnce(token: string, key: string): Promise<ReviewedSubject> {
    let status: TokenReviewStatus;
    try {
      status = await this.options.cluster.reviewToken(token, [OPERATOR_AUDIENCE]);
      this.options.onReview?.('reviewed');
    } catch {
      this.options.onReview?.('review_failed');
      throw new Refusal('review_unavailable', 'the API server could not review the token; retry shortly');
    }
    let subject: ReviewedSubject;
    try {
      subject = subjectFromReview(status, OPERATOR_AUDIENCE);
    } catch (err) {
      if (err instanceof Refusal) this.guard.remember(key, err);
      throw err;
    }
    const now = this.now();
    if (this.reviews.size >= 10_000) {
      for (const [k, v] of this.reviews) if (v.until <= now || this.reviews.size >= 10_000) this.reviews.delete(k);
    }
    this.reviews.set(key, { subject, until: now + (this.options.reviewCacheMs ?? 30_000) });
    return subject;
  }

  private takeToken(podUID: string): void {
    const { burst, perSecond } = this.options.rateLimit ?? { burst: 20, perSecond: 5 };
    const now = this.now();
    const bucket = this.buckets.get(podUID) ?? { tokens: burst, at: now };
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * perSecond);
    bucket.at = now;
    if (bucket.tokens < 1) throw new Refusal('rate_limited', 'too many token requests from this pod; slow down');
    bucket.tokens -= 1;
    this.buckets.set(podUID, bucket);
    if (this.buckets.size > 50_000) this.buckets.delete(this.buckets.keys().next().value ?? '');
  }
}
