// Defaults of the Node worker: one table, read by runWorker() and by the CLI.
// They match the Python SDK's (worker_sdk/defaults.py); each says why it has its value.

/** Queue of workers that name none. */
export const DEFAULT_QUEUE = 'default';

/** Handlers running at once in one worker process. */
export const CONCURRENCY = 4;

/** Leases kept in hand beyond the running ones; one grant message carries many. */
export const PREFETCH = 64;

/** Lease TTL assumed for a job whose JobInfo has none (the coordinator's default). */
export const LEASE_TTL_MS = 30_000;

/** Heartbeat every TTL / 3, so two lost heartbeats still do not expire a lease. */
export const HEARTBEAT_FRACTION = 3;

/** Shortest heartbeat interval, whatever a TTL says: below it heartbeats are most of the traffic. */
export const MIN_HEARTBEAT_MS = 50;

/** How often the heartbeat timer looks at the leases held (their TTLs decide the interval). */
export const HEARTBEAT_TICK_MS = 100;

/** Finished leases are held this long to be sent together in one message. */
export const COMPLETION_FLUSH_MS = 5;

/** Most results in one Complete or Fail message; more are sent at once in several. */
export const COMPLETION_BATCH = 256;

/** On SIGTERM running handlers get this long to finish before they are aborted and released. */
export const DRAIN_TIMEOUT_MS = 30_000;

/** After the drain timeout, how long aborted handlers get to return before their leases are given back anyway. */
export const ABORT_GRACE_MS = 2_000;

/** How long a stopping worker waits for the answers to its last results. */
export const ANSWER_WAIT_MS = 10_000;

/** First reconnect delay of a worker that lost its coordinator. */
export const RECONNECT_INITIAL_MS = 100;

/** Reconnect delay cap: a restarted coordinator is found within seconds. */
export const RECONNECT_MAX_MS = 5_000;

/** Each reconnect delay is moved by up to this fraction either way, so workers do not reconnect in step. */
export const RECONNECT_JITTER = 0.2;

/** A coordinator that does not answer hello within this long is treated as down. */
export const WELCOME_TIMEOUT_MS = 10_000;

/** Failure messages are cut to this many characters. */
export const MAX_MESSAGE = 4096;

/** Grants can be large (a JobInfo carries up to 1 MiB of params). */
export const MAX_RECEIVE_MESSAGE = 16 << 20;

/** A closing worker half-closes its stream; if the coordinator has not ended it by then, it is cancelled. */
export const CLOSE_TIMEOUT_MS = 2_000;
