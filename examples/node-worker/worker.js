// The Node worker: pull leases over one Work stream, run an async handler per leaf, heartbeat what
// it holds, report results in batches and send them again after a reconnect. It follows
// docs/protocol.md; worker_sdk/worker.py is the Python twin it mirrors.
//
//   import { runWorker, PermanentError } from './worker.js';
//   const worker = runWorker({ target: 'localhost:50051', handler: async (range, ctx) => { ... } });
//   process.once('SIGTERM', () => worker.stop());
//   await worker.done;

import os from 'node:os';
import { Connection } from './connection.js';
import { Context, range } from './context.js';
import * as defaults from './defaults.js';
import { LeaseAbortedError, ParceloError, PermanentError } from './errors.js';
import { Outbox } from './outbox.js';
import { decodePacked, durationMs, encodeResult, enumName, SDK, u64 } from './proto.js';
import { isLeafRun, leaves, RunResult } from './runs.js';

export { Context, range } from './context.js';
export { LeaseAbortedError, ParceloError, PermanentError } from './errors.js';
export { backoffDelays } from './connection.js';
export { SDK, VERSION, decodePacked } from './proto.js';
export { leaves, isLeafRun, RunResult } from './runs.js';

/**
 * @typedef {import('./context.js').Range} Range
 * @typedef {(range: Range, ctx: Context) => Promise<unknown> | unknown} Handler
 *   Resolving completes the leaf; throwing fails it (PermanentError: do not retry).
 * @typedef {(range: Range, isLeaf: boolean) => Promise<boolean> | boolean} ShouldProcess
 *   Pruning jobs: false skips the node and its whole subtree.
 * @typedef {{info(msg: string): void, warn(msg: string): void, error(msg: string): void}} Logger
 *
 * @typedef {object} WorkerOptions
 * @property {string} target host:port of the coordinator
 * @property {Handler} handler
 * @property {string[]} [queues] queues to take leases from, in order of preference (default ['default'])
 * @property {number} [concurrency] handlers running at once (default 4)
 * @property {number} [prefetch] leases kept in hand beyond the running ones (default 64)
 * @property {string} [workerId] the name the coordinator shows as the holder (default host:pid)
 * @property {number} [drainTimeoutMs] on stop, how long running handlers get to finish (default 30 s)
 * @property {ShouldProcess} [shouldProcess] answers probes of pruning jobs (default: process everything)
 * @property {Logger} [logger] where log lines go (default: stderr)
 */

/**
 * Leaves of one job share this, from its JobInfo (`reducing`: the job keeps leaf results; `reduce`:
 * JobInfo.reduce; `maxRangeSize`: a lease wider than this is a leaf run).
 * @typedef {{params: any, leaseTtlMs: number, reducing: boolean, reduce: string, maxRangeSize: bigint}} Job
 */

/**
 * A LeaseHeartbeat as it goes on the wire (uint64 fields as decimal strings).
 * @typedef {{fence: string, cursor?: string, details?: Buffer, message?: string, splittable?: boolean,
 *   claimed?: string, shrink?: {new_end: string, accepted: boolean}}} LeaseBeat
 */

/**
 * A lease in hand: waiting for a handler slot, or running.
 * @typedef {object} Held
 * @property {any} lease the Lease as decoded
 * @property {string} fence
 * @property {AbortController} controller aborts ctx.signal
 * @property {Context | null} ctx set when the handler starts
 * @property {boolean} started
 * @property {boolean} dropped CANCEL, LOST or JOB_GONE: report nothing
 * @property {boolean} release RELEASE or shutdown: give the lease back with the newest checkpoint
 * @property {boolean} given the lease was given back while its handler still ran (shutdown)
 * @property {bigint} runSize a leaf run (docs/protocol.md, "Leaf runs"): its job's max_range_size; 0n: one leaf
 * @property {bigint | null} doneTo a leaf run: the end of the last leaf that ran, null before the first
 * @property {number} ran a leaf run: how many of its leaves ran
 * @property {import('./outbox.js').WireLeafFailure[]} failedLeaves a leaf run: its leaves that failed
 */

