/**
 * The official MCP SDK client, run as its own process so that Node's built-in fetch reads the proxy from the
 * environment (NODE_USE_ENV_PROXY=1, HTTP_PROXY): lists tools, calls the allowed one, then the forbidden one,
 * and prints the outcome of each as one JSON line.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const url = process.argv[2] ?? '';
const client = new Client({ name: 'agentfence-test', version: '1.0.0' });
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
const out: Record<string, unknown> = {};
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
for (const name of ['search_issues', 'delete_repo']) {
  try {
    const result = await client.callTool({ name, arguments: {} });
    out[name] = { ok: true, content: result.content };
  } catch (err) {
    out[name] = { ok: false, error: err instanceof Error ? err.message : String(err) };
  }
}
console.log(JSON.stringify(out));
await client.close();
