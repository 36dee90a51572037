// The Work stream and its reconnects: open a stream, say hello, wait for the welcome, hand every
// later message to the worker; when the stream ends, open another after an exponential backoff
// with jitter (reset once a stream got as far as the welcome), until closed.

import { setTimeout as sleep } from 'node:timers/promises';
import * as defaults from './defaults.js';
import { connect, grpc } from './proto.js';

/** gRPC status names by code, for log lines ('UNAVAILABLE: ...'). */
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/**
 * Reconnect delays: exponential from `initialMs` to `maxMs`, each moved by up to ±`jitter`.
 * @param {number} initialMs @param {number} maxMs @param {number} jitter @param {() => number} [random]
 * @returns {Generator<number, never>}
 */
export function* backoffDelays(initialMs, maxMs, jitter, random = Math.random) {
  let delay = initialMs;
  for (;;) {
    yield delay * (1 - jitter + 2 * jitter * random());
    delay = Math.min(maxMs, delay * 2);
  }
}

/**
 * @typedef {object} ConnectionEvents
 * @property {(welcome: any) => void} onWelcome a stream is up: `send` works from now on
 * @property {(msg: any) => void} onMessage every message after the welcome, in order
 * @property {() => void} onDown the stream that was up ended (its credit with it)
 */

export class Connection {
  /** @type {any} the call once welcomed */
  #call = null;
  #closing = new AbortController();
  /** @type {Promise<void> | null} */
  #loop = null;

  /**
   * @param {object} init
   * @param {string} init.target host:port
   * @param {{worker_id: string, queues: string[], sdk: string, concurrency?: number,
   *   packed_grants?: boolean, leaf_runs?: boolean}} init.hello
   * @param {import('./worker.js').Logger} init.log
   * @param {ConnectionEvents} init.events
   */
  constructor({ target, hello, log, events }) {
    this.target = target;
    this.hello = hello;
    this.log = log;
    this.events = events;
  }

  /** Whether a stream is up (welcomed and not ended). */
  get up() {
    return this.#call !== null;
  }

  /** Connect, and reconnect whenever the stream ends, until `close()`. */
  start() {
    this.#loop ??= this.#connectForever();
  }

  /**
   * Write a WorkRequest on the stream that is up.
   * @param {object} msg
   * @returns {boolean} false when no stream is up (nothing was sent)
   */
  send(msg) {
    if (this.#call === null) return false;
    this.#call.write(msg);
    return true;
  }

  /**
   * End the stream that is up (a defect of the coordinator's, e.g. a packed grant that breaks its
   * rules): the loop reconnects with backoff as after any broken stream.
   * @param {string} why
   */
  reset(why) {
    if (this.#call === null) return;
    this.log.error(`ending the stream: ${why}`);
    this.#call.cancel();
  }

  /** Half-close the stream (the coordinator then ends it), stop reconnecting, and wait for both. */
  async close() {
    this.#closing.abort();
    await this.#loop;
  }

  async #connectForever() {
    const delays = () =>
      backoffDelays(defaults.RECONNECT_INITIAL_MS, defaults.RECONNECT_MAX_MS, defaults.RECONNECT_JITTER);
    let wait = delays();
    while (!this.#closing.signal.aborted) {
      if (await this.#session()) wait = delays();
      try {
        await sleep(wait.next().value, undefined, { signal: this.#closing.signal });
      } catch {
        return; // closing
      }
    }
  }

  /**
   * One stream, from hello until it ends.
   * @returns {Promise<boolean>} whether it got as far as the welcome
   */
  #session() {
    return new Promise((resolve) => {
      const client = connect(this.target);
      const call = client.Work();
      let welcomed = false;
      let ended = false;
      const closing = this.#closing.signal;
      const onClose = () => {
        call.end();
        setTimeout(() => call.cancel(), defaults.CLOSE_TIMEOUT_MS).unref();
      };
      const welcomeTimer = setTimeout(() => {
        this.log.warn(`no welcome from ${this.target} within ${defaults.WELCOME_TIMEOUT_MS} ms`);
        call.cancel();
      }, defaults.WELCOME_TIMEOUT_MS);
      /** @param {string} why */
      const end = (why) => {
        if (ended) return;
        ended = true;
        clearTimeout(welcomeTimer);
        closing.removeEventListener('abort', onClose);
        if (!closing.aborted) this.log.warn(`stream to ${this.target} ended: ${why}`);
        client.close();
        if (this.#call === call) {
          this.#call = null;
          this.events.onDown();
        }
        resolve(welcomed);
      };
      closing.addEventListener('abort', onClose, { once: true });
      call.on('data', (/** @type {any} */ msg) => {
        try {
          if (welcomed) {
            this.events.onMessage(msg);
          } else if (msg.msg === 'welcome') {
            welcomed = true;
            clearTimeout(welcomeTimer);
            this.#call = call;
            this.events.onWelcome(msg.welcome);
          } else {
            this.log.error(`coordinator answered hello with ${msg.msg}, not welcome`);
            call.cancel();
          }
        } catch (err) {
          this.log.error(`handling a ${msg.msg} message failed: ${/** @type {Error} */ (err).stack}`);
        }
      });
      // 'error' comes with every status but OK (and is thrown if nobody listens); 'status' always comes.
      call.on('error', () => {});
      call.on('status', (/** @type {any} */ status) =>
        end(
          status.code === 0
            ? 'closed by the coordinator'
            : `${STATUS_NAMES[status.code] ?? status.code}: ${status.details}`,
        ),
      );
      call.write({ hello: this.hello });
    });
  }
}
