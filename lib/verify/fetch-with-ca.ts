/**
 * A fetch that trusts a private CA (the issuer is usually served with the cluster's or Agentfence's own CA),
 * without replacing the process-wide trust store. Enough of fetch for JWKS retrieval and the sidecar's
 * token requests: method, headers, a string body, abort signal.
 */
export function fetchWithCA(caPem: string): typeof fetch {
  return (input: string | URL | Request, init?: RequestInit) =>
    new Promise<Response>((resolve, reject) => {
      const url = typeof input === 'string' || input instanceof URL ? input : input.url;
      const headers: Record<string, string> = { accept: 'application/json' };
      new Headers(init?.headers).forEach((value, key) => (headers[key] = value));
      const body = typeof init?.body === 'string' ? init.body : undefined;
      // node:https at the first call, not at import: the sidecar imports this module and, in static mode, never
      // calls it (tls costs ~7 MB resident).
      const req = process
        .getBuiltinModule('node:https')
        .request(
          url,
          { method: init?.method ?? 'GET', ca: caPem, headers, ...(init?.signal ? { signal: init.signal } : {}) },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              const out = new Headers();
              for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') out.set(k, v);
              const status = res.statusCode ?? 500;
              // Fetch forbids a body on null-body statuses, even an empty one.
              const body = status === 204 || status === 205 || status === 304 ? null : Buffer.concat(chunks);
              resolve(new Response(body, { status, headers: out }));
            });
            res.on('error', reject);
          },
        );
      req.on('error', reject);
      req.end(body);
    });
}
