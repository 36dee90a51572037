// Results on their way to the coordinator: those waiting for the next batch, and every one sent
// but not yet answered, so a new stream can send them all again (docs/protocol.md, "Sent again").
// Plain data and no I/O, so the rules are unit-tested without a coordinator (test/outbox.test.js).

import { COMPLETION_BATCH } from './defaults.js';

/**
 * A Failure as it goes on the wire (uint64 fields as decimal strings; `cursor` only with a checkpoint).
 * @typedef {{fence: string, message: string, permanent?: boolean, released?: boolean,
 *   cursor?: string, details?: Buffer}} WireFailure
 */

/**
 * A LeafFailure as it goes on the wire: a leaf of a leaf run (`fence`: the run's) whose handler failed.
 * @typedef {{fence: string, start: string, end: string, message: string, permanent: boolean}} WireLeafFailure
 */

/**
 * One result kept until answered (`result`: the leaf's result as JSON, '' for none; `end`: the end
 * the lease was run to after an accepted SHRINK or a leaf run's RELEASE, '0' for the lease's own
 * end; `us`: how long its handler ran, in microseconds, '0' for not measured; `failedLeaves`: a
 * leaf run's failed leaves).
 * @typedef {{kind: 'complete', result: string, end: string, us: string, failedLeaves: WireLeafFailure[]} |
 *   {kind: 'skip'} |
 *   {kind: 'fail', failure: WireFailure}} Result
 */

/**
 * What an answer (CompleteResponse or FailResponse) settled.
 * @typedef {{accepted: string[], rejected: {fence: string, reason: string, message: string}[],
 *   missing: string[]}} Settled
 */

export class Outbox {
  /** @type {Map<string, Result>} every result not answered yet, by fence, in the order they were added */
  #unacked = new Map();
  /** @type {string[]} */ #complete = [];
  /** @type {string[]} the result of each of #complete, '' for none */ #results = [];
  /** @type {string[]} the end of each of #complete, '0' for the lease's end */ #ends = [];
  /** @type {string[]} the handler time of each of #complete, '0' for not measured */ #us = [];
  /** @type {WireLeafFailure[][]} the failed leaves of each of #complete (leaf runs) */ #failedLeaves = [];
  /** @type {string[]} */ #skipped = [];
  /** @type {WireFailure[]} */ #failures = [];
  /** @type {Map<string, string[]>} fences of each request sent and not answered, by request_id */
  #inflight = new Map();
  #nextRequestId = 1n;

  /**
   * @param {string} fence @param {string} [result] the leaf's result as JSON ('' for none)
   * @param {string} [end] where the lease ended after an accepted SHRINK or a leaf run's RELEASE
   *   ('0': the lease's end)
   * @param {string} [us] how long the handler ran, in microseconds ('0': not measured)
   * @param {WireLeafFailure[]} [failedLeaves] a leaf run's leaves that failed
   */
  complete(fence, result = '', end = '0', us = '0', failedLeaves = []) {
    this.#add(fence, { kind: 'complete', result, end, us, failedLeaves });
    this.#queueComplete(fence, result, end, us, failedLeaves);
  }

