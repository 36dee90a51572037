// The pure pieces: the outbox, the credit rule, reconnect delays, the context, the wire encoding.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Context, range } from '../context.js';
import { COMPLETION_BATCH } from '../defaults.js';
import { Outbox } from '../outbox.js';
import { decodePacked, durationMs, encodeResult, enumName, workerServiceClient, wireU64 } from '../proto.js';
import { isLeafRun, leaves, RunResult } from '../runs.js';
import { backoffDelays, creditToAsk } from '../worker.js';

test('outbox batches results with fresh request ids and forgets what answers settle', () => {
  const box = new Outbox();
  box.complete('1');
  box.skip('2');
  box.fail({ fence: '3', message: 'boom' });
  assert.equal(box.pending, 3);
  const [complete, fail] = box.take();
  assert.deepEqual(complete, { complete: { fences: ['1'], skipped: ['2'], request_id: '1' } });
  assert.deepEqual(fail, { fail: { failures: [{ fence: '3', message: 'boom' }], request_id: '2' } });
  assert.equal(box.pending, 0);
  assert.equal(box.unanswered, 3);
  const settled = box.settle({
    accepted: ['1'],
    rejected: [{ fence: '2', reason: 'REJECT_REASON_STALE_FENCE', message: '' }],
    request_id: '1',
  });
  assert.deepEqual(settled.missing, []);
  assert.equal(box.unanswered, 1); // a rejected result is dropped, not sent again
  box.settle({ accepted: ['3'], rejected: [], request_id: '2' });
  assert.equal(box.unanswered, 0);
});

test('outbox sends every unanswered result again after requeue, in the order first added', () => {
  const box = new Outbox();
  for (const fence of ['5', '4', '6']) box.complete(fence);
  box.fail({ fence: '7', message: 'released', released: true, cursor: '0' });
  box.take();
  box.settle({ accepted: ['4'], rejected: [], request_id: '1' }); // an answer that left out 5 and 6
  box.requeue();
  const again = box.take();
  assert.deepEqual(again[0].complete.fences, ['5', '6']);
  assert.deepEqual(again[1].fail.failures, [
    { fence: '7', message: 'released', released: true, cursor: '0' },
  ]);
  assert.deepEqual([again[0].complete.request_id, again[1].fail.request_id], ['3', '4']); // never reused
});

test('outbox names fences an answer left out, and refuses two results for one lease', () => {
  const box = new Outbox();
  box.complete('1');
  box.complete('2');
  box.take();
  assert.deepEqual(box.settle({ accepted: ['1'], rejected: [], request_id: '1' }).missing, ['2']);
  assert.throws(() => box.complete('2'), /already on its way/);
});

test('outbox splits large batches', () => {
  const box = new Outbox();
  for (let i = 0; i < COMPLETION_BATCH + 3; i++) box.complete(String(i));
  const msgs = box.take();
  assert.deepEqual(
    msgs.map((m) => m.complete.fences.length),
    [COMPLETION_BATCH, 3],
  );
});

test('credit keeps at most capacity leases held or coming, asked in batches', () => {
  assert.equal(creditToAsk({ capacity: 68, held: 0, outstanding: 0, batch: 16 }), 68);
  assert.equal(creditToAsk({ capacity: 68, held: 60, outstanding: 0, batch: 16 }), 0); // wait for a batch
  assert.equal(creditToAsk({ capacity: 68, held: 50, outstanding: 2, batch: 16 }), 16);
  assert.equal(creditToAsk({ capacity: 68, held: 68, outstanding: 0, batch: 16 }), 0);
  assert.equal(creditToAsk({ capacity: 68, held: 0, outstanding: 68, batch: 16 }), 0);
  assert.equal(creditToAsk({ capacity: 1, held: 0, outstanding: 0, batch: 1 }), 1);
  assert.equal(creditToAsk({ capacity: 5, held: 0, outstanding: 0, batch: 16 }), 5); // nothing in hand: ask
});

test('reconnect delays grow to the cap with bounded jitter', () => {
  const low = backoffDelays(100, 1000, 0.2, () => 0);
  assert.deepEqual(
    Array.from({ length: 6 }, () => Math.round(low.next().value)),
    [80, 160, 320, 640, 800, 800],
  );
  const high = backoffDelays(100, 1000, 0.2, () => 1);
  assert.equal(Math.round(high.next().value), 120);
});

