/**
 * The sidecar's side of identity. Exchanges the projected service-account token (re-read from disk on every
 * exchange: the kubelet rotates it) for the agent's identity token, refreshes it at half-life with ±10 % jitter
 * (SPIRE's rotation rule), keeps the last good token through controller outages until it expires, and then
 * fails closed: no token, and every caller sees it. Audience-specific tokens are fetched on demand, cached to
 * their own half-life, and single-flighted per audience.
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from '../lib/log.ts';
import type { JsonFetch, JsonResponse } from '../lib/verify/fetch-with-ca.ts';
import { CodedError } from '../lib/errors.ts';

export interface IdentityClientOptions {
  /** The controller's base URL, e.g. https://agentfence-controller.agentfence-system.svc:8443 */
  controllerUrl: string;
  /** The projected service-account token (audience agentfence.io/operator). */
  tokenFile: string;
  /** A fetch that trusts the controller's CA (jsonFetchWithCA, or fetchWithCA, or global fetch). */
  fetch: JsonFetch;
  logger: Logger;
  now?: () => number;
  random?: () => number;
  /** Retry delays after a failed exchange: from min doubling to max. */
  retry?: { minMs: number; maxMs: number };
  /** Called on every failed exchange with its code (a refusal code from the controller, or a local one). */
  onFailure?: (code: string) => void;
}

interface HeldToken {
  token: string;
  issuedAt: number;
  expiresAt: number;
  refreshAt: number;
}

export interface IdentitySnapshot {
  spiffeID: string;
  revision: string;
  expiresAt: number;
  secondsToExpiry: number;
}

interface TokenResponse {
  token: string;
  issuedAt: number;
  expiresAt: number;
  spiffeID?: string;
  revision?: string;
}

export class IdentityError extends CodedError {}

export class IdentityClient {
  private readonly options: IdentityClientOptions;
  private identity: (HeldToken & { spiffeID: string; revision: string }) | undefined;
  private readonly audienceTokens = new Map<string, HeldToken>();
  private readonly inFlight = new Map<string, Promise<string>>();
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private nextRetryAt: number | undefined;
  private firstSuccess: { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } | undefined;
  lastError: string | undefined;
  lastErrorCode: string | undefined;

  constructor(options: IdentityClientOptions) {
    this.options = options;
  }

  private nowSeconds(): number {
    return (this.options.now?.() ?? Date.now()) / 1000;
  }

  /**
   * Starts the refresh loop; resolves after the first successful exchange. Failures are retried by the one
   * refresh schedule (backing off, re-reading the token file each time), never by a second loop.
   */
  start(): Promise<void> {
    this.stopped = false;
    let resolve = (): void => undefined;
    let reject = (_: unknown): void => undefined;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.firstSuccess = { promise, resolve, reject };
    this.refresh().catch(() => undefined); // logged and rescheduled inside refresh
    return promise;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.firstSuccess?.reject(new IdentityError('stopped', 'the identity client was stopped'));
  }

  /** How the last exchanges went, for /status. */
  health(): {
    failures: number;
    lastErrorCode: string | null;
    lastError: string | null;
    nextRetryInSeconds: number | null;
  } {
    const now = this.options.now?.() ?? Date.now();
    return {
      failures: this.failures,
      lastErrorCode: this.lastErrorCode ?? null,
      lastError: this.lastError ?? null,
      nextRetryInSeconds:
        this.failures > 0 && this.nextRetryAt !== undefined ? Math.max(0, (this.nextRetryAt - now) / 1000) : null,
    };
  }

  /** The identity, or undefined once the last good token has expired (fail closed). */
  current(): IdentitySnapshot | undefined {
    const id = this.identity;
    const now = this.nowSeconds();
    if (!id || id.expiresAt <= now) return undefined;
    return {
      spiffeID: id.spiffeID,
      revision: id.revision,
      expiresAt: id.expiresAt,
      secondsToExpiry: id.expiresAt - now,
    };
  }

