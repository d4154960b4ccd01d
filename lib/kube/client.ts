/**
 * A small raw-JSON Kubernetes client. client-node's KubeConfig resolves kubeconfig files (certs, tokens, exec
 * plugins); the requests themselves go through node:https with plain JSON, because client-node's typed models turn
 * timestamps into Dates and would not round-trip the objects we read, compare and write back.
 */
import { readFile } from 'node:fs/promises';
import { Agent, request, type RequestOptions } from 'node:https';
import { KubeConfig } from '@kubernetes/client-node';
import type { ObjectMeta } from '../api/meta.ts';
import { sleep } from '../sleep.ts';

/** A resource as the API server names it in URLs; `group` is '' for the core API. */
export interface ResourceRef {
  group: string;
  version: string;
  resource: string;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

export interface KubeList<T extends KubeObject = KubeObject> {
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
export interface WatchEvent {
  type: WatchEventType;
  object: KubeObject | KubeStatus;
}

/** metav1.Status, as the API server returns it in error bodies and in watch ERROR events. */
export interface KubeStatus {
  kind?: 'Status';
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestInit {
  query?: Query;
  body?: unknown;
  contentType?: string;
  /** The Accept header (default JSON); e.g. CONTENT_TYPE.partialMetadata for metadata without data. */
  accept?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A non-2xx answer from the API server; `status` is the HTTP code, `message` the server's own words. */
export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  readonly status: number;
  readonly reason: string | undefined;
  readonly method: string;
  readonly path: string;
  constructor(status: number, reason: string | undefined, message: string, method: string, path: string) {
    super(message);
    this.status = status;
    this.reason = reason;
    this.method = method;
    this.path = path;
  }
}

export const isNotFound = (err: unknown): boolean => err instanceof KubeApiError && err.status === 404;
export const isConflict = (err: unknown): boolean => err instanceof KubeApiError && err.status === 409;
export const isGone = (err: unknown): boolean => err instanceof KubeApiError && err.status === 410;

export const CONTENT_TYPE = {
  json: 'application/json',
  mergePatch: 'application/merge-patch+json',
  jsonPatch: 'application/json-patch+json',
  apply: 'application/apply-patch+yaml',
  /** An object's metadata only (PartialObjectMetadata): a Secret read this way brings no data. */
  partialMetadata: 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1',
} as const;

/** How requests authenticate: TLS material fixed at construction, headers fetched per request (tokens rotate). */
export interface Credentials {
  server: string;
  tls: Pick<RequestOptions, 'ca' | 'cert' | 'key' | 'servername' | 'rejectUnauthorized'>;
  headers(): Promise<Record<string, string>>;
}

/** What a writer needs: requests only (a KubeClient, or a wrapper such as lib/kube/fenced.ts). */
export type WriteClient = Pick<KubeClient, 'request'>;

export class KubeClient {
  readonly server: string;
  readonly #credentials: Credentials;
  readonly #agent: Agent;
  readonly #defaultTimeoutMs: number;

  constructor(credentials: Credentials, options: { requestTimeoutMs?: number } = {}) {
    this.server = credentials.server.replace(/\/+$/, '');
    this.#credentials = credentials;
    this.#agent = new Agent({ keepAlive: true, ...credentials.tls });
    this.#defaultTimeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  get<T>(path: string, query?: Query): Promise<T> {
    return this.request<T>('GET', path, query ? { query } : {});
  }

  /** One page of a LIST; callers page with `limit` and `continue`. */
  list<T extends KubeObject>(path: string, query?: Query): Promise<KubeList<T>> {
    return this.request<KubeList<T>>('GET', path, query ? { query } : {});
  }

  async request<T>(method: string, path: string, init: RequestInit = {}): Promise<T> {
    let res = await this.#send(method, path, init, init.timeoutMs ?? this.#defaultTimeoutMs);
    // 429 (API Priority and Fairness) means the request was refused before it ran, so any method may be retried.
    for (let attempt = 1; res.status === 429 && attempt <= THROTTLE_RETRIES; attempt++) {
      res.stream.resume();
      await sleep(retryAfterMs(res.stream.headers['retry-after']), init.signal);
      res = await this.#send(method, path, init, init.timeoutMs ?? this.#defaultTimeoutMs);
    }
    const text = await readBody(res.stream);
    if (res.status < 200 || res.status > 299) throw toApiError(res.status, text, method, path);
    if (!text) return undefined as T;
    // Some endpoints (/healthz, /readyz, logs) answer text/plain.
    return (res.stream.headers['content-type']?.includes('json') ? JSON.parse(text) : text) as T;
  }

  /**
   * Streams a WATCH: calls `onEvent` for each event and resolves when the server ends the stream (timeoutSeconds,
   * apiserver restart) or `signal` aborts. A non-2xx answer rejects with KubeApiError (410 included).
   */
  async watch(path: string, query: Query, onEvent: (event: WatchEvent) => void, signal?: AbortSignal): Promise<void> {
    // No client-side timeout: a watch lasts as long as the server's timeoutSeconds; staleness is the caller's watchdog.
    const res = await this.#send('GET', path, { query: { ...query, watch: true }, ...(signal ? { signal } : {}) }, 0);
    if (res.status < 200 || res.status > 299) {
      throw toApiError(res.status, await readBody(res.stream), 'WATCH', path);
    }
    let buffered = '';
    res.stream.setEncoding('utf8');
    try {
      for await (const chunk of res.stream) {
        buffered += chunk as string;
        let newline: number;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (line) onEvent(JSON.parse(line) as WatchEvent);
        }
      }
    } catch (err) {
      res.stream.destroy();
      if (signal?.aborted) return;
      throw err;
    }
  }