test('a checkpoint must lie within the leaf; details become bytes', () => {
  const ctx = new Context({
    jobId: 'j',
    params: {},
    attempt: 1,
    fence: 1n,
    leaf: range(100n, 200n),
    cursor: 100n,
    details: null,
    signal: new AbortController().signal,
  });
  assert.equal(ctx.lastCheckpoint, null);
  assert.throws(() => ctx.checkpoint(99), RangeError);
  assert.throws(() => ctx.checkpoint(201n), RangeError);
  ctx.checkpoint(200n, 'done');
  assert.deepEqual(ctx.lastCheckpoint, [200n, Buffer.from('done')]);
  ctx.checkpoint('150');
  assert.deepEqual(ctx.lastCheckpoint, [150n, Buffer.alloc(0)]);
  ctx.progress('half');
  assert.equal(ctx.takeMessage(), 'half');
  assert.equal(ctx.takeMessage(), '');
});

test('a heartbeat cursor is on the wire when set, even at 0, and absent otherwise', () => {
  const work = workerServiceClient().service.Work;
  const bytes = work.requestSerialize({
    heartbeat: { leases: [{ fence: '5', cursor: '0' }, { fence: '6' }] },
  });
  // WorkRequest.heartbeat(3) { leases(1) {fence(1)=5, cursor(2)=0}, leases(1) {fence(1)=6} }
  assert.equal(bytes.toString('hex'), '1a0a0a0408051000' + '0a020806');
  const back = work.requestDeserialize(bytes).heartbeat.leases;
  assert.equal(back[0].cursor, '0');
  assert.equal(back[1].cursor, undefined);
});

test('uint64 values go out as decimal strings and come back exact', () => {
  const top = (1n << 64n) - 1n;
  assert.equal(wireU64(top), '18446744073709551615');
  assert.throws(() => wireU64(top + 1n), RangeError);
  assert.throws(() => wireU64(-1), RangeError);
  const work = workerServiceClient().service.Work;
  const decoded = work.responseDeserialize(
    work.responseSerialize({
      grant: { leases: [{ fence: '1', start: wireU64(top - 1n), end: wireU64(top) }], jobs: [] },
    }),
  );
  assert.equal(BigInt(decoded.grant.leases[0].end), top);
});

test('durations and enum names', () => {
  assert.equal(durationMs(null), null);
  assert.equal(durationMs({ seconds: '1', nanos: 500_000_000 }), 1500);
  assert.equal(enumName('REJECT_REASON_STALE_FENCE', 'REJECT_REASON_'), 'STALE_FENCE');
  assert.equal(enumName(7, 'REJECT_REASON_'), '7');
});

test('outbox sends results beside their fences, or none when no leaf gave one', () => {
  const box = new Outbox();
  box.complete('1', '7');
  box.complete('2');
  box.skip('3');
  assert.deepEqual(box.take(), [
    { complete: { fences: ['1', '2'], skipped: ['3'], request_id: '1', results_json: ['7', ''] } },
  ]);
  box.complete('4');
  assert.deepEqual(box.take(), [{ complete: { fences: ['4'], skipped: [], request_id: '2' } }]);
  box.requeue(); // nothing answered: all sent again, each result with its fence
  assert.deepEqual(box.take()[0].complete.results_json, ['7', '', '']);
});

test('results are JSON with BigInts as exact integers', () => {
  assert.equal(
    encodeResult({ n: (1n << 70n) + 1n, list: [2n, 'x'] }),
    '{"n":1180591620717411303425,"list":[2,"x"]}',
  );
  assert.equal(encodeResult(3), '3');
  assert.throws(() => encodeResult(undefined), /not a JSON value/);
  assert.throws(() => encodeResult({ s: '\u0000bigint:1' }), /BigInt mark/);
  const cycle = {};
  cycle.self = cycle;
  assert.throws(() => encodeResult(cycle), TypeError);
});

/** A context for [100, 200) resumed at `cursor`. @param {bigint} [cursor] */
function leafContext(cursor = 100n) {
  return new Context({
    jobId: 'j',
    params: {},
    attempt: 1,
    fence: 1n,
    leaf: range(100n, 200n),
    cursor,
    details: null,
    signal: new AbortController().signal,
  });
}

test('claims are true below the end and keep one past the highest position claimed', () => {
  const ctx = leafContext();
  assert.deepEqual([ctx.end, ctx.claimed, ctx.splittable, ctx.shrunkTo], [200n, 100n, false, null]);
  assert.equal(ctx.claim(100n), true);
  assert.equal(ctx.claim('149'), true); // blocks: the first id of each
  assert.equal(ctx.claim(120), true); // lower than before: the high-water mark stays
  assert.deepEqual([ctx.claimed, ctx.splittable], [150n, true]);
  assert.equal(ctx.claim(199n), true);
  assert.equal(ctx.claim(200n), false);
  assert.equal(ctx.claimed, 200n); // a refused claim claims nothing
  assert.equal(leafContext(130n).claimed, 130n); // before any claim: the cursor
});