  /** The issuer of our tokens (`iss` of the identity token the controller gave us over TLS). */
  issuer(): string | undefined {
    const token = this.identityToken();
    if (!token) return undefined;
    try {
      const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
        iss?: unknown;
      };
      return typeof payload.iss === 'string' ? payload.iss : undefined;
    } catch {
      return undefined;
    }
  }

  /** The identity token (audience = the controller) for the controller's own APIs. */
  identityToken(): string | undefined {
    return this.current() ? this.identity?.token : undefined;
  }

  /** Exchanges now and reschedules; on failure the previous token stays in force until it expires. */
  async refresh(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    try {
      let saToken: string;
      try {
        saToken = (await readFile(this.options.tokenFile, 'utf8')).trim();
      } catch {
        throw new IdentityError(
          'token_file_unreadable',
          `cannot read the projected token at ${this.options.tokenFile}`,
        );
      }
      const res = await this.post('/v1/identity', saToken);
      this.identity = { ...this.hold(res), spiffeID: res.spiffeID ?? '', revision: res.revision ?? '' };
      this.failures = 0;
      this.lastError = undefined;
      this.lastErrorCode = undefined;
      this.nextRetryAt = undefined;
      this.firstSuccess?.resolve();
      this.options.logger.info('agent identity refreshed', { spiffeID: res.spiffeID, expiresAt: res.expiresAt });
      this.schedule(this.identity.refreshAt);
    } catch (err) {
      const delay = this.retryDelay();
      this.failures++;
      this.lastError = err instanceof Error ? err.message : String(err);
      this.lastErrorCode = err instanceof IdentityError ? err.code : 'error';
      this.options.onFailure?.(this.lastErrorCode);
      this.options.logger.warn('agent identity refresh failed', {
        reason: this.lastErrorCode,
        error: this.lastError,
        failures: this.failures,
        retryInMs: delay,
        validFor: this.current()?.secondsToExpiry ?? 0,
      });
      if (!this.stopped) {
        this.nextRetryAt = (this.options.now?.() ?? Date.now()) + delay;
        this.scheduleIn(delay);
      }
      throw err;
    }
  }

  /** A token for one destination audience; cached to half-life, refetched when stale, never past expiry. */
  async tokenFor(audience: string): Promise<string> {
    const now = this.nowSeconds();
    const cached = this.audienceTokens.get(audience);
    if (cached && cached.refreshAt > now) return cached.token;
    let pending = this.inFlight.get(audience);
    if (!pending) {
      pending = this.fetchAudienceToken(audience).finally(() => this.inFlight.delete(audience));
      this.inFlight.set(audience, pending);
    }
    try {
      return await pending;
    } catch (err) {
      // A stale-but-valid token beats none while the controller is briefly unreachable.
      if (cached && cached.expiresAt > this.nowSeconds()) return cached.token;
      throw err;
    }
  }

  private async fetchAudienceToken(audience: string): Promise<string> {
    const identity = this.identityToken();
    if (!identity)
      throw new IdentityError('no_identity', 'the agent identity has expired; refusing to mint audience tokens');
    const res = await this.post('/v1/token', identity, { audience });
    this.audienceTokens.set(audience, this.hold(res));
    if (this.audienceTokens.size > 256) this.audienceTokens.delete(this.audienceTokens.keys().next().value ?? '');
    return res.token;
  }

  private hold(res: TokenResponse): HeldToken {
    const life = res.expiresAt - res.issuedAt;
    const jitter = (this.options.random?.() ?? Math.random()) * 0.2 - 0.1; // ±10 %
    return {
      token: res.token,
      issuedAt: res.issuedAt,
      expiresAt: res.expiresAt,
      refreshAt: res.issuedAt + life * (0.5 + jitter),
    };
  }

  private async post(path: string, bearer: string, body?: unknown): Promise<TokenResponse> {
    let res: JsonResponse;
    try {
      res = await this.options.fetch(`${this.options.controllerUrl.replace(/\/$/, '')}${path}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
        body: JSON.stringify(body ?? {}),
        signal: AbortSignal.timeout(10_000),
      });
    } catch {
      throw new IdentityError('controller_unreachable', `cannot reach the controller at ${this.options.controllerUrl}`);
    }
    const payload = (await res.json().catch(() => ({}))) as Partial<TokenResponse> & {
      error?: string;
      message?: string;
    };
    if (!res.ok)
      throw new IdentityError(payload.error ?? `http_${res.status}`, payload.message ?? `HTTP ${res.status}`);
    if (
      typeof payload.token !== 'string' ||
      typeof payload.expiresAt !== 'number' ||
      typeof payload.issuedAt !== 'number'
    ) {
      throw new IdentityError('bad_response', 'the controller answered without a token');
    }
    return payload as TokenResponse;
  }

  private retryDelay(): number {
    const { minMs, maxMs } = this.options.retry ?? { minMs: 1_000, maxMs: 30_000 };
    return Math.min(maxMs, minMs * 2 ** Math.min(this.failures, 16));
  }

  private schedule(atSeconds: number): void {
    this.scheduleIn(Math.max(0, (atSeconds - this.nowSeconds()) * 1000));
  }

  private scheduleIn(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.refresh().catch(() => undefined); // logged and rescheduled inside refresh
    }, ms);
    this.timer.unref();
  }
}