  /**
   * @param {string} fence @param {string} result @param {string} end @param {string} us
   * @param {WireLeafFailure[]} failedLeaves
   */
  #queueComplete(fence, result, end, us, failedLeaves) {
    this.#complete.push(fence);
    this.#results.push(result);
    this.#ends.push(end);
    this.#us.push(us);
    this.#failedLeaves.push(failedLeaves);
  }

  /** @param {string} fence */
  skip(fence) {
    this.#add(fence, { kind: 'skip' });
    this.#skipped.push(fence);
  }

  /** @param {WireFailure} failure */
  fail(failure) {
    this.#add(failure.fence, { kind: 'fail', failure });
    this.#failures.push(failure);
  }

  /** @param {string} fence @param {Result} result */
  #add(fence, result) {
    if (this.#unacked.has(fence)) throw new Error(`a result for lease ${fence} is already on its way`);
    this.#unacked.set(fence, result);
  }

  /** Results waiting for the next batch. */
  get pending() {
    return this.#complete.length + this.#skipped.length + this.#failures.length;
  }

  /** Results sent or waiting and not answered yet. */
  get unanswered() {
    return this.#unacked.size;
  }

  /**
   * The WorkRequests carrying every pending result (at most COMPLETION_BATCH per message), each
   * with a new request_id; they count as in flight until answered.
   * @returns {object[]}
   */
  take() {
    const out = [];
    while (this.#complete.length || this.#skipped.length) {
      const fences = this.#complete.splice(0, COMPLETION_BATCH);
      const results = this.#results.splice(0, fences.length);
      const ends = this.#ends.splice(0, fences.length);
      const us = this.#us.splice(0, fences.length);
      const failedLeaves = this.#failedLeaves.splice(0, fences.length).flat();
      const skipped = this.#skipped.splice(0, COMPLETION_BATCH - fences.length);
      const request_id = this.#requestId([...fences, ...skipped]);
      /** @type {any} */
      const complete = { fences, skipped, request_id };
      // One result per fence, or none at all when no leaf of the batch gave one.
      if (results.some((r) => r !== '')) complete.results_json = results;
      // Likewise one end per fence (docs/protocol.md, "Dynamic splits"), when a lease of it shrank.
      if (ends.some((e) => e !== '0')) complete.ends = ends;
      // One handler time per fence (0 for probes), when some lease of the batch was measured.
      if (us.some((u) => u !== '0')) complete.handler_us = us;
      if (failedLeaves.length) complete.failed_leaves = failedLeaves;
      out.push({ complete });
    }
    while (this.#failures.length) {
      const failures = this.#failures.splice(0, COMPLETION_BATCH);
      const request_id = this.#requestId(failures.map((f) => f.fence));
      out.push({ fail: { failures, request_id } });
    }
    return out;
  }

  /** @param {string[]} fences @returns {string} */
  #requestId(fences) {
    const id = (this.#nextRequestId++).toString();
    this.#inflight.set(id, fences);
    return id;
  }

  /**
   * Forget what an answer settled: its accepted and rejected fences are done with, whatever the
   * reason (a rejected result did not count and must not be sent again).
   * @param {{accepted: string[], rejected: {fence: string, reason: string, message: string}[],
   *   request_id: string}} answer
   * @returns {Settled} `missing`: fences of that request the answer did not name (kept, sent again
   *   on the next stream); the contract says there are none.
   */
  settle(answer) {
    const named = new Set();
    for (const fence of answer.accepted) {
      named.add(fence);
      this.#unacked.delete(fence);
    }
    for (const rejection of answer.rejected) {
      named.add(rejection.fence);
      this.#unacked.delete(rejection.fence);
    }
    const sent = this.#inflight.get(answer.request_id) ?? [];
    this.#inflight.delete(answer.request_id);
    const missing = sent.filter((fence) => !named.has(fence) && this.#unacked.has(fence));
    return { accepted: answer.accepted, rejected: answer.rejected, missing };
  }

  /**
   * A new stream: every unanswered result goes into the next batch again, in the order it was
   * first added; requests of the old stream will never be answered.
   */
  requeue() {
    this.#complete = [];
    this.#results = [];
    this.#ends = [];
    this.#us = [];
    this.#failedLeaves = [];
    this.#skipped = [];
    this.#failures = [];
    this.#inflight.clear();
    for (const [fence, result] of this.#unacked) {
      if (result.kind === 'complete') {
        this.#queueComplete(fence, result.result, result.end, result.us, result.failedLeaves);
      } else if (result.kind === 'skip') this.#skipped.push(fence);
      else this.#failures.push(result.failure);
    }
  }
}
