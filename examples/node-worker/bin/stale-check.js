#!/usr/bin/env node
// stale-check: proves a zombie's completion is refused. It opens a Work stream, takes one lease,
// does not heartbeat it, waits until longer than its job's lease_ttl (from JobInfo) has passed,
// completes it anyway and prints the answer as one line: `rejected <fence> <REASON>` (the
// expected `rejected <fence> STALE_FENCE`) or `accepted <fence>`. Exit 0 once it has an answer,
// 1 when the coordinator ends the stream first or nothing is granted in time, 2 on bad usage.

import { parseArgs } from 'node:util';
import { connect, durationMs, enumName, SDK } from '../proto.js';

const USAGE = 'usage: stale-check.js --target HOST:PORT [--queue Q] [--wait-lease S]';
/** A lease expires at the first expiry sweep after its TTL; this much more is surely past it. */
const MARGIN_MS = 700;

let args;
try {
  args = parseArgs({
    options: {
      target: { type: 'string' },
      queue: { type: 'string', default: 'default' },
      'wait-lease': { type: 'string', default: '20' },
    },
  }).values;
} catch (err) {
  process.stderr.write(`${/** @type {Error} */ (err).message}\n${USAGE}\n`);
  process.exit(2);
}
if (!args.target) {
  process.stderr.write(`--target is required\n${USAGE}\n`);
  process.exit(2);
}

/** @param {string} message */
function fail(message) {
  process.stderr.write(`stale-check: ${message}\n`);
  process.exit(1);
}

const client = connect(args.target);
const call = client.Work();
const noLease = setTimeout(() => fail('no lease granted in time'), Number(args['wait-lease']) * 1000);
/** @type {string | null} */
let fence = null;

call.on('data', (/** @type {any} */ msg) => {
  if (msg.msg === 'welcome') {
    call.write({ lease: { count: 1 } });
  } else if (msg.msg === 'grant' && fence === null) {
    clearTimeout(noLease);
    const [lease] = msg.grant.leases;
    fence = /** @type {string} */ (lease.fence);
    const info = msg.grant.jobs.find((/** @type {any} */ job) => job.job_id === lease.job_id);
    const ttlMs = durationMs(info?.lease_ttl) ?? 30_000;
    process.stderr.write(
      `stale-check: holding lease ${fence} of ${lease.job_id} for ${ttlMs + MARGIN_MS} ms (TTL ${ttlMs} ms) without heartbeats\n`,
    );
    setTimeout(() => call.write({ complete: { fences: [fence], request_id: '1' } }), ttlMs + MARGIN_MS);
  } else if (msg.msg === 'complete') {
    const { accepted, rejected } = msg.complete;
    if (rejected.length)
      console.log(`rejected ${rejected[0].fence} ${enumName(rejected[0].reason, 'REJECT_REASON_')}`);
    else console.log(`accepted ${accepted[0]}`);
    call.end();
    client.close();
    process.exit(0);
  }
});
call.on('error', (/** @type {Error} */ err) => fail(`stream failed: ${err.message}`));
call.on('end', () => fail('the coordinator ended the stream'));
call.write({ hello: { worker_id: `stale-check:${process.pid}`, queues: [args.queue], sdk: SDK } });
