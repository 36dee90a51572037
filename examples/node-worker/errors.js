// Errors of the Node worker. All derive from ParceloError:
//
//   ParceloError
//   ├── PermanentError      thrown by a handler: fail the leaf, do not retry
//   └── LeaseAbortedError   the reason of ctx.signal: the handler should stop
//
// Any other error a handler throws is a retryable failure.

/** Root of every error this package defines. */
export class ParceloError extends Error {
  /** @param {string} [message] @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = this.constructor.name;
  }
}

/**
 * Thrown by a handler when retrying cannot help: the attempt is reported with
 * Failure.permanent = true and the leaf goes to error at once.
 */
export class PermanentError extends ParceloError {}

/**
 * The reason ctx.signal is aborted with (`ctx.signal.reason`). `why` says what happened:
 *
 * - 'CANCEL': the job ended (cancelled, or failed by its deadline); nothing is reported.
 * - 'LOST': the lease is no longer this worker's (expired, timed out, job deleted); nothing is reported.
 * - 'RELEASE': the job was paused with release; the lease is given back with the newest checkpoint.
 * - 'JOB_GONE': a result of the same job was rejected as JOB_GONE; nothing is reported.
 * - 'SHUTDOWN': the worker is stopping and the drain timeout passed; the lease is given back.
 *
 * A handler that sees it may simply throw it (`ctx.signal.throwIfAborted()`): what it throws
 * after an abort is not reported as a failure.
 */
export class LeaseAbortedError extends ParceloError {
  /** @param {'CANCEL' | 'LOST' | 'RELEASE' | 'JOB_GONE' | 'SHUTDOWN'} why @param {string} [detail] */
  constructor(why, detail = '') {
    super(detail ? `lease aborted: ${why} (${detail})` : `lease aborted: ${why}`);
    this.why = why;
  }
}