/** What a worker did; handy in tests and logs. */
export class WorkerStats {
  completed = 0;
  skipped = 0;
  failed = 0;
  released = 0;
  rejected = 0;
  dropped = 0;
  connects = 0;
}

/**
 * Microseconds since `began` (process.hrtime.bigint()), at least 1: a handler that ran was measured.
 * @param {bigint} began @returns {bigint}
 */
function microsSince(began) {
  const us = (process.hrtime.bigint() - began) / 1000n;
  return us > 0n ? us : 1n;
}

/** A failure's message as sent: `Name: message`, cut to what the coordinator keeps. @param {unknown} error */
function errorText(error) {
  const err = /** @type {any} */ (error);
  const text = err instanceof Error ? `${err.name}: ${err.message}` : `Error: ${String(err)}`;
  return text.slice(0, defaults.MAX_MESSAGE);
}

/** Whether a handler's error says "do not retry". @param {unknown} error @returns {boolean} */
function isPermanent(error) {
  return error instanceof PermanentError || /** @type {any} */ (error)?.permanent === true;
}

/** @type {Logger} */
const STDERR_LOGGER = {
  info: (msg) => process.stderr.write(`${new Date().toISOString()} INFO parcelo.node: ${msg}\n`),
  warn: (msg) => process.stderr.write(`${new Date().toISOString()} WARNING parcelo.node: ${msg}\n`),
  error: (msg) => process.stderr.write(`${new Date().toISOString()} ERROR parcelo.node: ${msg}\n`),
};

/**
 * How much credit to ask for: room for `capacity` leases in hand counting those held and those
 * asked for and not granted yet, asked in batches of at least `batch` (or whatever room there is
 * when nothing is held nor coming, so a small worker is never left with nothing).
 * @param {{capacity: number, held: number, outstanding: number, batch: number}} state
 * @returns {number} 0: ask nothing now
 */
export function creditToAsk({ capacity, held, outstanding, batch }) {
  const room = capacity - held - outstanding;
  if (room <= 0) return 0;
  return room >= batch || (held === 0 && outstanding === 0) ? room : 0;
}

/**
 * Start a worker; it runs until `stop()`.
 * @param {WorkerOptions} options
 * @returns {Worker}
 */
export function runWorker(options) {
  const worker = new Worker(options);
  worker.start();
  return worker;
}

export class Worker {
  /** @type {Map<string, Held>} */ #held = new Map();
  /** @type {Held[]} */ #waiting = [];
  #running = 0;
  /** @type {Map<string, Job>} */ #jobs = new Map();
  #outbox = new Outbox();
  /** @type {Map<string, string>} job of each lease whose result is unanswered (for JOB_GONE) */
  #jobOfFence = new Map();
  /** @type {Map<string, string>} the accepted SHRINK end of each completion unanswered, if it shrank */
  #endOfFence = new Map();
  /** credit asked for on this stream and not granted yet */
  #outstanding = 0;
  /** @type {number | null} Welcome.heartbeat_interval */
  #suggestedIntervalMs = null;
  /** @type {ReturnType<typeof setTimeout> | null} */ #flushTimer = null;
  #stopping = false;
  /** @type {ReturnType<typeof setTimeout> | null} */ #beats = null;
  #lastBeat = 0;
  /** @type {(() => void)[]} */ #waiters = [];
  /** @type {Promise<void> | null} */ #done = null;
  /** @type {() => void} */ #stopRequested = () => {};

