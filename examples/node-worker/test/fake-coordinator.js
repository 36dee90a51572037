// A scripted WorkerService for in-process tests of the worker: each Work stream the worker opens
// is handed to the test as a FakeStream, which reads requests in order and writes responses.

import { grpc, workerServiceClient } from '../proto.js';

export class FakeStream {
  /** @type {any[]} */ #queue = [];
  /** @type {((msg: any) => void)[]} */ #readers = [];
  /** every request received, in order */
  /** @type {any[]} */ received = [];
  ended = false;

  /** @param {any} call */
  constructor(call) {
    this.call = call;
    call.on('data', (/** @type {any} */ msg) => {
      this.received.push(msg);
      const reader = this.#readers.shift();
      if (reader) reader(msg);
      else this.#queue.push(msg);
    });
    call.on('end', () => {
      this.ended = true;
      call.end();
    });
    call.on('error', () => {});
  }

  /**
   * The next request (of `kind`, skipping others), within `ms`.
   * @param {string} [kind] @param {number} [ms] @returns {Promise<any>}
   */
  async next(kind, ms = 5000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const msg = await this.#read(deadline - Date.now());
      if (kind === undefined || msg.msg === kind) return kind === undefined ? msg : msg[kind];
    }
  }

  /** @param {number} ms @returns {Promise<any>} */
  #read(ms) {
    if (this.#queue.length) return Promise.resolve(this.#queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.#readers.splice(this.#readers.indexOf(done), 1);
          reject(
            new Error(
              `no request within the time allowed; received ${JSON.stringify(this.received.map((m) => m.msg))}`,
            ),
          );
        },
        Math.max(0, ms),
      );
      const done = (/** @type {any} */ msg) => {
        clearTimeout(timer);
        resolve(msg);
      };
      this.#readers.push(done);
    });
  }

  /** @param {object} msg */
  send(msg) {
    this.call.write(msg);
  }

  /** Hello in, welcome out; returns the hello. @param {object} [welcome] */
  async accept(welcome = { heartbeat_interval: { seconds: 0, nanos: 50_000_000 } }) {
    const hello = await this.next('hello');
    this.send({ welcome });
    return hello;
  }
}

/** A WorkerService on a loopback port; `streams()` yields each Work stream as it opens. */
export class FakeCoordinator {
  /** @type {FakeStream[]} */ #pending = [];
  /** @type {((s: FakeStream) => void)[]} */ #waiting = [];
  server = new grpc.Server();
  port = 0;

  async start() {
    this.server.addService(workerServiceClient().service, {
      Work: (/** @type {any} */ call) => {
        const stream = new FakeStream(call);
        const waiter = this.#waiting.shift();
        if (waiter) waiter(stream);
        else this.#pending.push(stream);
      },
    });
    this.port = await new Promise((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
        err ? reject(err) : resolve(port),
      ),
    );
    return this;
  }

  get target() {
    return `127.0.0.1:${this.port}`;
  }

  /** The next Work stream a worker opens. @returns {Promise<FakeStream>} */
  stream() {
    const ready = this.#pending.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  stop() {
    this.server.forceShutdown();
  }
}

/** A silent logger for workers under test. */
export const quiet = { info() {}, warn() {}, error() {} };

/**
 * A grant of leaves [start, start + 100) of job `j`, fences as given, with the job's JobInfo.
 * @param {number[]} fences @param {object} [info]
 */
export function grant(fences, info = {}) {
  return {
    grant: {
      leases: fences.map((f) => ({
        fence: String(f),
        job_id: 'j',
        kind: 'LEASE_KIND_LEAF',
        start: String(f * 100),
        end: String(f * 100 + 100),
        attempt: 1,
        cursor: String(f * 100),
      })),
      jobs: [{ job_id: 'j', params_json: '{"x": 1}', lease_ttl: { seconds: 30 }, ...info }],
    },
  };
}