test('a shrink is accepted only when nothing at or past the new end was claimed', () => {
  const ctx = leafContext();
  assert.equal(ctx.offerShrink(150n), false); // never claimed: a handler that may not look at end
  assert.equal(ctx.end, 200n);
  ctx.claim(100n);
  ctx.claim(119n);
  assert.equal(ctx.offerShrink(110n), false); // 119 was claimed, at or past 110
  assert.equal(ctx.offerShrink(150n), true);
  assert.deepEqual([ctx.end, ctx.shrunkTo], [150n, 150n]);
  assert.equal(ctx.claim(149n), true);
  assert.equal(ctx.claim(150n), false); // the rest is another lease's
  assert.equal(ctx.claim(170n), false);
  assert.equal(ctx.offerShrink('150'), true); // the same end again: accepted again
  assert.equal(ctx.offerShrink(175n), false); // the end only shrinks
  assert.equal(ctx.offerShrink(100n), false); // not within the leaf
  assert.equal(ctx.claimed, 150n);
  assert.equal(ctx.offerShrink(125n), false);
  assert.deepEqual([ctx.end, ctx.shrunkTo], [150n, 150n]);
});

test('a shrink exactly at the claimed mark is accepted, and a shrink to the lease end is not one', () => {
  const ctx = leafContext();
  for (let id = 100n; id < 125n; id++) ctx.claim(id);
  assert.equal(ctx.offerShrink(200n), false); // not a split: new_end is below the end
  assert.equal(ctx.shrunkTo, null);
  assert.equal(ctx.offerShrink(125n), true);
  assert.equal(ctx.claim(124n), true); // below the end: still true, and changes nothing
  assert.equal(ctx.claim(125n), false);
});

test('outbox sends the end of each shrunk lease beside its fence, again after requeue', () => {
  const box = new Outbox();
  box.complete('1', '7', '150');
  box.complete('2', '3');
  box.skip('3');
  assert.deepEqual(box.take(), [
    {
      complete: {
        fences: ['1', '2'],
        skipped: ['3'],
        request_id: '1',
        results_json: ['7', '3'],
        ends: ['150', '0'],
      },
    },
  ]);
  box.complete('4');
  assert.deepEqual(box.take(), [{ complete: { fences: ['4'], skipped: [], request_id: '2' } }]); // none shrank
  box.settle({ accepted: ['2', '3'], rejected: [], request_id: '1' });
  box.requeue(); // a new stream: 1 and 4 again, each with its end
  assert.deepEqual(box.take(), [
    {
      complete: {
        fences: ['1', '4'],
        skipped: [],
        request_id: '3',
        results_json: ['7', ''],
        ends: ['150', '0'],
      },
    },
  ]);
});

test('a heartbeat carries splittable, claimed and the shrink answer on the wire', () => {
  const work = workerServiceClient().service.Work;
  const back = work.requestDeserialize(
    work.requestSerialize({
      heartbeat: {
        leases: [
          { fence: '5', splittable: true, claimed: '120', shrink: { new_end: '150', accepted: true } },
        ],
      },
    }),
  ).heartbeat.leases[0];
  assert.deepEqual(
    [back.splittable, back.claimed, back.shrink.new_end, back.shrink.accepted],
    [true, '120', '150', true],
  );
  const complete = work.requestDeserialize(
    work.requestSerialize({ complete: { fences: ['5'], ends: ['150'] } }),
  );
  assert.deepEqual(complete.complete.ends, ['150']);
});

// -- packed grants (docs/protocol.md, "Packed grants") ------------------------------------------

/** The page's example: three leases of job a (the second a retry resumed at 1,500), one probe of b. */
function pageExample() {
  return {
    run_job_ids: ['a', 'b'],
    run_lengths: [3, 1],
    fences: ['41', '42', '43', '44'],
    starts: ['0', '1000', '2000', '0'],
    ends: ['1000', '2000', '3000', '8000'],
    attempts: [1, 2, 1, 1],
    probes: [3],
    probe_is_leaf: [false],
    resumed: [1],
    cursors: ['1500'],
    details: [Buffer.from('<opaque>')],
  };
}

