// The worker against a scripted coordinator (test/fake-coordinator.js): what it sends, message by
// message, for directives, reconnects, credit and the drain.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { PermanentError, runWorker } from '../worker.js';
import { FakeCoordinator, grant, quiet } from './fake-coordinator.js';

/** @type {FakeCoordinator} */
let coord;
before(async () => {
  coord = await new FakeCoordinator().start();
});
after(() => coord.stop());

/** A handler that holds its lease until aborted, after checkpointing 5 ids in. */
async function holdUntilAborted(range, ctx) {
  ctx.checkpoint(range.start + 5n, 'five');
  await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
}

test('hello names the worker; the first credit is concurrency + prefetch', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: async () => {},
    concurrency: 3,
    prefetch: 2,
    workerId: 'w1',
    queues: ['a', 'b'],
    logger: quiet,
  });
  const stream = await coord.stream();
  const hello = await stream.accept();
  assert.deepEqual(
    [hello.worker_id, hello.queues, hello.sdk.startsWith('parcelo-node/')],
    ['w1', ['a', 'b'], true],
  );
  assert.equal((await stream.next('lease')).count, 5);
  await worker.stop();
});

test('LOST and CANCEL report nothing; RELEASE gives the lease back with its checkpoint', async () => {
  const seen = [];
  const worker = runWorker({
    target: coord.target,
    handler: async (range, ctx) => {
      seen.push([range.start, ctx.params, ctx.attempt, ctx.fence]);
      await holdUntilAborted(range, ctx);
    },
    concurrency: 3,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([1, 2, 3]));
  let beat;
  do beat = await stream.next('heartbeat');
  while (!beat.leases.every((l) => l.cursor !== undefined));
  assert.deepEqual(
    beat.leases.map((l) => [l.fence, l.cursor, l.details.toString()]),
    [
      ['1', '105', 'five'],
      ['2', '205', 'five'],
      ['3', '305', 'five'],
    ],
  );
  assert.deepEqual(seen[0], [100n, { x: 1 }, 1, 1n]);
  stream.send({
    heartbeat: {
      directives: [
        { fence: '1', action: 'DIRECTIVE_ACTION_LOST' },
        { fence: '2', action: 'DIRECTIVE_ACTION_RELEASE' },
        { fence: '3', action: 'DIRECTIVE_ACTION_CANCEL', reason: 'cancelled' },
      ],
    },
  });
  const fail = await stream.next('fail');
  assert.deepEqual(
    fail.failures.map((f) => [f.fence, f.released, f.cursor, f.details.toString()]),
    [['2', true, '205', 'five']],
  );
  stream.send({ fail: { accepted: ['2'], rejected: [], request_id: fail.request_id } });
  await worker.stop();
  const results = stream.received.filter((m) => m.msg === 'complete' || m.msg === 'fail');
  assert.equal(results.length, 1);
  assert.deepEqual([worker.stats.dropped, worker.stats.released], [2, 1]);
});

test('failures carry the message, the checkpoint and whether they are permanent', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: async (range, ctx) => {
      if (range.start === 100n) {
        ctx.checkpoint(150n);
        throw new Error('flaky');
      }
      throw new PermanentError('bad');
    },
    concurrency: 2,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([1, 2]));
  const failures = [];
  while (failures.length < 2) failures.push(...(await stream.next('fail')).failures);
  failures.sort((a, b) => Number(a.fence) - Number(b.fence));
  assert.deepEqual(
    failures.map((f) => [f.fence, f.message, f.permanent, f.cursor]),
    [
      ['1', 'Error: flaky', false, '150'],
      ['2', 'PermanentError: bad', true, undefined],
    ],
  );
  stream.send({ fail: { accepted: ['1', '2'], rejected: [], request_id: '0' } });
  await worker.stop();
});

test('a result not answered is sent again on the next stream, with a new request id', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: async () => {},
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const first = await coord.stream();
  await first.accept();
  await first.next('lease');
  first.send(grant([7]));
  const sent = await first.next('complete');
  assert.deepEqual([sent.fences, sent.worker_id], [['7'], worker.workerId]);
  first.call.end(); // the coordinator goes away without answering
  const second = await coord.stream();
  await second.accept();
  const again = await second.next('complete');
  assert.deepEqual(again.fences, ['7']);
  assert.notEqual(again.request_id, sent.request_id);
  second.send({ complete: { accepted: ['7'], rejected: [], request_id: again.request_id } });
  await worker.stop();
  assert.deepEqual([worker.stats.completed, worker.stats.connects], [1, 2]);
});

