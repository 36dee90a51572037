// What a handler receives: the range to work on (BigInt bounds) and the context of its attempt.

/**
 * A half-open range [start, end) of ids.
 * @typedef {{readonly start: bigint, readonly end: bigint}} Range
 */

/**
 * @param {bigint} start
 * @param {bigint} end
 * @returns {Range}
 */
export function range(start, end) {
  return Object.freeze({ start, end });
}

/**
 * The context of one attempt at a leaf.
 *
 * Handlers read `jobId`, `params` (the job's params_json, parsed), `attempt` (1 for the first),
 * `fence` (the lease's fencing token, a BigInt: handy as an idempotency key), `leaf` (the whole
 * leaf; the handler's range starts at `cursor`), `cursor` and `details` (where an earlier attempt
 * checkpointed, and the bytes it saved, or null), and `signal`, an AbortSignal aborted when the
 * handler should stop (job cancelled or paused with release, lease lost, shutdown past the drain
 * timeout; `signal.reason` is a LeaseAbortedError saying which).
 *
 * A handler that walks its range position by position can let the coordinator split its leaf
 * while it runs (docs/protocol.md, "Dynamic splits"): it calls `claim(position)` before doing each
 * position and stops at the first false. `end` starts as the leaf's end and may only shrink, when
 * the worker accepts a SHRINK proposal (`offerShrink`). Node runs handlers and the stream's
 * messages on one thread, and neither method awaits, so a claim and a shrink never interleave.
 */
export class Context {
  /** @type {[bigint, Buffer] | null} */
  #checkpoint = null;
  #message = '';
  /** @type {bigint} where this attempt stops: the leaf's end, or the new_end of an accepted SHRINK */
  #end;
  /** @type {bigint} one past the highest position claimed; the cursor before any claim */
  #claimed;
  #hasClaimed = false;
  /** @type {bigint | null} the end of the last accepted SHRINK, or null */
  #shrunkTo = null;

  /**
   * @param {object} init
   * @param {string} init.jobId
   * @param {any} init.params
   * @param {number} init.attempt
   * @param {bigint} init.fence
   * @param {Range} init.leaf
   * @param {bigint} init.cursor
   * @param {Buffer | null} init.details
   * @param {AbortSignal} init.signal
   */
  constructor({ jobId, params, attempt, fence, leaf, cursor, details, signal }) {
    /** @readonly */ this.jobId = jobId;
    /** @readonly */ this.params = params;
    /** @readonly */ this.attempt = attempt;
    /** @readonly */ this.fence = fence;
    /** @readonly */ this.leaf = leaf;
    /** @readonly */ this.cursor = cursor;
    /** @readonly */ this.details = details;
    /** @readonly */ this.signal = signal;
    this.#end = leaf.end;
    this.#claimed = cursor;
  }

  /**
   * Where this attempt stops: the leaf's end, or less once a split was accepted (it only shrinks).
   * @returns {bigint}
   */
  get end() {
    return this.#end;
  }

  /**
   * Claim `position` (an id, or the first id of a block) before doing it: true while
   * `position < ctx.end`, and then the position is this attempt's to do; false when the range
   * ends before it (the leaf was split and the rest is another lease's), and the handler stops.
   * Claiming makes the lease splittable: the coordinator may then hand the part not yet claimed to
   * idle workers. Claim positions in increasing order.
   *
   * @param {bigint | number | string} position
   * @returns {boolean}
   */
  claim(position) {
    const at = BigInt(position);
    if (at >= this.#end) return false;
    this.#hasClaimed = true;
    if (at + 1n > this.#claimed) this.#claimed = at + 1n;
    return true;
  }

  /**
   * Whether the handler claimed at least once: its heartbeats then say `splittable`. Used by the worker.
   * @returns {boolean}
   */
  get splittable() {
    return this.#hasClaimed;
  }

  /**
   * One past the highest position claimed (the cursor before any claim). Used by the worker.
   * @returns {bigint}
   */
  get claimed() {
    return this.#claimed;
  }

  /**
   * The end of the last accepted SHRINK (repeated in every later heartbeat and in the
   * completion's `ends`), or null. Used by the worker.
   * @returns {bigint | null}
   */
  get shrunkTo() {
    return this.#shrunkTo;
  }

  /**
   * A SHRINK proposal: end at `newEnd` instead. Accepted (true, and `end` becomes `newEnd`) when
   * the handler has claimed (one that never did may not look at `end`), nothing at or past
   * `newEnd` was claimed (`claimed <= newEnd`), and `newEnd` lies within (leaf.start, end) (the
   * end only shrinks); `newEnd` equal to the end already accepted is accepted again. Refused
   * (false, nothing changes) otherwise. The worker calls it only while the handler runs.
   * Used by the worker.
   *
   * @param {bigint | number | string} newEnd
   * @returns {boolean}
   */
  offerShrink(newEnd) {
    const to = BigInt(newEnd);
    const within = to < this.#end || to === this.#shrunkTo;
    if (!this.#hasClaimed || !within || to <= this.leaf.start || this.#claimed > to) return false;
    this.#end = to;
    this.#shrunkTo = to;
    return true;
  }

  /**
   * Record that every id below `cursor` is done. The next heartbeat carries it (only the newest
   * is sent); a failure or a release carries it too. If this attempt dies, the next one starts at
   * `cursor` and gets `details`.
   *
   * @param {bigint | number | string} cursor the first id not yet done, within [leaf.start, leaf.end]
   * @param {Uint8Array | string | null} [details] opaque bytes to keep with it (a string is UTF-8)
   * @throws {RangeError} cursor is outside the leaf
   */
  checkpoint(cursor, details = null) {
    const at = BigInt(cursor);
    if (at < this.leaf.start || at > this.leaf.end) {
      throw new RangeError(`cursor ${at} is outside the leaf [${this.leaf.start}, ${this.leaf.end}]`);
    }
    const bytes = details == null ? Buffer.alloc(0) : Buffer.from(/** @type {any} */ (details));
    this.#checkpoint = [at, bytes];
  }

  /**
   * A free-form progress message, sent with the next heartbeat and shown in the job tree.
   * @param {string} message
   */
  progress(message) {
    this.#message = String(message);
  }

  /**
   * The newest checkpoint, or null. Used by the worker.
   * @returns {[bigint, Buffer] | null}
   */
  get lastCheckpoint() {
    return this.#checkpoint;
  }

  /**
   * The progress message not yet sent, which it clears. Used by the worker.
   * @returns {string}
   */
  takeMessage() {
    const message = this.#message;
    this.#message = '';
    return message;
  }
}