  /** @param {WorkerOptions} options */
  constructor(options) {
    const { target, handler } = options;
    if (typeof target !== 'string' || !target) throw new TypeError('target must be "host:port"');
    if (typeof handler !== 'function') throw new TypeError('handler must be a function (range, ctx)');
    const concurrency = options.concurrency ?? defaults.CONCURRENCY;
    const prefetch = options.prefetch ?? defaults.PREFETCH;
    if (!Number.isInteger(concurrency) || concurrency < 1)
      throw new RangeError('concurrency must be at least 1');
    if (!Number.isInteger(prefetch) || prefetch < 0) throw new RangeError('prefetch must not be negative');
    this.target = target;
    this.handler = handler;
    this.queues = options.queues?.length ? [...options.queues] : [defaults.DEFAULT_QUEUE];
    this.concurrency = concurrency;
    this.prefetch = prefetch;
    this.workerId = options.workerId || `${os.hostname()}:${process.pid}`;
    this.drainTimeoutMs = options.drainTimeoutMs ?? defaults.DRAIN_TIMEOUT_MS;
    this.shouldProcess = options.shouldProcess ?? null;
    this.log = options.logger ?? STDERR_LOGGER;
    this.stats = new WorkerStats();
    this.connection = new Connection({
      target,
      // packed_grants: grants come as columns (decodePacked); leaf_runs: leases may be leaf runs.
      hello: {
        worker_id: this.workerId,
        queues: this.queues,
        sdk: SDK,
        concurrency,
        packed_grants: true,
        leaf_runs: true,
      },
      log: this.log,
      events: {
        onWelcome: (welcome) => this.#onWelcome(welcome),
        onMessage: (msg) => this.#onMessage(msg),
        onDown: () => this.#onDown(),
      },
    });
  }

  /** Resolves once the worker stopped (after `stop()` and its drain). */
  get done() {
    if (this.#done === null) throw new ParceloError('the worker was not started');
    return this.#done;
  }

  /** Connect and work until `stop()`. Called by runWorker(). */
  start() {
    if (this.#done !== null) throw new ParceloError('the worker was already started');
    const stop = new Promise((resolve) => {
      this.#stopRequested = () => resolve(undefined);
    });
    this.connection.start();
    this.#tick();
    this.#done = stop.then(() => this.#drain());
  }

  /**
   * Begin a graceful stop: ask for no more credit, give back leases not started, let running
   * handlers finish within the drain timeout, wait for the answers to every result, close.
   * @returns {Promise<void>} `done`
   */
  stop() {
    this.#stopping = true;
    this.#stopRequested();
    return this.done;
  }

  // -- the stream ----------------------------------------------------------------------------

  /** @param {any} welcome */
  #onWelcome(welcome) {
    this.stats.connects += 1;
    this.#suggestedIntervalMs = durationMs(welcome.heartbeat_interval) || null;
    this.log.info(`connected to ${this.target} as ${this.workerId} (${SDK})`);
    this.#outbox.requeue();
    this.#flush();
    this.#sendHeartbeat();
    this.#askForLeases();
  }

  #onDown() {
    this.#outstanding = 0; // credit belongs to the stream and ended with it
  }