test('a packed grant decodes to the leases of the page example: jobs by runs, attempts, probes, resumed', () => {
  const leases = decodePacked(pageExample());
  assert.deepEqual(
    leases.map((l) => [
      l.fence,
      l.job_id,
      l.kind,
      l.start,
      l.end,
      l.attempt,
      l.cursor,
      l.details.toString(),
      l.is_leaf,
    ]),
    [
      ['41', 'a', 'LEASE_KIND_LEAF', '0', '1000', 1, '0', '', true],
      ['42', 'a', 'LEASE_KIND_LEAF', '1000', '2000', 2, '1500', '<opaque>', true],
      ['43', 'a', 'LEASE_KIND_LEAF', '2000', '3000', 1, '2000', '', true],
      ['44', 'b', 'LEASE_KIND_PROBE', '0', '8000', 1, '0', '', false],
    ],
  );
});

test('a packed grant without attempts is all first attempts; a job may have several runs; uint64 stays exact', () => {
  const big = ((1n << 64n) - 2n).toString();
  const leases = decodePacked({
    run_job_ids: ['a', 'b', 'a'],
    run_lengths: [1, 1, 2],
    fences: ['1', '2', '3', big],
    starts: ['0', '5', '10', '18446744073709551604'],
    ends: ['5', '10', '15', big],
    attempts: [],
    probes: [1, 2],
    probe_is_leaf: [true, false],
    resumed: [],
    cursors: [],
    details: [],
  });
  assert.deepEqual(
    leases.map((l) => [l.fence, l.job_id, l.attempt, l.kind, l.is_leaf, l.end]),
    [
      ['1', 'a', 1, 'LEASE_KIND_LEAF', true, '5'],
      ['2', 'b', 1, 'LEASE_KIND_PROBE', true, '10'],
      ['3', 'a', 1, 'LEASE_KIND_PROBE', false, '15'],
      [big, 'a', 1, 'LEASE_KIND_LEAF', true, big],
    ],
  );
});

test('a packed grant decodes the same through the real protobuf encoding', () => {
  // A WorkResponse{grant{packed}} encoded as a coordinator sends it, read back as the worker reads it.
  const work = /** @type {any} */ (workerServiceClient().service.Work);
  const msg = work.responseDeserialize(
    work.responseSerialize({ grant: { packed: pageExample(), jobs: [] } }),
  );
  assert.deepEqual(msg.grant.leases, []);
  const leases = decodePacked(msg.grant.packed);
  assert.deepEqual(
    leases.map((l) => [l.fence, l.job_id, l.attempt, l.kind, l.cursor, l.details.toString()]),
    [
      ['41', 'a', 1, 'LEASE_KIND_LEAF', '0', ''],
      ['42', 'a', 2, 'LEASE_KIND_LEAF', '1500', '<opaque>'],
      ['43', 'a', 1, 'LEASE_KIND_LEAF', '2000', ''],
      ['44', 'b', 1, 'LEASE_KIND_PROBE', '0', ''],
    ],
  );
});

test('a packed grant that breaks the rules is refused', () => {
  /** @type {[string, (p: any) => void][]} */
  const cases = [
    ['differ in length', (p) => p.ends.pop()],
    ['attempts', (p) => p.attempts.pop()],
    ['more than the leases', (p) => (p.run_lengths[1] = 2)],
    ['fewer than the leases', (p) => (p.run_lengths[0] = 2)],
    ['probe_is_leaf', (p) => p.probe_is_leaf.push(true)],
    ['probes is not increasing', (p) => (p.probes[0] = 4)],
    ['cursors and details', (p) => p.details.push(Buffer.alloc(0))],
    ['resumed is not increasing', (p) => (p.resumed = [1, 1])],
  ];
  for (const [why, spoil] of cases) {
    const packed = pageExample();
    spoil(packed);
    if (why === 'resumed is not increasing') {
      packed.cursors.push('1600');
      packed.details.push(Buffer.alloc(0));
    }
    assert.throws(() => decodePacked(packed), new RegExp(why), why);
  }
});

// -- leaf runs (docs/protocol.md, "Leaf runs") ------------------------------------------------

/** The split rule written out recursively, to check the generator against. */
function byRule(/** @type {bigint} */ start, /** @type {bigint} */ end, /** @type {bigint} */ size) {
  if (end - start <= size) return [[start, end]];
  const mid = start + (end - start) / 2n;
  return [...byRule(start, mid, size), ...byRule(mid, end, size)];
}

