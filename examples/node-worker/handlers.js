// Handlers the CLI runs by name (--handler NAME): `count`, a demo to copy from, and the ones
// Parcelo's integration tests use (tests/test_node_worker.py), which mirror tests/handlers.py.
//
// A handler is `async (range, ctx) => {}`: `range.start`/`range.end` are BigInt, the range is
// [ctx.cursor, leaf end) when an earlier attempt checkpointed. Resolving completes the leaf, and
// the value it resolves to is the leaf's result for jobs with a reduce (JSON; BigInt allowed);
// throwing fails the attempt (retried while attempts remain; PermanentError: never).

import { closeSync, openSync, writeSync } from 'node:fs';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { PermanentError } from './errors.js';

/** @typedef {import('./context.js').Range} Range @typedef {import('./context.js').Context} Context */

/**
 * @param {any} params
 * @param {string} name
 * @returns {any}
 */
function param(params, name) {
  return params !== null && typeof params === 'object' ? params[name] : undefined;
}

/** @param {bigint} n @returns {boolean} */
function isPrime(n) {
  if (n < 2n) return false;
  if (n % 2n === 0n) return n === 2n;
  for (let d = 3n; d * d <= n; d += 2n) if (n % d === 0n) return false;
  return true;
}

/**
 * The demo: counts the primes of the leaf and returns the count, a BigInt (params `{"mode": "sum"}`:
 * adds the ids up instead); a job with reduce sum adds the leaves' counts up,
 * in chunks of params.chunk ids (default 1000). After each chunk it checkpoints the cursor with the
 * running total as details, so a retry resumes where the last attempt got to and with its total,
 * yields to the event loop (heartbeats must go out: a handler that never awaits blocks them), and
 * stops if the coordinator said so.
 *
 * @param {Range} range
 * @param {Context} ctx
 */
export async function count(range, ctx) {
  const mode = param(ctx.params, 'mode') === 'sum' ? 'sum' : 'primes';
  const chunk = BigInt(param(ctx.params, 'chunk') ?? 1000);
  if (chunk < 1n) throw new PermanentError(`params.chunk must be at least 1 (got ${chunk})`);
  let total = ctx.details ? BigInt(ctx.details.toString()) : 0n;
  for (let at = range.start; at < range.end;) {
    ctx.signal.throwIfAborted();
    const stop = at + chunk < range.end ? at + chunk : range.end;
    for (let n = at; n < stop; n++) total += mode === 'sum' ? n : isPrime(n) ? 1n : 0n;
    at = stop;
    ctx.checkpoint(at, String(total));
    ctx.progress(`${mode}: ${total} below ${at}`);
    await yieldToLoop();
  }
  process.stdout.write(`${ctx.jobId} [${ctx.leaf.start}, ${ctx.leaf.end}) ${mode} ${total}\n`);
  return total;
}

/**
 * One line `event start end attempt pid` appended to the file PARCELO_TEST_LOG names, in one
 * O_APPEND write, so that worker processes sharing the file never interleave (tests/handlers.py's
 * _log); `number` takes the attempt's place when given.
 * @param {string} event @param {Range} range @param {Context} ctx @param {string} [extra]
 * @param {number | bigint} [number]
 */
function log(event, range, ctx, extra = String(process.pid), number = ctx.attempt) {
  const path = process.env.PARCELO_TEST_LOG;
  if (!path) throw new PermanentError('PARCELO_TEST_LOG is not set');
  const fd = openSync(path, 'a', 0o644);
  try {
    writeSync(fd, Buffer.from(`${event} ${range.start} ${range.end} ${number} ${extra}\n`));
  } finally {
    closeSync(fd);
  }
}

/**
 * Sleep `ms`, or until the lease is aborted (then throw its reason).
 * @param {number} ms @param {Context} ctx
 */
async function nap(ms, ctx) {
  try {
    await sleep(ms, undefined, { signal: ctx.signal });
  } catch {
    ctx.signal.throwIfAborted();
  }
}

/**
 * Record the run; sleep params.sleep seconds (default 0) to stretch the job.
 * @param {Range} range @param {Context} ctx
 */