  /** Heartbeat when the interval passed; looked at often, as it follows the TTLs of the leases held. */
  #tick() {
    const interval = this.#heartbeatIntervalMs();
    if (this.#held.size === 0 || !this.connection.up)
      this.#lastBeat = Date.now(); // nothing to beat
    else if (Date.now() - this.#lastBeat >= interval) this.#sendHeartbeat();
    const due = interval - (Date.now() - this.#lastBeat);
    this.#beats = setTimeout(() => this.#tick(), Math.max(1, Math.min(defaults.HEARTBEAT_TICK_MS, due)));
  }

  /**
   * Welcome.heartbeat_interval ("at least this often"), but never less often than a third of the
   * shortest lease TTL among the jobs held: leases must be heartbeated within every TTL, even one
   * shorter than the interval the coordinator suggests to every worker.
   */
  #heartbeatIntervalMs() {
    let ttl = Infinity;
    for (const held of this.#held.values()) {
      ttl = Math.min(ttl, this.#jobs.get(held.lease.job_id)?.leaseTtlMs ?? defaults.LEASE_TTL_MS);
    }
    if (ttl === Infinity) ttl = defaults.LEASE_TTL_MS;
    const byTtl = Math.max(defaults.MIN_HEARTBEAT_MS, ttl / defaults.HEARTBEAT_FRACTION);
    return Math.min(this.#suggestedIntervalMs ?? Infinity, byTtl);
  }

  #sendHeartbeat() {
    if (this.#held.size === 0 || !this.connection.up) return;
    const leases = [];
    for (const held of this.#held.values()) leases.push(this.#beat(held));
    this.#lastBeat = Date.now();
    this.connection.send({ heartbeat: { leases, worker_id: this.workerId } });
  }

  /**
   * The LeaseHeartbeat of a lease held: its newest checkpoint and progress message, and for a
   * handler that claims (docs/protocol.md, "Dynamic splits") `splittable`, `claimed`, and the
   * accepted shrink again, so that a coordinator that lost the split applies it anyway.
   * @param {Held} held @returns {LeaseBeat}
   */
  #beat(held) {
    /** @type {LeaseBeat} */
    const beat = { fence: held.fence };
    const ctx = held.ctx;
    if (held.runSize) {
      // A leaf run has no checkpoint and is never split: a progress message at most.
      const message = ctx?.takeMessage();
      if (message) beat.message = message;
      return beat;
    }
    const checkpoint = ctx?.lastCheckpoint;
    if (checkpoint) {
      beat.cursor = checkpoint[0].toString(); // proto3 optional: set only with a checkpoint
      beat.details = checkpoint[1];
    }
    const message = ctx?.takeMessage();
    if (message) beat.message = message;
    if (ctx?.splittable) {
      beat.splittable = true;
      beat.claimed = ctx.claimed.toString();
      if (ctx.shrunkTo !== null) beat.shrink = { new_end: ctx.shrunkTo.toString(), accepted: true };
    }
    return beat;
  }

  // -- messages from the coordinator -----------------------------------------------------------

  /** @param {any} msg */
  #onMessage(msg) {
    if (msg.msg === 'grant') this.#onGrant(msg.grant);
    else if (msg.msg === 'heartbeat') this.#onDirectives(msg.heartbeat.directives);
    else if (msg.msg === 'complete' || msg.msg === 'fail') this.#onAnswer(msg[msg.msg]);
  }

  /** @param {any} grant */
  #onGrant(grant) {
    for (const info of grant.jobs) {
      let params = {};
      try {
        params = JSON.parse(info.params_json || '{}');
      } catch {
        this.log.warn(`job ${info.job_id}: params_json is not JSON; handlers get {}`);
      }
      this.#jobs.set(info.job_id, {
        params,
        leaseTtlMs: durationMs(info.lease_ttl) ?? defaults.LEASE_TTL_MS,
        reducing: !['REDUCE_UNSPECIFIED', 'REDUCE_NONE', undefined].includes(info.reduce),
        reduce: String(info.reduce ?? ''),
        maxRangeSize: u64(info.max_range_size || 0),
      });
    }
    // Lease messages, or (Hello.packed_grants) the same leases as columns: read both.
    let leases = grant.leases ?? [];
    if (grant.packed) {
      try {
        leases = [...leases, ...decodePacked(grant.packed)];
      } catch (err) {
        // A coordinator defect (docs/protocol.md, "Packed grants"): end the stream and reconnect.
        this.connection.reset(/** @type {Error} */ (err).message);
        return;
      }
    }
    this.#outstanding = Math.max(0, this.#outstanding - leases.length);
    for (const lease of leases) {
      const maxRangeSize = this.#jobs.get(lease.job_id)?.maxRangeSize ?? 0n;
      /** @type {Held} */
      const held = {
        lease,
        fence: lease.fence,
        controller: new AbortController(),
        ctx: null,
        started: false,
        dropped: false,
        release: false,
        given: false,
        runSize: isLeafRun(lease, maxRangeSize) ? maxRangeSize : 0n,
        doneTo: null,
        ran: 0,
        failedLeaves: [],
      };
      this.#held.set(held.fence, held);
      if (this.#stopping) {
        this.#giveBack(held);
      } else if (lease.kind === 'LEASE_KIND_PROBE') {
        this.#probe(held).catch((err) => this.log.error(`probe ${held.fence} failed: ${err.stack}`));
      } else {
        this.#waiting.push(held);
      }
    }
    this.#pump();
  }

  /** @param {any[]} directives */
  #onDirectives(directives) {
    /** @type {LeaseBeat[]} */
    const answers = [];
    for (const directive of directives) {
      const action = enumName(directive.action, 'DIRECTIVE_ACTION_');
      if (action === 'SHRINK') {
        answers.push(this.#answerShrink(directive));
        continue;
      }
      const held = this.#held.get(directive.fence);
      if (held === undefined || held.dropped || held.release) continue;
      if (action === 'RELEASE') {
        held.release = true;
        // A leaf run that runs finishes the leaf it is in, then completes what it ran.
        if (held.runSize && held.started) continue;
      } else if (action === 'CANCEL' || action === 'LOST') {
        held.dropped = true;
        this.stats.dropped += 1;
      } else {
        continue; // CONTINUE, or an action from a newer coordinator
      }
      this.#abort(held, /** @type {'RELEASE' | 'CANCEL' | 'LOST'} */ (action), directive.reason);
    }
    // The answers go at once, in a heartbeat of their own (not a full one: #lastBeat stays).
    if (answers.length) this.connection.send({ heartbeat: { leases: answers, worker_id: this.workerId } });
    this.#askForLeases();
  }

  /**
   * A SHRINK proposal (docs/protocol.md, "Dynamic splits"): accepted when the lease's handler runs,
   * has claimed, and claimed nothing at or past `new_end` (Context.offerShrink; claims and shrinks
   * both run on this one thread without awaiting, so they cannot cross); refused otherwise (a lease
   * waiting for a slot, released, finished, or not ours). A lease that finished after accepting
   * that very end accepts it again. Returns the heartbeat carrying the answer.
   * @param {any} directive @returns {LeaseBeat}
   */
  #answerShrink(directive) {
    const fence = String(directive.fence);
    const newEnd = u64(directive.new_end);
    const held = this.#held.get(fence);
    let accepted;
    /** @type {LeaseBeat} */
    let beat;
    if (held !== undefined && held.runSize) {
      accepted = false; // a leaf run is never split
      beat = this.#beat(held);
    } else if (held !== undefined) {
      const running = held.started && held.ctx !== null && !held.dropped && !held.release && !held.given;
      accepted = running && /** @type {Context} */ (held.ctx).offerShrink(newEnd);
      beat = this.#beat(held);
    } else {
      accepted = this.#endOfFence.get(fence) === newEnd.toString();
      beat = { fence };
    }
    beat.shrink = { new_end: newEnd.toString(), accepted };
    const claimed = held?.ctx ? ` (claimed below ${held.ctx.claimed})` : '';
    this.log.info(`lease ${fence}: SHRINK to ${newEnd} ${accepted ? 'accepted' : 'refused'}${claimed}`);
    return beat;
  }

  /**
   * Stop a lease: one not started is forgotten (or given back at once, for a release); a running
   * handler is told through ctx.signal and its lease is settled when it returns.
   * @param {Held} held @param {'RELEASE' | 'CANCEL' | 'LOST' | 'JOB_GONE' | 'SHUTDOWN'} why @param {string} [detail]
   */
  #abort(held, why, detail = '') {
    const waiting = this.#waiting.indexOf(held);
    if (waiting >= 0) this.#waiting.splice(waiting, 1);
    // A dropped lease is no longer ours: neither heartbeated nor counted against credit from now on
    // (a handler that goes on after the abort still holds its slot until it returns).
    if (held.dropped) this.#held.delete(held.fence);
    else if (!held.started) this.#giveBack(held);
    held.controller.abort(new LeaseAbortedError(why, detail));
    this.#notify();
  }

  /** @param {any} answer a CompleteResponse or FailResponse */
  #onAnswer(answer) {
    const settled = this.#outbox.settle(answer);
    for (const fence of settled.accepted) {
      this.#jobOfFence.delete(fence);
      this.#endOfFence.delete(fence);
    }
    for (const rejection of settled.rejected) {
      this.#endOfFence.delete(rejection.fence);
      this.stats.rejected += 1;
      const reason = enumName(rejection.reason, 'REJECT_REASON_');
      this.log.info(`result for lease ${rejection.fence} rejected: ${reason} ${rejection.message}`);
      if (reason === 'JOB_GONE') this.#dropJob(rejection.fence);
      this.#jobOfFence.delete(rejection.fence);
    }
    if (settled.missing.length) {
      this.log.warn(`answer ${answer.request_id} left out leases ${settled.missing.join(', ')}`);
    }
    this.#notify();
  }

  /**
   * JOB_GONE: the job of that lease ended; stop its other handlers and report nothing for them.
   * @param {string} fence
   */
  #dropJob(fence) {
    const jobId = this.#jobOfFence.get(fence);
    if (jobId === undefined) return;
    for (const held of [...this.#held.values()]) {
      if (held.lease.job_id === jobId && !held.dropped) {
        held.dropped = true;
        this.stats.dropped += 1;
        this.#abort(held, 'JOB_GONE');
      }
    }
  }

  // -- running ---------------------------------------------------------------------------------

  #pump() {
    while (this.#waiting.length && this.#running < this.concurrency && !this.#stopping) {
      const held = /** @type {Held} */ (this.#waiting.shift());
      const run = held.runSize ? this.#runLeaves(held) : this.#run(held);
      run.catch((err) => this.log.error(`running lease ${held.fence} failed: ${err.stack}`));
    }
    this.#askForLeases();
  }

  /** @param {Held} held */
  async #run(held) {
    const { lease } = held;
    const start = u64(lease.start);
    const end = u64(lease.end);
    const cursor = u64(lease.cursor) > start ? u64(lease.cursor) : start;
    const ctx = new Context({
      jobId: lease.job_id,
      params: this.#jobs.get(lease.job_id)?.params ?? {},
      attempt: lease.attempt,
      fence: u64(lease.fence),
      leaf: range(start, end),
      cursor,
      details: lease.details?.length ? Buffer.from(lease.details) : null,
      signal: held.controller.signal,
    });
    held.ctx = ctx;
    held.started = true;
    this.#running += 1;
    /** @type {unknown} */
    let error = null;
    /** @type {unknown} */
    let value;
    const began = process.hrtime.bigint();
    try {
      value = await this.handler(range(cursor, end), ctx);
    } catch (err) {
      error = err ?? new Error('handler threw a nullish value');
    } finally {
      this.#running -= 1;
    }
    const us = microsSince(began);
    this.#finish(held, error, false, value, us);
    this.#notify();
    this.#pump();
  }

  /**
   * A leaf run (docs/protocol.md, "Leaf runs"): the handler on each of its leaves by the split
   * rule, in order, one after another in this one slot. Each leaf gets a context of its own range
   * (a first attempt, no checkpoint) with the run's fence and attempt; a leaf that throws (or
   * returns what the job's reduce cannot combine) is noted in failedLeaves and the others go on.
   * RELEASE stops after the leaf that runs; CANCEL, LOST, JOB_GONE and the drain timeout abort it.
   * @param {Held} held
   */
  async #runLeaves(held) {
    const { lease } = held;
    const job = this.#jobs.get(lease.job_id);
    const combined = new RunResult(job?.reduce);
    const signal = held.controller.signal;
    held.started = true;
    this.#running += 1;
    let us = 0n;
    try {
      for (const [start, end] of leaves(u64(lease.start), u64(lease.end), held.runSize)) {
        if (held.dropped || held.release || held.given) break;
        const leaf = range(start, end);
        const ctx = new Context({
          jobId: lease.job_id,
          params: job?.params ?? {},
          attempt: lease.attempt,
          fence: u64(lease.fence),
          leaf,
          cursor: start,
          details: null,
          signal,
        });
        held.ctx = ctx;
        /** @type {unknown} */
        let error = null;
        /** @type {unknown} */
        let value;
        const began = process.hrtime.bigint();
        try {
          value = await this.handler(leaf, ctx);
        } catch (err) {
          error = err ?? new Error('handler threw a nullish value');
        }
        us += microsSince(began);
        if (error !== null && signal.aborted) break; // stopped part way: this leaf did not run
        if (error === null) {
          const why = combined.add(value);
          if (why) error = new PermanentError(why);
        }
        if (error !== null) {
          const failure = {
            fence: held.fence,
            start: start.toString(),
            end: end.toString(),
            message: errorText(error),
            permanent: isPermanent(error),
          };
          held.failedLeaves.push(failure);
          this.log.info(`leaf [${start}, ${end}) of ${lease.job_id} failed: ${failure.message}`);
        }
        held.doneTo = end;
        held.ran += 1;
      }
    } finally {
      this.#running -= 1;
    }
    this.#finishRun(held, combined, us > 0n ? us : 1n);
    this.#notify();
    this.#pump();
  }

  /**
   * A leaf run's one completion: its fence, the end of the last leaf run when it stopped early, its
   * leaves' results combined, the handler time summed, and its failed leaves. One that ran no leaf
   * (released before its first) is given back.
   * @param {Held} held @param {RunResult} combined @param {bigint} us
   */
  #finishRun(held, combined, us) {
    if (held.given || held.dropped || !this.#held.delete(held.fence)) return;
    if (held.doneTo === null) {
      this.#giveBack(held);
      return;
    }
    this.#jobOfFence.set(held.fence, held.lease.job_id);
    let result = '';
    if (combined.value !== null && this.#jobs.get(held.lease.job_id)?.reducing)
      result = encodeResult(combined.value);
    const end = held.doneTo === u64(held.lease.end) ? '0' : held.doneTo.toString();
    this.#outbox.complete(held.fence, result, end, us.toString(), held.failedLeaves);
    // Counted per leaf, as if each had been a lease.
    this.stats.completed += held.ran - held.failedLeaves.length;
    this.stats.failed += held.failedLeaves.length;
    this.#scheduleFlush();
  }

  /** @param {Held} held */
  async #probe(held) {
    held.started = true;
    const { lease } = held;
    let keep = true;
    /** @type {unknown} */
    let error = null;
    try {
      if (this.shouldProcess)
        keep = Boolean(await this.shouldProcess(range(u64(lease.start), u64(lease.end)), lease.is_leaf));
    } catch (err) {
      error = err ?? new Error('shouldProcess threw a nullish value');
    }
    this.#finish(held, error, !keep);
    // A probe frees its place without going through #pump: ask now, or a worker whose grants held
    // only probes would wait for ever.
    this.#askForLeases();
  }

  /**
   * Turn a finished lease into its result.
   * @param {Held} held @param {unknown} error null: success @param {boolean} [skip]
   * @param {unknown} [value] what the handler returned: the leaf's result, for jobs with a reduce
   * @param {bigint} [us] how long the handler ran, in microseconds (0n: not measured)
   */
  #finish(held, error, skip = false, value = undefined, us = 0n) {
    if (held.given || held.dropped || !this.#held.delete(held.fence)) return;
    const checkpoint = held.ctx?.lastCheckpoint ?? null;
    if (held.release) {
      this.#giveBack(held, checkpoint);
      return;
    }
    this.#jobOfFence.set(held.fence, held.lease.job_id);
    let result = '';
    if (error === null && !skip && value != null && this.#jobs.get(held.lease.job_id)?.reducing) {
      try {
        result = encodeResult(value);
      } catch (err) {
        // Deterministic: the same handler would return the same value again.
        error = new PermanentError(`the handler's result is not JSON: ${/** @type {Error} */ (err).message}`);
      }
    }
    if (error === null) {
      if (skip) {
        this.#outbox.skip(held.fence);
        this.stats.skipped += 1;
      } else {
        // A lease that accepted a SHRINK was run to its new end: say so in CompleteRequest.ends.
        const end = held.ctx?.shrunkTo?.toString() ?? '0';
        if (end !== '0') this.#endOfFence.set(held.fence, end);
        this.#outbox.complete(held.fence, result, end, us.toString());
        this.stats.completed += 1;
      }
    } else {
      /** @type {import('./outbox.js').WireFailure} */
      const failure = { fence: held.fence, message: errorText(error), permanent: isPermanent(error) };
      if (checkpoint) {
        failure.cursor = checkpoint[0].toString();
        failure.details = checkpoint[1];
      }
      this.#outbox.fail(failure);
      this.stats.failed += 1;
      const { start, end, job_id } = held.lease;
      this.log.info(`leaf [${start}, ${end}) of ${job_id} failed: ${failure.message}`);
    }
    this.#scheduleFlush();
  }

  /**
   * Give a lease back unfinished (Failure.released), with the newest checkpoint if there is one.
   * @param {Held} held @param {[bigint, Buffer] | null} [checkpoint]
   */
  #giveBack(held, checkpoint = null) {
    this.#held.delete(held.fence);
    /** @type {import('./outbox.js').WireFailure} */
    const failure = { fence: held.fence, released: true, message: 'released' };
    if (checkpoint) {
      failure.cursor = checkpoint[0].toString();
      failure.details = checkpoint[1];
    }
    this.#outbox.fail(failure);
    this.stats.released += 1;
    this.#scheduleFlush();
  }

  // -- sending results and asking for more -----------------------------------------------------

  #scheduleFlush() {
    if (this.#outbox.pending >= defaults.COMPLETION_BATCH) this.#flush();
    else this.#flushTimer ??= setTimeout(() => this.#flush(), defaults.COMPLETION_FLUSH_MS);
  }

  #flush() {
    if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
    this.#flushTimer = null;
    if (!this.connection.up) return; // kept unanswered; the next stream sends them again
    for (const msg of this.#outbox.take()) {
      const request = /** @type {any} */ (msg);
      (request.complete ?? request.fail).worker_id = this.workerId; // informative: logged by the coordinator
      this.connection.send(request);
    }
  }

  #askForLeases() {
    if (this.#stopping || !this.connection.up) return;
    const want = creditToAsk({
      capacity: this.concurrency + this.prefetch,
      held: this.#held.size,
      outstanding: this.#outstanding,
      batch: Math.max(1, Math.floor(this.prefetch / 4)),
    });
    if (want > 0) {
      // Results first: the coordinator hears that leases ended before it is asked to replace them,
      // so credit + leases not reported stay within capacity from its side too.
      this.#flush();
      this.#outstanding += want;
      this.connection.send({ lease: { count: want } });
    }
  }

  // -- stopping --------------------------------------------------------------------------------

  async #drain() {
    this.log.info(
      `stopping: giving back ${this.#waiting.length} waiting leases, draining ${this.#running} running`,
    );
    // Take back the credit not yet used, so that nothing more is granted (not even the leases
    // given back just below).
    if (this.connection.up) {
      this.connection.send({ lease: { count: 0, withdraw: true } });
      this.#outstanding = 0;
    }
    while (this.#waiting.length) this.#giveBack(/** @type {Held} */ (this.#waiting.shift()));
    this.#flush();
    if (!(await this.#waitUntil(() => this.#running === 0, this.drainTimeoutMs))) {
      this.log.warn(`drain timeout: aborting ${this.#running} running handlers and giving their leases back`);
      const running = [...this.#held.values()].filter((held) => held.started && !held.dropped);
      for (const held of running) {
        held.release = true;
        held.controller.abort(new LeaseAbortedError('SHUTDOWN'));
      }
      if (!(await this.#waitUntil(() => this.#running === 0, defaults.ABORT_GRACE_MS))) {
        for (const held of running) {
          if (this.#held.has(held.fence)) {
            this.#giveBack(held, held.runSize ? null : (held.ctx?.lastCheckpoint ?? null)); // a run has no checkpoint
            held.given = true;
          }
        }
      }
    }
    this.#flush();
    if (!(await this.#waitUntil(() => this.#outbox.unanswered === 0, defaults.ANSWER_WAIT_MS))) {
      this.log.warn(`stopped with ${this.#outbox.unanswered} results unanswered`);
    }
    if (this.#beats !== null) clearTimeout(this.#beats);
    await this.connection.close();
    this.log.info(
      `stopped: ${Object.entries(this.stats)
        .map(([what, n]) => `${n} ${what}`)
        .join(', ')}`,
    );
  }

  #notify() {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  /**
   * @param {() => boolean} predicate @param {number} ms
   * @returns {Promise<boolean>} whether it held before `ms` passed
   */
  async #waitUntil(predicate, ms) {
    const deadline = Date.now() + ms;
    while (!predicate()) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) return false;
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.min(remaining, 500));
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve(undefined);
        });
      });
    }
    return true;
  }
}
