/** A raw JSON request to the test API server as admin (or with a bearer token). */
import { request } from 'node:https';
import { cluster } from './cluster.ts';

export function kubeRequest(
  method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH',
  path: string,
  body?: unknown,
  bearerToken?: string,
): Promise<{ status: number; body: unknown }> {
  const c = cluster();
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (payload) headers['content-type'] = method === 'PATCH' ? 'application/merge-patch+json' : 'application/json';
    if (bearerToken) headers.authorization = `Bearer ${bearerToken}`;
    const req = request(
      `${c.server}${path}`,
      { method, ca: c.caPem, ...(bearerToken ? {} : { cert: c.admin.certPem, key: c.admin.keyPem }), headers },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