test('a run splits by the rule: mid = start + (end - start) / 2, until at most max_range_size wide', () => {
  assert.deepEqual([...leaves(640n, 1280n, 10n)].length, 64);
  assert.deepEqual([...leaves(640n, 1280n, 10n)][0], [640n, 650n]);
  // Odd widths: the left half is the smaller one, and leaves may be narrower than the size.
  assert.deepEqual(
    [...leaves(0n, 25n, 10n)],
    [
      [0n, 6n],
      [6n, 12n],
      [12n, 18n],
      [18n, 25n],
    ],
  );
  assert.deepEqual([...leaves(3n, 13n, 10n)], [[3n, 13n]]);
  for (const [start, end, size] of [
    [0n, 40_960n, 10n],
    [7n, 1_003n, 10n],
    [(1n << 64n) - 1_000_001n, (1n << 64n) - 1n, 997n],
  ]) {
    const got = [...leaves(start, end, size)];
    assert.deepEqual(got, byRule(start, end, size));
    assert.ok(got.every(([s, e]) => e - s <= size && e > s));
  }
  assert.throws(() => [...leaves(0n, 10n, 0n)], RangeError);
});

test('a lease is a leaf run when it is a leaf lease wider than its job max_range_size', () => {
  const leaf = { kind: 'LEASE_KIND_LEAF', start: '100', end: '120' };
  assert.equal(isLeafRun(leaf, 10n), true);
  assert.equal(isLeafRun(leaf, 20n), false);
  assert.equal(isLeafRun(leaf, 0n), false); // no JobInfo: never guessed
  assert.equal(isLeafRun({ ...leaf, kind: 'LEASE_KIND_PROBE' }, 10n), false);
});

test('a run combines its leaves results by the job reduce, exactly', () => {
  const sum = new RunResult('REDUCE_SUM');
  for (const v of [1, 2n, undefined, null, 1n << 70n]) assert.equal(sum.add(v), '');
  assert.equal(sum.value, 3n + (1n << 70n));
  assert.equal(encodeResult(sum.value), (3n + (1n << 70n)).toString());
  const floats = new RunResult('REDUCE_SUM');
  floats.add(1);
  floats.add(0.5);
  assert.equal(floats.value, 1.5);
  const min = new RunResult('REDUCE_MIN');
  for (const v of [5, 3n, 9, -2.5]) min.add(v);
  assert.equal(min.value, -2.5);
  const max = new RunResult('REDUCE_MAX');
  for (const v of [5, 3n, 12n, -2.5]) max.add(v);
  assert.equal(max.value, 12n);
  assert.equal(new RunResult('REDUCE_SUM').value, null); // no leaf gave one: no result
});

test('a leaf result a numeric reduce cannot combine is refused with the coordinator message', () => {
  const sum = new RunResult('REDUCE_SUM');
  assert.equal(sum.add('12'), 'reduce sum combines numbers; the result is a string');
  assert.equal(sum.add(true), 'reduce sum combines numbers; the result is a boolean');
  assert.equal(new RunResult('REDUCE_MAX').add([1]), 'reduce max combines numbers; the result is an array');
  assert.equal(
    new RunResult('REDUCE_MIN').add({ a: 1 }),
    'reduce min combines numbers; the result is an object',
  );
  assert.equal(sum.add(NaN), 'the result is not JSON: NaN is not a JSON number');
  assert.equal(sum.add(-Infinity), 'the result is not JSON: -Infinity is not a JSON number');
  assert.equal(sum.value, null); // refused results are not combined
  // Without a numeric reduce nothing is combined (and nothing refused).
  assert.equal(new RunResult('REDUCE_NONE').add('x'), '');
});

test("outbox sends handler time and a run's failed leaves with it, again after requeue", () => {
  const box = new Outbox();
  const failed = [{ fence: '5', start: '30', end: '40', message: 'Error: x', permanent: false }];
  box.complete('4', '', '0', '12');
  box.complete('5', '60', '0', '800', failed);
  const [first] = box.take();
  const c = /** @type {any} */ (first).complete;
  assert.deepEqual(
    [c.fences, c.results_json, c.handler_us, c.failed_leaves, c.ends],
    [['4', '5'], ['', '60'], ['12', '800'], failed, undefined],
  );
  box.requeue();
  const [again] = box.take();
  const a = /** @type {any} */ (again).complete;
  assert.deepEqual([a.fences, a.handler_us, a.failed_leaves], [['4', '5'], ['12', '800'], failed]);
  box.complete('6');
  const [unmeasured] = box.take();
  assert.equal(/** @type {any} */ (unmeasured).complete.handler_us, undefined);
});