test('credit asked and leases held never exceed concurrency + prefetch', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: () => sleep(5),
    concurrency: 2,
    prefetch: 4,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  let credit = 0;
  let held = 0;
  let fence = 0;
  let answered = 0;
  while (fence < 40) {
    const msg = await stream.next();
    if (msg.msg === 'lease') credit += msg.lease.count;
    if (msg.msg === 'complete') {
      held -= msg.complete.fences.length;
      answered += msg.complete.fences.length;
      stream.send({
        complete: { accepted: msg.complete.fences, rejected: [], request_id: msg.complete.request_id },
      });
    }
    assert.ok(credit + held <= 6, `credit ${credit} + held ${held} > 6`);
    const n = Math.min(credit, 3); // grant in small pieces, as work trickles in
    if (n > 0) {
      stream.send(grant(Array.from({ length: n }, () => ++fence)));
      credit -= n;
      held += n;
    }
  }
  while (answered < fence) {
    const complete = await stream.next('complete');
    answered += complete.fences.length;
    stream.send({ complete: { accepted: complete.fences, rejected: [], request_id: complete.request_id } });
  }
  await worker.stop();
  assert.equal(worker.stats.completed, 40);
});

test('stop gives back leases not started, lets the running one finish, waits for answers, closes', async () => {
  let started = 0;
  const worker = runWorker({
    target: coord.target,
    handler: async () => {
      started += 1;
      await sleep(200);
    },
    concurrency: 1,
    prefetch: 2,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([1, 2, 3]));
  while (started === 0) await sleep(5);
  let stopped = false;
  const done = worker.stop().then(() => (stopped = true));
  const released = await stream.next('fail');
  assert.deepEqual(
    released.failures.map((f) => [f.fence, f.released]),
    [
      ['2', true],
      ['3', true],
    ],
  );
  stream.send({ fail: { accepted: ['2', '3'], rejected: [], request_id: released.request_id } });
  const complete = await stream.next('complete');
  assert.deepEqual(complete.fences, ['1']);
  await sleep(50);
  assert.equal(stopped, false); // still waiting for the answer
  stream.send({ complete: { accepted: ['1'], rejected: [], request_id: complete.request_id } });
  await done;
  assert.equal(started, 1);
  const leases = stream.received.filter((m) => m.msg === 'lease');
  assert.equal(leases.filter((m) => !m.lease.withdraw).length, 1); // no credit asked while stopping
  assert.equal(leases.at(-1).lease.withdraw, true); // the unused credit was taken back first
  while (!stream.ended) await sleep(5); // the worker half-closed its stream
});

test('a drain timeout aborts running handlers and gives their leases back', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: holdUntilAborted,
    concurrency: 1,
    prefetch: 0,
    drainTimeoutMs: 50,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([4]));
  await stream.next('heartbeat');
  const done = worker.stop();
  const released = await stream.next('fail');
  assert.deepEqual(
    released.failures.map((f) => [f.fence, f.released, f.cursor]),
    [['4', true, '405']],
  );
  stream.send({ fail: { accepted: ['4'], rejected: [], request_id: released.request_id } });
  await done;
});

test('JOB_GONE stops the other handlers of that job', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: async (range, ctx) => {
      if (range.start !== 100n) await holdUntilAborted(range, ctx);
    },
    concurrency: 2,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([1, 2]));
  const complete = await stream.next('complete');
  stream.send({
    complete: {
      accepted: [],
      rejected: [{ fence: '1', reason: 'REJECT_REASON_JOB_GONE', message: 'gone' }],
      request_id: complete.request_id,
    },
  });
  while (worker.stats.dropped === 0) await sleep(5);
  await worker.stop();
  assert.equal(stream.received.filter((m) => m.msg === 'fail').length, 0);
  assert.equal(worker.stats.rejected, 1);
});

