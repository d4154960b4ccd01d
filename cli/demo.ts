import { parseArgs } from 'node:util';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { CommandContext } from './main.ts';
import { resolveBinaries, resolveNodeBinDir } from '../localcluster/binaries.ts';
import { nodeBinariesIn, nodeUnsupportedReason } from '../localcluster/node.ts';
import { runDemo } from '../localcluster/demo.ts';
import { createLogger, isLogLevel } from '../lib/log.ts';

const HELP = `Usage: agentfence demo [flags]

Runs Agentfence end to end on the built-in local control plane and narrates it: webhook injection, identity
exchange, an allowed call with the verified identity at the upstream, denied calls with their 403 reason,
kubectl get ap,ae,netpol, audit lines, and a live policy edit. Then waits for Ctrl-C and cleans up.

Flags:
  --node              run the agents as real pods on a local node (root only; see local-cluster --node): the
                      kubelet runs the injected sidecar container and the calls go through it
  --kubeconfig PATH   also write the admin kubeconfig here (must not exist yet)
  --once              exit after the narration instead of waiting for Ctrl-C
  --no-build          fail instead of building missing binaries
  --log-level LEVEL   component logs on stderr (default warn)
`;

export async function demoCommand(ctx: CommandContext): Promise<number> {
  const { values } = parseArgs({
    args: ctx.argv,
    strict: true,
    options: {
      kubeconfig: { type: 'string' },
      once: { type: 'boolean', default: false },
      node: { type: 'boolean', default: false },
      'no-build': { type: 'boolean', default: false },
      'log-level': { type: 'string', default: 'warn' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    ctx.stdout(HELP);
    return 0;
  }
  const level = values['log-level'];
  if (!isLogLevel(level)) throw new Error(`--log-level must be one of debug, info, warn, error (got '${level}')`);
  if (values.node) {
    const reason = nodeUnsupportedReason();
    if (reason) throw new Error(`--node: ${reason}`);
  }
  const config = {
    cacheDir: ctx.env.AGENTFENCE_CACHE ?? join(homedir(), '.cache', 'agentfence'),
    build: !values['no-build'],
    ...(ctx.env.KUBEBUILDER_ASSETS ? { assetsDir: ctx.env.KUBEBUILDER_ASSETS } : {}),
  };
  const binaries = await resolveBinaries(config);
  const nodeBinaries = values.node ? nodeBinariesIn(await resolveNodeBinDir(config)) : undefined;
  const until = values.once
    ? undefined
    : new Promise((done) => {
        process.once('SIGINT', done);
        process.once('SIGTERM', done);
      });
  await runDemo({
    binaries,
    ...(nodeBinaries ? { nodeBinaries } : {}),
    ...(until ? { until } : {}),
    out: (line) => ctx.stdout(`${line}\n`),
    logger: createLogger({ level, fields: { component: 'demo' } }),
    ...(values.kubeconfig ? { kubeconfigPath: resolve(values.kubeconfig) } : {}),
  });
  return 0;
}
