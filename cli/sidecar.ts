import type { CommandContext } from './main.ts';
import { createLogger, isLogLevel, type LogLevel } from '../lib/log.ts';
import { parseDurationFlag, parseListen } from './flags.ts';
import { startSidecar, type SidecarConfig } from '../sidecar/runtime.ts';
import { parseGates } from '../lib/inbound/gates.ts';

const HELP = `Usage: agentfence sidecar [flags]

The egress fence: a deny-by-default forward proxy (plain HTTP and CONNECT) that enforces the pod's
entitlements, carries the agent's identity to entitled destinations, and writes one JSON audit line per
decision on stdout (logs go to stderr).

Static mode (no controller: a VM, a laptop, benchmarks):
  --entitlements FILE        an AgentEntitlement (YAML or JSON, as 'agentfence render' prints it); re-read on change
Controller mode (what the webhook injects):
  --controller URL           the controller, e.g. https://agentfence-controller.agentfence-system.svc
  --token-file PATH          the projected service-account token (audience agentfence.io/operator)
  --ca-file PATH             CA bundle to verify the controller
  --max-staleness DURATION   deny everything without a snapshot for this long (default 60s)
Both:
  --listen HOST:PORT         proxy address (default 127.0.0.1:15001)
  --admin-listen HOST:PORT   /healthz /readyz /status /metrics (default 0.0.0.0:15020)
  --trust-bundle-dir DIR     where the trust bundle (public roots + the pod's interception CA) is written for
                             the app containers; the CA key itself never leaves memory (default: not written)
  --log-level LEVEL          debug | info | warn | error (default info)
  --inbound GATE:PORT,...    inbound gates: listen on GATE (all addresses), verify callers, forward to the
                             app on 127.0.0.1:PORT (the webhook sets this from the app's container ports)
`;

// node:util without its ESM facade: reading all of util's exports loads ~30 more internal modules.
const { parseArgs } = process.getBuiltinModule('node:util');

export function loadSidecarConfig(
  argv: string[],
  env: CommandContext['env'],
): { config: SidecarConfig; logLevel: LogLevel } | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      entitlements: { type: 'string' },
      controller: { type: 'string' },
      'token-file': { type: 'string' },
      'ca-file': { type: 'string' },
      'max-staleness': { type: 'string', default: '60s' },
      listen: { type: 'string', default: '127.0.0.1:15001' },
      'admin-listen': { type: 'string', default: '0.0.0.0:15020' },
      'log-level': { type: 'string', default: 'info' },
      'trust-bundle-dir': { type: 'string' },
      inbound: { type: 'string', default: '' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const logLevel = values['log-level'];
  if (!isLogLevel(logLevel)) throw new Error(`--log-level must be one of debug, info, warn, error (got '${logLevel}')`);
  let mode: SidecarConfig['mode'];
  if (values.entitlements) {
    if (values.controller) throw new Error('--entitlements (static mode) and --controller are mutually exclusive');
    mode = { kind: 'static', file: values.entitlements };
  } else if (values.controller) {
    if (!values['token-file'] || !values['ca-file'])
      throw new Error('controller mode needs --token-file and --ca-file');
    if (!/^https:\/\//.test(values.controller))
      throw new Error(`--controller must be an https:// URL (got '${values.controller}')`);
    mode = {
      kind: 'controller',
      controllerUrl: values.controller,
      tokenFile: values['token-file'],
      caFile: values['ca-file'],
    };
  } else throw new Error('pass --entitlements FILE (static mode) or --controller URL (controller mode)');
  const gates = parseGates(values.inbound);
  if (!Array.isArray(gates)) throw new Error(gates.error);
  const maxStalenessSeconds = parseDurationFlag('--max-staleness', values['max-staleness']);
  if (maxStalenessSeconds < 5) throw new Error('--max-staleness must be at least 5s (heartbeats come every 15s)');
  return {
    logLevel,
    config: {
      listen: parseListen('--listen', values.listen),
      adminListen: parseListen('--admin-listen', values['admin-listen']),
      mode,
      ...(gates.length > 0 ? { inbound: { host: '0.0.0.0', gates } } : {}),
      maxStalenessMs: maxStalenessSeconds * 1000,
      pod: { name: env.POD_NAME ?? '', namespace: env.POD_NAMESPACE ?? '' },
      ...(values['trust-bundle-dir'] ? { trustBundleDir: values['trust-bundle-dir'] } : {}),
    },
  };
}

export async function sidecarCommand(ctx: CommandContext): Promise<number> {
  const loaded = loadSidecarConfig(ctx.argv, ctx.env);
  if (loaded === 'help') {
    ctx.stdout(HELP);
    return 0;
  }
  const logger = createLogger({ level: loaded.logLevel, fields: { component: 'sidecar' } });
  const running = await startSidecar(loaded.config, logger);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  logger.info('sidecar stopping', { signal });
  await running.stop();
  return 0;
}
