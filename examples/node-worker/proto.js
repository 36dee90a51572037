// The wire: parcelo.v1 loaded at run time from the repository's proto/ folder (no generated code),
// and the few conversions between its plain-object messages and what handlers see.
//
// proto-loader options (docs/protocol.md): keepCase (field names as in the .proto), longs: String
// (every uint64 arrives as a decimal string; ranges become BigInt here), enums: String
// ('DIRECTIVE_ACTION_CANCEL'), defaults (absent scalars read as their zero value, absent messages
// as null), oneofs (a `msg` field names the member of WorkRequest/WorkResponse that is set).
// google/protobuf/duration.proto resolves from the copy of the well-known types proto-loader ships.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { MAX_RECEIVE_MESSAGE } from './defaults.js';

/** The folder holding parcelo/v1/*.proto: the repository's proto/, two levels up. */
export const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

export const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
});

/** This package's version, from package.json: the one place it is spelled. */
export const VERSION = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')).version;

/** What a worker tells the coordinator it runs (Hello.sdk). */
export const SDK = `parcelo-node/${VERSION}`;

/** @type {grpc.ServiceClientConstructor | undefined} */
let workerService;

/**
 * The WorkerService client constructor, loaded once.
 * @returns {grpc.ServiceClientConstructor}
 */
export function workerServiceClient() {
  if (workerService === undefined) {
    const definition = protoLoader.loadSync(['parcelo/v1/worker.proto'], LOADER_OPTIONS);
    const pkg = /** @type {any} */ (grpc.loadPackageDefinition(definition));
    workerService = pkg.parcelo.v1.WorkerService;
  }
  return /** @type {grpc.ServiceClientConstructor} */ (workerService);
}

/**
 * A WorkerService client for `target` (host:port, plaintext).
 * @param {string} target
 * @returns {any}
 */
export function connect(target) {
  const Client = workerServiceClient();
  return new Client(target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE,
  });
}

/**
 * Milliseconds of a google.protobuf.Duration as decoded (`{seconds: '30', nanos: 0}`), or null when unset.
 * @param {{seconds: string | number, nanos: number} | null | undefined} duration
 * @returns {number | null}
 */
export function durationMs(duration) {
  if (duration == null) return null;
  return Number(duration.seconds) * 1000 + Math.floor((duration.nanos || 0) / 1e6);
}

/**
 * A uint64 as proto-loader hands it over (a decimal string with longs: String) as a BigInt.
 * @param {string | number | bigint} value
 * @returns {bigint}
 */
export function u64(value) {
  return BigInt(value);
}

/**
 * A uint64 to send: a BigInt, a safe integer or a decimal string, as the decimal string protobufjs takes.
 * @param {string | number | bigint} value
 * @returns {string}
 */
export function wireU64(value) {
  const big = BigInt(value);
  if (big < 0n || big >= 1n << 64n) throw new RangeError(`${value} is not an unsigned 64-bit integer`);
  return big.toString();
}

/**
 * The short name of an enum value: 'REJECT_REASON_STALE_FENCE' -> 'STALE_FENCE'.
 * @param {string | number} value
 * @param {string} prefix e.g. 'REJECT_REASON_'
 * @returns {string}
 */
export function enumName(value, prefix) {
  const name = String(value);
  return name.startsWith(prefix) ? name.slice(prefix.length) : name;
}

/**
 * The leases of a PackedLeases (docs/protocol.md, "Packed grants") as Lease messages look once
 * decoded (uint64 fields as decimal strings, enums as names), so the rest of the worker reads one
 * shape. Throws a RangeError for columns that break the page's rules (a coordinator defect: the
 * worker ends the stream and reconnects).
 * @param {any} packed
 * @returns {any[]}
 */
export function decodePacked(packed) {
  const { run_job_ids: jobs, run_lengths: lengths, fences, starts, ends, attempts } = packed;
  const { probes, probe_is_leaf: probeIsLeaf, resumed, cursors, details } = packed;
  const n = fences.length;
  /** @param {string} why */
  const bad = (why) => {
    throw new RangeError(`packed grant: ${why}`);
  };
  if (starts.length !== n || ends.length !== n) bad('fences, starts and ends differ in length');
  if (attempts.length !== 0 && attempts.length !== n) bad('attempts is neither empty nor one per lease');
  if (jobs.length !== lengths.length) bad('run_job_ids and run_lengths differ in length');
  if (probeIsLeaf.length !== probes.length) bad('probe_is_leaf is not as long as probes');
  if (cursors.length !== resumed.length || details.length !== resumed.length)
    bad('cursors and details are not as long as resumed');
  /** @type {any[]} */
  const leases = [];
  for (let r = 0; r < jobs.length; r++) {
    for (let k = 0; k < lengths[r]; k++) {
      const i = leases.length;
      if (i >= n) bad('run_lengths add up to more than the leases');
      leases.push({
        fence: String(fences[i]),
        job_id: jobs[r],
        kind: 'LEASE_KIND_LEAF',
        start: String(starts[i]),
        end: String(ends[i]),
        attempt: attempts.length ? attempts[i] : 1,
        cursor: String(starts[i]),
        details: Buffer.alloc(0),
        is_leaf: true,
      });
    }
  }
  if (leases.length !== n) bad('run_lengths add up to fewer than the leases');
  /** @param {number[]} indexes @param {string} name */
  const increasing = (indexes, name) => {
    for (let k = 0; k < indexes.length; k++) {
      if (indexes[k] >= n || (k > 0 && indexes[k] <= indexes[k - 1]))
        bad(`${name} is not increasing lease indexes`);
    }
  };
  increasing(probes, 'probes');
  increasing(resumed, 'resumed');
  probes.forEach((/** @type {number} */ i, /** @type {number} */ k) => {
    leases[i].kind = 'LEASE_KIND_PROBE';
    leases[i].is_leaf = probeIsLeaf[k];
  });
  resumed.forEach((/** @type {number} */ i, /** @type {number} */ k) => {
    leases[i].cursor = String(cursors[k]);
    leases[i].details = Buffer.from(details[k]);
  });
  return leases;
}

// Marks a BigInt in JSON.stringify's output (a string that starts with it is refused, so none is mistaken).
const BIGINT_MARK = '\u0000bigint:';
const BIGINT_TEXT = /"\\u0000bigint:(-?\d+)"/g;

/**
 * A handler's return value as the JSON text of CompleteRequest.results_json. BigInt values are
 * written as plain JSON integers, so results stay exact beyond 2^53 (the coordinator sums them
 * exactly at any size). Throws a TypeError for what JSON cannot hold (a cycle, a function at the top).
 * @param {unknown} value
 * @returns {string}
 */
export function encodeResult(value) {
  const text = JSON.stringify(value, (_key, v) => {
    if (typeof v === 'bigint') return `${BIGINT_MARK}${v}`;
    if (typeof v === 'string' && v.startsWith(BIGINT_MARK))
      throw new TypeError('a string starts with the BigInt mark');
    return v;
  });
  if (text === undefined) throw new TypeError(`${typeof value} is not a JSON value`);
  return text.replace(BIGINT_TEXT, '$1');
}

export { grpc };
