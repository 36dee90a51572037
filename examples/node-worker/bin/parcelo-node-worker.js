#!/usr/bin/env node
// parcelo-node-worker: run a handler from ../handlers.js (or any module) against a coordinator.
// SIGTERM or SIGINT drains the worker (see README.md) and exits 0.

import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as defaults from '../defaults.js';
import { HANDLERS, SHOULD_PROCESS } from '../handlers.js';
import { runWorker } from '../worker.js';

const USAGE = `usage: parcelo-node-worker --target HOST:PORT --handler NAME [options]

  --target HOST:PORT     coordinator (default: $PARCELO_TARGET or localhost:50051)
  --handler NAME         a handler of handlers.js (${Object.keys(HANDLERS).join(', ')}),
                         or FILE.js:EXPORT for one of your own
  --should-process NAME  answer probes of pruning jobs with a rule of handlers.js
                         (${Object.keys(SHOULD_PROCESS).join(', ')}) or FILE.js:EXPORT (default: keep all)
  --queue Q              queue to take leases from; repeat for several (default: default)
  --concurrency N        handlers running at once (default: ${defaults.CONCURRENCY})
  --prefetch N           leases kept in hand beyond the running ones (default: ${defaults.PREFETCH})
  --worker-id ID         name shown as the holder of its leases (default: host:pid)
  --drain-timeout S      on SIGTERM, seconds running handlers get to finish (default: ${defaults.DRAIN_TIMEOUT_MS / 1000})
  -h, --help             this text`;

/** @param {string} message @returns {never} */
function usage(message) {
  process.stderr.write(`parcelo-node-worker: ${message}\n${USAGE}\n`);
  process.exit(2);
}

/** @param {string | undefined} text @param {string} flag @param {number} min @returns {number | undefined} */
function integer(text, flag, min) {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) usage(`${flag} must be an integer of at least ${min} (got ${text})`);
  return n;
}

/**
 * A function by name from `known`, or FILE.js:EXPORT.
 * @param {string} spec @param {Readonly<Record<string, Function>>} known @param {string} what
 * @returns {Promise<any>}
 */
async function load(spec, known, what) {
  if (Object.hasOwn(known, spec)) return known[spec];
  const at = spec.lastIndexOf(':');
  if (at <= 0)
    usage(`unknown ${what} ${spec}: not one of ${Object.keys(known).join(', ')}, nor FILE.js:EXPORT`);
  const module = await import(pathToFileURL(path.resolve(spec.slice(0, at))).href);
  const handler = module[spec.slice(at + 1)];
  if (typeof handler !== 'function') usage(`${spec}: no function exported under that name`);
  return handler;
}

let args;
try {
  args = parseArgs({
    options: {
      target: { type: 'string' },
      handler: { type: 'string' },
      'should-process': { type: 'string' },
      queue: { type: 'string', multiple: true },
      concurrency: { type: 'string' },
      prefetch: { type: 'string' },
      'worker-id': { type: 'string' },
      'drain-timeout': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (err) {
  usage(/** @type {Error} */ (err).message);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
if (!args.handler) usage('--handler is required');
const drainSeconds = args['drain-timeout'] === undefined ? undefined : Number(args['drain-timeout']);
if (drainSeconds !== undefined && !(drainSeconds >= 0))
  usage(`--drain-timeout must be a number of seconds (got ${args['drain-timeout']})`);

const worker = runWorker({
  target: args.target ?? process.env.PARCELO_TARGET ?? 'localhost:50051',
  handler: await load(args.handler, HANDLERS, 'handler'),
  shouldProcess: args['should-process']
    ? await load(args['should-process'], SHOULD_PROCESS, 'rule')
    : undefined,
  queues: args.queue,
  concurrency: integer(args.concurrency, '--concurrency', 1),
  prefetch: integer(args.prefetch, '--prefetch', 0),
  workerId: args['worker-id'],
  drainTimeoutMs: drainSeconds === undefined ? undefined : drainSeconds * 1000,
});
for (const signal of /** @type {const} */ (['SIGTERM', 'SIGINT'])) {
  process.on(signal, () => {
    worker.log.info(`${signal}: draining`);
    worker.stop();
  });
}
await worker.done;
process.exit(0);
