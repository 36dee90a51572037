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
 */
export class Context {
  /** @type {[bigint, Buffer] | null} */
  #checkpoint = null;
  #message = '';

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
