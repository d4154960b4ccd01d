/**
 * An example resource server: an internal orders API that accepts only the support agent of one namespace. It
 * verifies the caller's agent token against the Agentfence JWKS with `agentfence/verify` — it does not trust the
 * network, the sidecar or the caller, only the signature — and allows callers by full SPIFFE ID (an agent name
 * alone would accept that name from every namespace).
 *
 *   node examples/resource-server/orders-api.ts --issuer https://agentfence-controller.agentfence-system.svc:8443 \
 *     --audience orders-api.commerce --allow spiffe://cluster.local/ns/support/agent/support-agent \
 *     --listen 127.0.0.1:8080 [--ca ca.pem]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import express, { type Express } from 'express';
import { createAgentVerifier, type AgentVerifier } from '../../lib/verify/index.ts';
import { agentOf, requireAgent, type AllowedAgent } from '../../lib/verify/express.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';

export function createOrdersApi(verifier: AgentVerifier, allowAgents: readonly AllowedAgent[]): Express {
  const app = express();
  app.use(requireAgent(verifier, { allowAgents }));
  app.get('/v1/orders/:id', (req, res) => {
    const caller = agentOf(res);
    res.json({ order: req.params.id, status: 'shipped', servedTo: caller.sub, pod: caller.pod.name });
  });
  return app;
}

if (import.meta.url === `file://${process.argv[1] ?? ''}`) {
  const { values } = parseArgs({
    options: {
      issuer: { type: 'string' },
      audience: { type: 'string' },
      allow: { type: 'string', multiple: true },
      listen: { type: 'string', default: '127.0.0.1:8080' },
      ca: { type: 'string' },
    },
  });
  if (!values.issuer || !values.audience || !values.allow?.length) {
    console.error(
      'usage: orders-api.ts --issuer URL --audience AUD --allow spiffe://TD/ns/NS/agent/NAME... [--listen HOST:PORT] [--ca FILE]',
    );
    process.exit(2);
  }
  const verifier = createAgentVerifier({
    issuer: values.issuer,
    audience: values.audience,
    ...(values.ca ? { fetch: fetchWithCA(readFileSync(values.ca, 'utf8')) } : {}),
  });
  const [host = '127.0.0.1', port = '8080'] = values.listen.split(':');
  createOrdersApi(verifier, values.allow).listen(Number(port), host);
}
