// Leaf runs on the worker's side (docs/protocol.md, "Leaf runs"): the leaves of a run by the split
// rule, and its leaves' results combined by the job's reduce. Pure functions, unit-tested
// (test/units.test.js); worker.js runs them.

/**
 * The leaves of [start, end) by the split rule (`mid = start + (end - start) / 2`, integer division,
 * while wider than `maxRangeSize`), in range order, made as they are read.
 * @param {bigint} start @param {bigint} end @param {bigint} maxRangeSize at least 1
 * @returns {Generator<[bigint, bigint]>}
 */
export function* leaves(start, end, maxRangeSize) {
  if (maxRangeSize < 1n) throw new RangeError('max_range_size must be at least 1');
  /** @type {[bigint, bigint][]} */
  const stack = [[start, end]];
  while (stack.length) {
    let [lo, hi] = /** @type {[bigint, bigint]} */ (stack.pop());
    while (hi - lo > maxRangeSize) {
      const mid = lo + (hi - lo) / 2n; // BigInt division truncates: the rule's integer division
      stack.push([mid, hi]);
      hi = mid;
    }
    yield [lo, hi];
  }
}

/**
 * Whether a lease is a leaf run: a leaf lease (not a probe) wider than its job's max_range_size.
 * @param {{kind: string, start: string, end: string}} lease @param {bigint} maxRangeSize 0: unknown
 * @returns {boolean}
 */
export function isLeafRun(lease, maxRangeSize) {
  return (
    lease.kind !== 'LEASE_KIND_PROBE' &&
    maxRangeSize > 0n &&
    BigInt(lease.end) - BigInt(lease.start) > maxRangeSize
  );
}

/** JobInfo.reduce (enums: String) -> the name the coordinator's messages use; '' for none or merge. */
const NAMES = Object.freeze({ REDUCE_SUM: 'sum', REDUCE_MIN: 'min', REDUCE_MAX: 'max' });

/** @param {unknown} value @returns {string} how the coordinator names a value it refuses */
function kind(value) {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return 'a boolean';
  if (typeof value === 'string') return 'a string';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return typeof value;
}

/**
 * The results of a run's leaves combined by the job's reduce (sum, min or max; the coordinator
 * never grants runs for merge). Integers (Numbers or BigInts) are combined exactly as BigInts; a
 * non-integer Number makes a sum a Number, as a float makes the coordinator's sum a float.
 */
export class RunResult {
  /** @type {bigint | number | null} null: no leaf gave a result */
  value = null;
  #name;
  /** @param {string | undefined} reduce JobInfo.reduce, e.g. 'REDUCE_SUM' */
  constructor(reduce) {
    this.#name = /** @type {Record<string, string>} */ (NAMES)[String(reduce)] ?? '';
  }

  /**
   * Take one leaf's result (undefined or null: none).
   * @param {unknown} result
   * @returns {string} why it cannot be taken (the leaf then fails permanently with it); '' when it can
   */
  add(result) {
    if (result === undefined || result === null || !this.#name) return '';
    if (typeof result !== 'number' && typeof result !== 'bigint') {
      return `reduce ${this.#name} combines numbers; the result is ${kind(result)}`;
    }
    if (typeof result === 'number' && !Number.isFinite(result)) {
      return `the result is not JSON: ${result} is not a JSON number`; // the coordinator's words
    }
    /** @type {bigint | number} */
    const value = typeof result === 'number' && Number.isInteger(result) ? BigInt(result) : result;
    const had = this.value;
    if (had === null) this.value = value;
    else if (this.#name === 'sum') {
      this.value =
        typeof had === 'bigint' && typeof value === 'bigint' ? had + value : Number(had) + Number(value);
    } else if (this.#name === 'min') this.value = value < had ? value : had;
    else this.value = value > had ? value : had;
    return '';
  }
}