test('probes are answered by shouldProcess: complete to process, skipped to prune; then more credit', async () => {
  const asked = [];
  const worker = runWorker({
    target: coord.target,
    handler: async () => assert.fail('a probe is not a leaf'),
    shouldProcess: async (range, isLeaf) => {
      asked.push([range.start, range.end, isLeaf]);
      return range.start === 0n;
    },
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  const probe = (/** @type {number} */ fence, /** @type {number} */ start) => ({
    fence: String(fence),
    job_id: 'j',
    kind: 'LEASE_KIND_PROBE',
    start: String(start),
    end: String(start + 50),
    attempt: 1,
    cursor: String(start),
    is_leaf: true,
  });
  stream.send({ grant: { leases: [probe(1, 0)], jobs: [{ job_id: 'j', params_json: '{}' }] } });
  const first = await stream.next('complete');
  assert.deepEqual([first.fences, first.skipped], [['1'], []]);
  assert.equal((await stream.next('lease')).count, 1); // answering a probe frees its place
  stream.send({ grant: { leases: [probe(2, 50)], jobs: [] } });
  const second = await stream.next('complete');
  assert.deepEqual([second.fences, second.skipped], [[], ['2']]);
  stream.send({ complete: { accepted: ['1'], rejected: [], request_id: first.request_id } });
  stream.send({ complete: { accepted: ['2'], rejected: [], request_id: second.request_id } });
  await worker.stop();
  assert.deepEqual(asked, [
    [0n, 50n, true],
    [50n, 100n, true],
  ]);
});

test('a lease lost before its handler started is neither run nor heartbeated again', async () => {
  const started = [];
  const worker = runWorker({
    target: coord.target,
    handler: (range, ctx) => {
      started.push(range.start);
      return holdUntilAborted(range, ctx);
    },
    concurrency: 1,
    prefetch: 1,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([1, 2]));
  await stream.next('heartbeat');
  stream.send({
    heartbeat: {
      directives: [
        { fence: '1', action: 'DIRECTIVE_ACTION_CONTINUE' },
        { fence: '2', action: 'DIRECTIVE_ACTION_LOST' },
      ],
    },
  });
  let beat;
  do beat = await stream.next('heartbeat');
  while (beat.leases.length !== 1);
  assert.deepEqual(
    beat.leases.map((/** @type {any} */ l) => l.fence),
    ['1'],
  );
  stream.send({ heartbeat: { directives: [{ fence: '1', action: 'DIRECTIVE_ACTION_RELEASE' }] } });
  const released = await stream.next('fail');
  assert.deepEqual(
    released.failures.map((/** @type {any} */ f) => f.fence),
    ['1'],
  );
  stream.send({ fail: { accepted: ['1'], rejected: [], request_id: released.request_id } });
  await worker.stop();
  assert.deepEqual(started, [100n]); // lease 2 waited for the slot and was lost before it got one
});

test('heartbeats follow the shortest lease TTL held when the suggested interval is longer', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: holdUntilAborted,
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept({ heartbeat_interval: { seconds: 60, nanos: 0 } });
  await stream.next('lease');
  stream.send(grant([1], { lease_ttl: { seconds: 0, nanos: 300_000_000 } }));
  await stream.next('heartbeat', 500);
  const since = Date.now();
  await stream.next('heartbeat', 500);
  const gap = Date.now() - since;
  assert.ok(gap >= 50 && gap < 250, `heartbeats ${gap} ms apart for a 300 ms TTL`);
  stream.send({ heartbeat: { directives: [{ fence: '1', action: 'DIRECTIVE_ACTION_LOST' }] } });
  await worker.stop();
});

/**
 * A claiming handler: claims its ids one by one, pausing after the tenth until `go` resolves, and
 * returns how many it did (it stops at the first refused claim).
 * @param {Promise<void>} go @param {bigint[]} [claimed] every id claimed, in order
 */
function claimTen(go, claimed = []) {
  return async (/** @type {any} */ range, /** @type {any} */ ctx) => {
    let done = 0;
    for (let id = range.start; ctx.claim(id); id++) {
      claimed.push(id);
      done += 1;
      if (done === 10) await go;
    }
    return done;
  };
}

/** The dynamic-split fields of a heartbeat's leases, compactly. @param {any} beat */
function splitFields(beat) {
  return beat.leases.map((/** @type {any} */ l) => [
    l.fence,
    l.splittable,
    l.claimed,
    l.shrink ? [l.shrink.new_end, l.shrink.accepted] : null,
  ]);
}

/** @param {import('./fake-coordinator.js').FakeStream} stream @param {(beat: any) => boolean} until */
async function heartbeatWhere(stream, until) {
  for (;;) {
    const beat = await stream.next('heartbeat');
    if (until(beat)) return beat;
  }
}

/** @param {any} complete @returns {[string, string][]} fence and end ('0': the lease's) of each completion */
function endsOf(complete) {
  return complete.fences.map((/** @type {string} */ f, /** @type {number} */ i) => [
    f,
    complete.ends[i] ?? '0',
  ]);
}

test('SHRINK: accepted within what was claimed, answered at once, repeated, and sent as the end', async () => {
  let go = () => {};
  const claimed = [];
  const worker = runWorker({
    target: coord.target,
    handler: claimTen(new Promise((resolve) => (go = () => resolve(undefined))), claimed),
    concurrency: 1,
    prefetch: 1,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([1, 2], { reduce: 'REDUCE_SUM' }));
  // Lease 1 runs and claimed [100, 110); lease 2 waits for the slot: not splittable.
  const beat = await heartbeatWhere(stream, (b) => b.leases.some((l) => l.splittable));
  assert.deepEqual(splitFields(beat), [
    ['1', true, '110', null],
    ['2', false, '0', null],
  ]);
  stream.send({
    heartbeat: {
      directives: [
        { fence: '1', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '150', reason: 'idle workers' },
        { fence: '2', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '250', reason: 'idle workers' },
      ],
    },
  });
  // The answers, in a heartbeat of their own: lease 2 has no handler running, so it refuses.
  const answer = await heartbeatWhere(stream, (b) => b.leases.every((l) => l.shrink));
  assert.deepEqual(splitFields(answer), [
    ['1', true, '110', ['150', true]],
    ['2', false, '0', ['250', false]],
  ]);
  // A proposal below what was claimed is refused and changes nothing.
  stream.send({
    heartbeat: { directives: [{ fence: '1', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '105' }] },
  });
  const refused = await heartbeatWhere(stream, (b) => b.leases.length === 1);
  assert.deepEqual(splitFields(refused), [['1', true, '110', ['105', false]]]);
  // Every later heartbeat repeats the accepted shrink.
  const later = await heartbeatWhere(stream, (b) => b.leases.length === 2);
  assert.deepEqual(splitFields(later), [
    ['1', true, '110', ['150', true]],
    ['2', false, '0', null],
  ]);
  go();
  // Lease 1 stops at 150 and completes with that end; lease 2 runs whole (its end 0: the lease's).
  const ends = new Map();
  /** @type {Map<string, string>} */ const results = new Map();
  while (ends.size < 2) {
    const complete = await stream.next('complete');
    for (const [fence, end] of endsOf(complete)) ends.set(fence, end);
    complete.fences.forEach((/** @type {string} */ f, /** @type {number} */ i) =>
      results.set(f, complete.results_json[i]),
    );
    stream.send({ complete: { accepted: complete.fences, rejected: [], request_id: complete.request_id } });
  }
  assert.deepEqual(Object.fromEntries(ends), { 1: '150', 2: '0' });
  assert.deepEqual(Object.fromEntries(results), { 1: '50', 2: '100' });
  assert.equal(claimed.filter((id) => id < 200n).at(-1), 149n); // nothing claimed at or past 150
  await worker.stop();
});

test('a shrunk completion resent after a reconnect keeps its end; a repeated SHRINK is accepted again', async () => {
  let go = () => {};
  const worker = runWorker({
    target: coord.target,
    handler: claimTen(new Promise((resolve) => (go = () => resolve(undefined)))),
    concurrency: 2,
    prefetch: 0,
    logger: quiet,
  });
  const first = await coord.stream();
  await first.accept();
  await first.next('lease');
  first.send(grant([1]));
  await heartbeatWhere(first, (b) => b.leases[0]?.claimed === '110');
  first.send({
    heartbeat: { directives: [{ fence: '1', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '110' }] },
  });
  const answer = await heartbeatWhere(first, (b) => b.leases[0]?.shrink);
  assert.deepEqual(splitFields(answer), [['1', true, '110', ['110', true]]]);
  go(); // claim(110) is now false: the handler returns after its tenth id
  const sent = await first.next('complete');
  assert.deepEqual(endsOf(sent), [['1', '110']]);
  // The same proposal again (the coordinator had not read the answer): the lease finished, but it
  // ended there, so accepted again; a proposal for a lease the worker never had is refused.
  first.send({
    heartbeat: {
      directives: [
        { fence: '1', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '110' },
        { fence: '9', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '950' },
      ],
    },
  });
  const again = await heartbeatWhere(first, (b) => b.leases.length === 2);
  assert.deepEqual(splitFields(again), [
    ['1', false, '0', ['110', true]],
    ['9', false, '0', ['950', false]],
  ]);
  first.call.end(); // gone without answering the completion
  const second = await coord.stream();
  await second.accept();
  const resent = await second.next('complete');
  assert.deepEqual(endsOf(resent), [['1', '110']]);
  assert.ok(resent.ends.length === resent.fences.length);
  second.send({ complete: { accepted: ['1'], rejected: [], request_id: resent.request_id } });
  await worker.stop();
});

test('a handler that never claims is not splittable and refuses SHRINK', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: holdUntilAborted,
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(grant([3]));
  const beat = await stream.next('heartbeat');
  assert.deepEqual(splitFields(beat), [['3', false, '0', null]]);
  stream.send({
    heartbeat: { directives: [{ fence: '3', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '350' }] },
  });
  const answer = await heartbeatWhere(stream, (b) => b.leases[0]?.shrink);
  assert.deepEqual(splitFields(answer), [['3', false, '0', ['350', false]]]);
  const next = await stream.next('heartbeat');
  assert.deepEqual(splitFields(next), [['3', false, '0', null]]);
  stream.send({ heartbeat: { directives: [{ fence: '3', action: 'DIRECTIVE_ACTION_LOST' }] } });
  await worker.stop();
});

// -- packed grants and leaf runs (docs/protocol.md, "Packed grants", "Leaf runs") ----------------

/** JobInfo of job `j`: leaves of 10 ids, reduce sum. */
const RUN_JOB = {
  job_id: 'j',
  params_json: '{}',
  lease_ttl: { seconds: 30 },
  max_range_size: '10',
  reduce: 'REDUCE_SUM',
};

/**
 * A packed grant of job j: `leases` as [fence, start, end] (attempt 1, no checkpoint), plus extra columns.
 * @param {[number, number, number][]} leases @param {object} [extra]
 */
function packedGrant(leases, extra = {}) {
  return {
    grant: {
      leases: [],
      jobs: [RUN_JOB],
      packed: {
        run_job_ids: ['j'],
        run_lengths: [leases.length],
        fences: leases.map(([f]) => String(f)),
        starts: leases.map(([, s]) => String(s)),
        ends: leases.map(([, , e]) => String(e)),
        ...extra,
      },
    },
  };
}

/** Completions until every fence of `fences` was in one; returns them merged by fence. */
async function completions(/** @type {any} */ stream, /** @type {string[]} */ fences) {
  /** @type {Map<string, any>} */
  const byFence = new Map();
  while (!fences.every((f) => byFence.has(f))) {
    const c = await stream.next('complete');
    c.fences.forEach((/** @type {string} */ f, /** @type {number} */ i) =>
      byFence.set(f, {
        result: c.results_json[i] ?? '',
        us: c.handler_us[i] ?? '0',
        end: c.ends[i] ?? '0',
        failed: c.failed_leaves.filter((/** @type {any} */ l) => l.fence === f),
        request_id: c.request_id,
      }),
    );
  }
  return byFence;
}

test('hello asks for packed grants and leaf runs; a packed grant runs like Lease messages', async () => {
  const seen = [];
  const worker = runWorker({
    target: coord.target,
    handler: async (range, ctx) => {
      seen.push([range.start, range.end, ctx.attempt, ctx.cursor, ctx.details?.toString() ?? null]);
    },
    concurrency: 4,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  const hello = await stream.accept();
  assert.deepEqual([hello.packed_grants, hello.leaf_runs, hello.concurrency], [true, true, 4]);
  await stream.next('lease');
  stream.send(
    packedGrant(
      [
        [1, 0, 10],
        [2, 10, 20],
      ],
      { attempts: [1, 3], resumed: [1], cursors: ['15'], details: [Buffer.from('half')] },
    ),
  );
  const done = await completions(stream, ['1', '2']);
  assert.ok(Number(done.get('1').us) > 0 && Number(done.get('2').us) > 0); // handler_us is reported
  seen.sort((a, b) => Number(a[0] - b[0]));
  assert.deepEqual(seen, [
    [0n, 10n, 1, 0n, null],
    [15n, 20n, 3, 15n, 'half'],
  ]);
  stream.send({ complete: { accepted: ['1', '2'], rejected: [], request_id: done.get('2').request_id } });
  await worker.stop();
});

test('a leaf run runs its leaves in order in one slot and completes once, with exactly its failed leaf', async () => {
  /** @type {any[]} */
  const seen = [];
  let running = 0;
  let most = 0;
  const worker = runWorker({
    target: coord.target,
    handler: async (range, ctx) => {
      running += 1;
      most = Math.max(most, running);
      seen.push([range.start, range.end, ctx.leaf.start, ctx.cursor, ctx.fence, ctx.attempt]);
      ctx.checkpoint(range.start + 1n); // never sent for a run
      await sleep(2);
      running -= 1;
      if (range.start === 30n) throw new Error('flaky');
      return range.end - range.start;
    },
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(packedGrant([[5, 0, 80]])); // 8 leaves of 10
  const done = await completions(stream, ['5']);
  assert.deepEqual(
    seen.map(([s, e]) => [s, e]),
    [...Array(8)].map((_, i) => [BigInt(i * 10), BigInt(i * 10 + 10)]),
  );
  assert.ok(
    seen.every(
      ([s, , leaf, cursor, fence, attempt]) => leaf === s && cursor === s && fence === 5n && attempt === 1,
    ),
  );
  assert.equal(most, 1); // one after another
  const run = done.get('5');
  assert.deepEqual(run.failed, [
    { fence: '5', start: '30', end: '40', message: 'Error: flaky', permanent: false },
  ]);
  assert.equal(run.result, '70'); // seven leaves of 10 ids combined by reduce sum
  assert.equal(run.end, '0'); // it ran to its end
  assert.ok(Number(run.us) >= 8 * 1000, `handler_us ${run.us} sums the leaves`);
  // Heartbeats of the run never carried a cursor nor splittable.
  for (const msg of stream.received.filter((m) => m.msg === 'heartbeat')) {
    for (const beat of msg.heartbeat.leases)
      assert.deepEqual([beat.cursor, beat.splittable], [undefined, false]);
  }
  stream.send({ complete: { accepted: ['5'], rejected: [], request_id: run.request_id } });
  await worker.stop();
  assert.deepEqual([worker.stats.completed, worker.stats.failed], [7, 1]);
});

test('a leaf whose result the reduce cannot combine fails for good; PermanentError is permanent', async () => {
  const worker = runWorker({
    target: coord.target,
    handler: async (range) => {
      if (range.start === 10n) return 'twelve';
      if (range.start === 20n) throw new PermanentError('bad record');
      return 1;
    },
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  stream.send(packedGrant([[9, 0, 40]]));
  const run = (await completions(stream, ['9'])).get('9');
  assert.deepEqual(
    run.failed.map((/** @type {any} */ l) => [l.start, l.message, l.permanent]),
    [
      ['10', 'PermanentError: reduce sum combines numbers; the result is a string', true],
      ['20', 'PermanentError: bad record', true],
    ],
  );
  assert.equal(run.result, '2');
  stream.send({ complete: { accepted: ['9'], rejected: [], request_id: run.request_id } });
  await worker.stop();
});

test('a leaf run refuses SHRINK; RELEASE stops it after the leaf that runs (or gives it back unstarted); CANCEL reports nothing', async () => {
  /** @type {Map<bigint, () => void>} */
  const gates = new Map();
  /** @type {bigint[]} */
  const started = [];
  let aborted = 0;
  const worker = runWorker({
    target: coord.target,
    handler: async (range, ctx) => {
      started.push(range.start);
      if (range.start % 100n === 20n) {
        // The third leaf of each run waits for the test (or an abort).
        await new Promise((resolve, reject) => {
          gates.set(range.start, () => resolve(undefined));
          ctx.signal.addEventListener('abort', () => {
            aborted += 1;
            reject(ctx.signal.reason);
          });
        });
      }
      return 1n;
    },
    concurrency: 2,
    prefetch: 1,
    logger: quiet,
  });
  const stream = await coord.stream();
  await stream.accept();
  await stream.next('lease');
  // Two runs start (two slots); the third waits for a slot.
  stream.send(
    packedGrant([
      [1, 0, 80],
      [2, 100, 180],
      [3, 200, 280],
    ]),
  );
  while (!(gates.has(20n) && gates.has(120n))) await sleep(5);
  stream.send({
    heartbeat: {
      directives: [
        { fence: '1', action: 'DIRECTIVE_ACTION_SHRINK', new_end: '50' },
        { fence: '1', action: 'DIRECTIVE_ACTION_RELEASE' },
        { fence: '2', action: 'DIRECTIVE_ACTION_CANCEL', reason: 'cancelled' },
        { fence: '3', action: 'DIRECTIVE_ACTION_RELEASE' },
      ],
    },
  });
  let answer;
  do answer = await stream.next('heartbeat');
  while (!answer.leases.some((/** @type {any} */ l) => l.shrink));
  assert.deepEqual(
    answer.leases.map((/** @type {any} */ l) => [l.fence, l.shrink?.accepted, l.cursor]),
    [['1', false, undefined]],
  );
  // Run 3 had not started: given back. Run 2 was cancelled: its leaf aborted, nothing reported.
  const fail = await stream.next('fail');
  assert.deepEqual(
    fail.failures.map((/** @type {any} */ f) => [f.fence, f.released, f.cursor]),
    [['3', true, undefined]],
  );
  assert.equal(aborted, 1); // run 2's leaf; run 1's leaf was not aborted by the RELEASE
  /** @type {() => void} */ (gates.get(20n))();
  const run = (await completions(stream, ['1'])).get('1');
  assert.deepEqual([run.end, run.result, run.failed], ['30', '3', []]); // leaves 0, 10, 20 ran
  assert.ok(!started.includes(30n) && !started.includes(130n) && !started.some((s) => s >= 200n));
  stream.send({ complete: { accepted: ['1'], rejected: [], request_id: run.request_id } });
  stream.send({ fail: { accepted: ['3'], rejected: [], request_id: fail.request_id } });
  await sleep(50);
  assert.ok(!stream.received.some((m) => m.msg === 'complete' && m.complete.fences.includes('2')));
  await worker.stop();
});

test('a run completion is sent again after a reconnect, with its result, handler time and failed leaves', async () => {
  let fail = true;
  const worker = runWorker({
    target: coord.target,
    handler: async (range) => {
      if (range.start === 10n && fail) {
        fail = false;
        throw new Error('flaky');
      }
      return 2;
    },
    concurrency: 1,
    prefetch: 0,
    logger: quiet,
  });
  const first = await coord.stream();
  await first.accept();
  await first.next('lease');
  first.send(packedGrant([[4, 0, 40]])); // leaves [0, 10), [10, 20), [20, 30), [30, 40)
  const sent = (await completions(first, ['4'])).get('4');
  first.call.end(); // no answer
  const second = await coord.stream();
  await second.accept();
  const again = (await completions(second, ['4'])).get('4');
  assert.deepEqual([again.result, again.us, again.failed], [sent.result, sent.us, sent.failed]);
  assert.deepEqual(
    again.failed.map((/** @type {any} */ l) => [l.start, l.end]),
    [['10', '20']],
  );
  assert.equal(again.result, '6');
  second.send({ complete: { accepted: ['4'], rejected: [], request_id: again.request_id } });
  await worker.stop();
});
