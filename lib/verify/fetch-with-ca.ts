/**
 * A fetch that trusts a private CA (the issuer is usually served with the cluster's or Agentfence's own CA),
 * without replacing the process-wide trust store. Enough of fetch for JWKS retrieval and the sidecar's
 * token requests: method, headers, a string body, abort signal.
 */
import type { IncomingHttpHeaders } from 'node:http';

interface RequestOptions {
  method?: string;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** One HTTPS request trusting `caPem`; the whole response body. */
function requestWithCA(
  caPem: string,
  url: string | URL,
  init: RequestOptions,
): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    // node:https at the first call, not at import: the sidecar imports this module and, in static mode, never
    // calls it (tls costs ~7 MB resident).
    const req = process.getBuiltinModule('node:https').request(
      url,
      {
        method: init.method ?? 'GET',
        ca: caPem,
        headers: { accept: 'application/json', ...init.headers },
        ...(init.signal ? { signal: init.signal } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 500, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

export function fetchWithCA(caPem: string): typeof fetch {
  return async (input: string | URL | Request, init?: RequestInit) => {
    const url = typeof input === 'string' || input instanceof URL ? input : input.url;
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, key) => (headers[key] = value));
    const res = await requestWithCA(caPem, url, {
      headers,
      ...(init?.method ? { method: init.method } : {}),
      ...(typeof init?.body === 'string' ? { body: init.body } : {}),
      ...(init?.signal ? { signal: init.signal } : {}),
    });
    const out = new Headers();
    for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') out.set(k, v);
    // Fetch forbids a body on null-body statuses, even an empty one.
    const nullBody = res.status === 204 || res.status === 205 || res.status === 304;
    return new Response(nullBody ? null : res.body, { status: res.status, headers: out });
  };
}

/** The part of a fetch response a JSON API client reads. */
export interface JsonResponse {
  ok: boolean;
  status: number;
  json(): Promise<unknown>;
}

/** A JSON request: what the sidecar's identity client sends (global fetch and fetchWithCA fit it too). */
export type JsonFetch = (url: string, init: RequestOptions & { method: string }) => Promise<JsonResponse>;

/**
 * fetchWithCA for JSON APIs, without the WHATWG Headers and Response classes: touching either loads undici
 * (~13 MB resident), which the sidecar otherwise never needs.
 */
export function jsonFetchWithCA(caPem: string): JsonFetch {
  return async (url, init) => {
    const res = await requestWithCA(caPem, url, init);
    return {
      ok: res.status >= 200 && res.status < 300,
      status: res.status,
      json: () => Promise.resolve().then(() => JSON.parse(res.body.toString('utf8')) as unknown),
    };
  };
}
