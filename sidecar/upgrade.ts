/**
 * Forwards an admitted protocol upgrade (WebSocket): the canonical request with `Connection: upgrade` to the
 * checked address; on the upstream's 101 both sockets are spliced into a tunnel (audited when it closes);
 * an upstream that declines gets its answer relayed and the connection closed.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { endToEnd } from './canonical.ts';
import { ignore, type Core, type Timing } from './core.ts';
import type { Admission, CanonicalRequest } from './pipeline.ts';
import { writeRawRefusal, type Refusal } from './respond.ts';
import { splice } from './tunnel.ts';

// node:http without its ESM facade (which loads undici): see proxy.ts.
const { request: httpRequest } = process.getBuiltinModule('node:http');

type Allowed = Extract<Admission, { allow: true }>;

/** A response head for a raw socket, from upstream raw headers without hop-by-hop ones (and `drop`). */
function head(status: string, raw: string[], extra: string[], drop?: string): string {
  const kept = endToEnd(raw);
  const lines = [`HTTP/1.1 ${status}`];
  for (let i = 0; i < kept.length; i += 2) if (kept[i] !== drop) lines.push(`${kept[i] ?? ''}: ${kept[i + 1] ?? ''}`);
  return `${[...lines, ...extra].join('\r\n')}\r\n\r\n`;
}

export function forwardUpgrade(
  core: Core,
  client: Duplex,
  clientHead: Buffer,
  request: CanonicalRequest,
  upgrade: string,
  headers: Record<string, string>,
  adm: Allowed,
  t: Timing,
  refusal: (status: number, reason: string, missing: string) => Refusal,
): void {
  const facts = { method: request.method, host: request.host, port: request.port, path: request.path };
  const grant = { decision: adm.decision, reason: adm.reason, rule: adm.rule, revision: adm.revision };
  headers.connection = 'upgrade';
  headers.upgrade = upgrade;
  core.count(adm.decision, adm.reason);
  let answered = false;
  const upstream = httpRequest({
    host: adm.address,
    port: request.port,
    method: request.method,
    path: request.path + request.query,
    headers,
    agent: false,
    setHost: false,
  });
  upstream.on('upgrade', (up: IncomingMessage, socket: Socket, upHead: Buffer) => {
    answered = true;
    socket.on('error', ignore);
    client.write(
      head(`101 ${up.statusMessage || 'Switching Protocols'}`, up.rawHeaders, [
        'connection: upgrade',
        `upgrade: ${up.headers.upgrade ?? ''}`,
      ]),
    );
    if (upHead.length > 0) client.write(upHead);
    if (clientHead.length > 0) socket.write(clientHead);
    splice(core, 'http', client, socket, facts, grant, t, 101, { in: clientHead.length, out: upHead.length });
  });
  upstream.on('response', (up: IncomingMessage) => {
    // The upstream declined the upgrade: relay its answer, delimited by the connection's close.
    answered = true;
    up.on('error', ignore);
    const status = up.statusCode ?? 502;
    client.write(head(`${status} ${up.statusMessage ?? ''}`, up.rawHeaders, ['connection: close'], 'content-length'));
    up.pipe(client);
    up.on('end', () => {
      core.audit(facts, { decision: adm.decision, reason: adm.reason, status }, adm.rule, adm.revision, t);
    });
  });
  upstream.on('error', () => {
    core.upstreamError();
    if (answered) return;
    writeRawRefusal(client, refusal(502, 'upstream_error', `upstream ${request.host}:${request.port} failed`));
    core.audit(facts, { decision: adm.decision, reason: 'upstream_error', status: 502 }, adm.rule, adm.revision, t);
  });
  client.once('close', () => upstream.destroy());
  upstream.end();
}
