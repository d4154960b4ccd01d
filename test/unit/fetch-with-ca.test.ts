/**
 * The sidecar's identity exchange (controller mode) goes through jsonFetchWithCA: it must trust only the given CA,
 * read JSON answers and statuses like fetch, and load no undici (WHATWG Headers/Response would, ~13 MB resident
 * in every sidecar). Run in a child process so that what it loads is its own.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

describe('jsonFetchWithCA', () => {
  it('posts JSON to a server under the given CA, reads answers like fetch, refuses others, loads no undici', async () => {
    const ca = await createCertificateAuthority('test-ca', 1);
    const server = await issueCertificate(ca, {
      commonName: 'localhost',
      ipAddresses: ['127.0.0.1'],
      usage: 'server',
      validityDays: 1,
    });
    const other = await createCertificateAuthority('other-ca', 1);
    const script = `
      const { jsonFetchWithCA } = await import(${JSON.stringify(new URL('lib/verify/fetch-with-ca.ts', `file://${root}/`).href)});
      const { createServer } = process.getBuiltinModule('node:https');
      const [caPem, certPem, keyPem, otherCa] = JSON.parse(process.argv[1]);
      const srv = createServer({ cert: certPem, key: keyPem }, (req, res) => {
        let body = '';
        req.on('data', (c) => (body += c));
        req.on('end', () => {
          const status = req.url === '/fail' ? 401 : 200;
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ method: req.method, auth: req.headers.authorization, got: JSON.parse(body) }));
        });
      });
      await new Promise((r) => srv.listen(0, '127.0.0.1', r));
      const base = 'https://127.0.0.1:' + srv.address().port;
      const init = { method: 'POST', headers: { authorization: 'Bearer t', 'content-type': 'application/json' }, body: '{"a":1}', signal: AbortSignal.timeout(5000) };
      const ok = await jsonFetchWithCA(caPem)(base + '/ok', init);
      const fail = await jsonFetchWithCA(caPem)(base + '/fail', init);
      const untrusted = await jsonFetchWithCA(otherCa)(base + '/ok', init).then(() => 'accepted', (e) => e.code ?? 'refused');
      srv.close();
      process.stdout.write(JSON.stringify({
        ok: { ok: ok.ok, status: ok.status, json: await ok.json() },
        fail: { ok: fail.ok, status: fail.status },
        untrusted,
        undici: process.moduleLoadList.filter((m) => m.includes('undici')),
      }));
    `;
    const pems = JSON.stringify([ca.certPem, server.certPem, server.keyPem, other.certPem]);
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script, pems], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(JSON.parse(out)).toEqual({
      ok: { ok: true, status: 200, json: { method: 'POST', auth: 'Bearer t', got: { a: 1 } } },
      fail: { ok: false, status: 401 },
      untrusted: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
      undici: [],
    });
  });
});
