"""The event log: numbering, node batches, the memory window, listeners and the stored encoding."""

from __future__ import annotations

from parcelo.coordinator.events import (
    MEMORY_WINDOW,
    Event,
    EventLog,
    EventType,
    Stats,
    decode_segment,
    encode_segment,
)

TOP = 2**64 - 1


def fields(event: Event) -> tuple[object, ...]:
    return (
        event.seq,
        event.type,
        event.time,
        event.start,
        event.end,
        event.attempt,
        event.message,
        event.stats,
        event.new_end,
    )


def test_node_batches_and_single_events_share_one_numbering() -> None:
    log = EventLog(retention=10_000)
    heard: list[Event] = []
    log.subscribe("j", heard.append)
    log.append("j", EventType.JOB_STARTED, 1.0, message="go")
    log.append_nodes("j", EventType.NODE_STARTED, 2.0, [(0, 10, 1), (10, 20, 2), (20, TOP, 3)])
    log.append("j", EventType.NODE_FAILED, 3.0, 10, 20, 2, message="boom")
    log.append_nodes("j", EventType.NODE_COMPLETED, 4.0, [(0, 10, 0)])
    # Nothing is shown before the committer says it is on disk.
    assert log.recent("j", 0) == ([], True) and heard == [] and log.durable_seq("j") == 0
    log.published(log.drain().published)

    everything, covered = log.recent("j", 0)
    assert covered
    assert [e.seq for e in everything] == [1, 2, 3, 4, 5, 6]
    assert [(e.type, e.start, e.end, e.attempt) for e in everything[1:4]] == [
        (EventType.NODE_STARTED, 0, 10, 1),
        (EventType.NODE_STARTED, 10, 20, 2),
        (EventType.NODE_STARTED, 20, TOP, 3),
    ]
    assert [fields(e) for e in heard] == [fields(e) for e in everything]
    # A watcher resuming in the middle of a batch gets the rest of it, once.
    tail, covered = log.recent("j", 2)
    assert covered and [e.seq for e in tail] == [3, 4, 5, 6]


def test_stored_segment_decodes_to_the_same_events() -> None:
    log = EventLog(retention=10_000)
    log.append("j", EventType.JOB_CREATED, 1.5, stats=Stats(1, 1, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 1))
    log.append_nodes("j", EventType.NODE_SPLIT, 2.25, [(0, TOP, 0), (0, 2**63, 2**62)])
    log.append("j", EventType.NODE_FAILED, 3.0, 5, 6, 4, message="a message, ünïcode")
    drained = log.drain()
    log.published(drained.published)
    expected = log.recent("j", 0)[0]
    assert drained.expired == [] and [(job, first) for job, first, _ in drained.written] == [("j", 1)]
    decoded = decode_segment("j", encode_segment(drained.written[0][2]))
    assert [fields(e) for e in decoded] == [fields(e) for e in expected]
    assert encode_segment([]) == b""


def test_a_dynamic_split_event_carries_its_new_end() -> None:
    log = EventLog(retention=10_000)
    log.append_nodes("j", EventType.NODE_SPLIT, 1.0, [(0, 1000, 0), (0, 1000, 200)])
    log.published(log.drain().published)
    rule, dynamic = (e.to_proto() for e in log.recent("j", 0)[0])
    assert (rule.new_end, rule.attempt) == (0, 0)
    assert (dynamic.range.start, dynamic.range.end, dynamic.new_end, dynamic.attempt) == (0, 1000, 200, 0)


def test_events_stored_before_dynamic_splits_decode_with_zero_splits() -> None:
    """Stats were 12 numbers before JobStats.dynamic_splits: stored events keep their bytes."""
    new = Event("j", 1, EventType.JOB_CREATED, 1.5, stats=Stats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13))
    data = new.encode()
    head = len(data) - 1 - 13 * 8  # header, the stats length byte, 13 u64s, no message
    old = data[:head] + bytes([12 * 8]) + data[head + 1 : head + 1 + 11 * 8] + data[-8:]
    assert Event.decode("j", old).stats == Stats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 13)
    assert Event.decode("j", data).stats == new.stats


def test_memory_window_stays_bounded_and_reports_gaps() -> None:
    log = EventLog(retention=10_000)
    for i in range(40):
        log.append_nodes("j", EventType.NODE_COMPLETED, float(i), [(k, k + 1, 0) for k in range(100)])
    log.published(log.drain().published)
    kept, covered = log.recent("j", 0)
    assert not covered  # the oldest events are only in the store now
    assert MEMORY_WINDOW <= len(kept) < MEMORY_WINDOW + 100
    assert [e.seq for e in kept] == list(range(4000 - len(kept) + 1, 4001))
    newest, covered = log.recent("j", 3990)
    assert covered and [e.seq for e in newest] == list(range(3991, 4001))