  close(): void {
    this.#agent.destroy();
  }

  async #send(
    method: string,
    path: string,
    init: RequestInit,
    timeoutMs: number,
  ): Promise<{ status: number; stream: import('node:http').IncomingMessage }> {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(init.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = {
      accept: init.accept ?? CONTENT_TYPE.json,
      ...(await this.#credentials.headers()),
    };
    let payload: string | undefined;
    if (init.body !== undefined) {
      payload = JSON.stringify(init.body);
      headers['content-type'] = init.contentType ?? CONTENT_TYPE.json;
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    return new Promise((resolve, reject) => {
      const req = request(url, {
        method,
        headers,
        agent: this.#agent,
        ...(init.signal ? { signal: init.signal } : {}),
        ...(timeoutMs > 0 ? { timeout: timeoutMs } : {}),
      });
      req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)));
      req.on('error', reject);
      req.on('response', (stream) => resolve({ status: stream.statusCode ?? 0, stream }));
      req.end(payload);
    });
  }
}

const THROTTLE_RETRIES = 3;

/** Retry-After in seconds (the API server sends whole seconds), capped so a caller is never stalled for long. */
export function retryAfterMs(header: string | undefined): number {
  const seconds = Number(header);
  if (!header || !Number.isFinite(seconds) || seconds < 0) return 1000;
  return Math.min(seconds * 1000, 10_000);
}

async function readBody(stream: AsyncIterable<unknown>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function toApiError(status: number, text: string, method: string, path: string): KubeApiError {
  let parsed: KubeStatus | undefined;
  try {
    parsed = JSON.parse(text) as KubeStatus;
  } catch {
    parsed = undefined;
  }
  const message = parsed?.message ?? (text.trim() || `HTTP ${status}`);
  return new KubeApiError(status, parsed?.reason, message, method, path);
}

/** Builds `/api/v1/...` or `/apis/<group>/<version>/...` for a resource, optionally namespaced/named/subresource. */
export function resourcePath(
  ref: ResourceRef,
  where: { namespace?: string | undefined; name?: string | undefined; subresource?: string | undefined } = {},
): string {
  const base = ref.group ? `/apis/${ref.group}/${ref.version}` : `/api/${ref.version}`;
  let path = base;
  if (where.namespace) path += `/namespaces/${encodeURIComponent(where.namespace)}`;
  path += `/${ref.resource}`;
  if (where.name) path += `/${encodeURIComponent(where.name)}`;
  if (where.subresource) path += `/${where.subresource}`;
  return path;
}

export interface ClientOptions {
  requestTimeoutMs?: number;
}

/** A client from a kubeconfig file (current context); supports whatever client-node's KubeConfig supports. */
export async function clientFromKubeconfig(path: string, options: ClientOptions = {}): Promise<KubeClient> {
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error(`kubeconfig ${path} has no current cluster`);
  const probe: RequestOptions = {};
  await kc.applyToHTTPSOptions(probe);
  const tls: Credentials['tls'] = {};
  if (probe.ca) tls.ca = probe.ca;
  if (probe.cert) tls.cert = probe.cert;
  if (probe.key) tls.key = probe.key;
  if (probe.servername) tls.servername = probe.servername;
  if (probe.rejectUnauthorized !== undefined) tls.rejectUnauthorized = probe.rejectUnauthorized;
  const headers = async (): Promise<Record<string, string>> => {
    // Re-evaluated per request so that exec plugins and auth providers can refresh their tokens.
    const opts: RequestOptions = {};
    await kc.applyToHTTPSOptions(opts);
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.headers ?? {})) if (typeof v === 'string') out[k.toLowerCase()] = v;
    if (opts.auth) out.authorization = `Basic ${Buffer.from(opts.auth).toString('base64')}`;
    return out;
  };
  return new KubeClient({ server: cluster.server, tls, headers }, options);
}

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface InClusterConfig extends ClientOptions {
  /** KUBERNETES_SERVICE_HOST / _PORT, read by the entrypoint's config loader and passed in. */
  host: string;
  port: number | string;
  tokenPath?: string;
  caPath?: string;
  /** How long a read token is reused; the kubelet rotates projected tokens well before expiry. */
  tokenCacheMs?: number;
  now?: () => number;
}

/** A client from the pod's service account: bound token (re-read as it rotates) and the cluster CA. */
export async function clientInCluster(config: InClusterConfig): Promise<KubeClient> {
  const tokenPath = config.tokenPath ?? `${SERVICE_ACCOUNT_DIR}/token`;
  const ca = await readFile(config.caPath ?? `${SERVICE_ACCOUNT_DIR}/ca.crt`, 'utf8');
  const cacheMs = config.tokenCacheMs ?? 60_000;
  const now = config.now ?? Date.now;
  let token = (await readFile(tokenPath, 'utf8')).trim();
  let readAt = now();
  const headers = async (): Promise<Record<string, string>> => {
    if (now() - readAt >= cacheMs) {
      try {
        token = (await readFile(tokenPath, 'utf8')).trim();
        readAt = now();
      } catch {
        // Keep the previous token: a transient read failure must not break every request.
      }
    }
    return { authorization: `Bearer ${token}` };
  };
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  return new KubeClient({ server: `https://${host}:${config.port}`, tls: { ca }, headers }, config);
}