export async function record(range, ctx) {
  log('run', range, ctx);
  const seconds = Number(param(ctx.params, 'sleep') ?? 0);
  if (seconds > 0) await nap(seconds * 1000, ctx);
}

/**
 * The first attempt of the leaf starting at params.stall_start (default 0) logs `stalled` and
 * hangs until its lease is aborted or its worker killed; every other run completes.
 * @param {Range} range @param {Context} ctx
 */
export async function stall_first(range, ctx) {
  log('run', range, ctx);
  if (range.start === BigInt(param(ctx.params, 'stall_start') ?? 0) && ctx.attempt === 1) {
    log('stalled', range, ctx);
    await nap(3_600_000, ctx);
  }
}

/**
 * Attempt 1 checkpoints halfway with details `half-done` and throws (a retryable failure carrying
 * the checkpoint); later attempts log `resumed start end attempt details`, starting at the cursor.
 * The leaf at params.permanent_start fails with a PermanentError instead, once.
 * @param {Range} range @param {Context} ctx
 */
export async function checkpoint_then_fail(range, ctx) {
  log('run', range, ctx);
  const permanent = param(ctx.params, 'permanent_start');
  if (permanent !== undefined && range.start === BigInt(permanent)) throw new PermanentError('bad record');
  if (ctx.attempt === 1) {
    ctx.checkpoint(range.start + (range.end - range.start) / 2n, 'half-done');
    throw new Error('transient after a checkpoint');
  }
  log('resumed', range, ctx, ctx.details ? ctx.details.toString() : '-');
}

/**
 * A splittable handler (docs/protocol.md, "Dynamic splits"), as tests/handlers.py's claim_ids:
 * claims each id before doing it (line `claim id id+1 fence pid`), stops at the first refused
 * claim, and returns how many ids it did. Ids in params.slow (`[start, end)`) take
 * params.slow_seconds (default 0.1), the others params.fast_seconds (default 0.001).
 * @param {Range} range @param {Context} ctx
 * @returns {Promise<number>}
 */
export async function claim_ids(range, ctx) {
  const [slowStart, slowEnd] = (param(ctx.params, 'slow') ?? [0, 0]).map(BigInt);
  const slowMs = Number(param(ctx.params, 'slow_seconds') ?? 0.1) * 1000;
  const fastMs = Number(param(ctx.params, 'fast_seconds') ?? 0.001) * 1000;
  let done = 0;
  for (let id = range.start; !ctx.signal.aborted && ctx.claim(id); id++) {
    log('claim', { start: id, end: id + 1n }, ctx, String(process.pid), ctx.fence);
    await nap(slowStart <= id && id < slowEnd ? slowMs : fastMs, ctx);
    done += 1;
  }
  return done;
}

/**
 * Log the run and return the leaf's width (a BigInt), as tests/handlers.py's width_flaky: the first
 * attempt of every leaf whose start is params.every apart (from params.offset) throws a retryable
 * error, and the leaf at params.bad_start fails for good (PermanentError).
 * @param {Range} range @param {Context} ctx
 * @returns {bigint}
 */
export function width_flaky(range, ctx) {
  log('run', range, ctx);
  const bad = param(ctx.params, 'bad_start');
  if (bad !== undefined && range.start === BigInt(bad)) throw new PermanentError('bad record');
  const every = BigInt(param(ctx.params, 'every') ?? 1);
  const offset = BigInt(param(ctx.params, 'offset') ?? -1);
  if (range.start % every === offset && ctx.attempt === 1) throw new Error('transient');
  return range.end - range.start;
}

/**
 * A pruning rule (shouldProcess, for jobs created with pruning): keep ranges that contain a
 * multiple of 10,000, as tests/handlers.py's keep_multiples.
 * @param {Range} range @param {boolean} _isLeaf
 * @returns {boolean}
 */
export function keep_multiples(range, _isLeaf) {
  return (range.end - 1n) / 10_000n >= (range.start + 9_999n) / 10_000n;
}

/** The handlers the CLI knows, by name (--handler). */
export const HANDLERS = Object.freeze({
  count,
  record,
  stall_first,
  checkpoint_then_fail,
  claim_ids,
  width_flaky,
});

/** The pruning rules the CLI knows, by name (--should-process). */
export const SHOULD_PROCESS = Object.freeze({ keep_multiples });
