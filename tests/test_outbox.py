"""The worker's outbox: results batched into requests, kept until answered, sent again after a
reconnect (pure: no stream)."""

from __future__ import annotations

from parcelo.outbox import Outbox
from parcelo.v1 import worker_pb2


def test_results_go_out_as_one_completion_and_one_failure_request_and_wait_for_answers() -> None:
    box = Outbox()
    assert box.take("w") == [] and box.pending() == box.unanswered() == 0
    box.complete(1, "", 10, 0)
    box.complete(2, "", 20, 0)
    box.skip(3)
    box.fail(worker_pb2.Failure(fence=4, message="boom"))
    assert (box.pending(), box.unanswered()) == (4, 4)
    complete, fail = box.take("w")
    assert list(complete.complete.fences) == [1, 2] and list(complete.complete.skipped) == [3]
    assert list(complete.complete.handler_us) == [10, 20] and complete.complete.worker_id == "w"
    # Columns nobody filled stay empty: no result, no early end.
    assert not complete.complete.results_json and not complete.complete.ends
    assert [f.fence for f in fail.fail.failures] == [4]
    assert (box.pending(), box.unanswered()) == (0, 4)
    for fence in (1, 2, 3, 4):
        box.answered(fence)
    assert box.unanswered() == 0 and box.take("w") == []


def test_results_and_ends_are_one_per_fence_when_any_lease_has_one() -> None:
    box = Outbox()
    box.complete(1, "5", 1, 0)
    box.complete(2, "", 1, 200)  # a SHRINK ended it at 200
    [request] = box.take("w")
    assert list(request.complete.results_json) == ["5", ""]
    assert list(request.complete.ends) == [0, 200]


def test_after_a_reconnect_every_unanswered_result_is_sent_again_with_its_end() -> None:
    box = Outbox()
    box.complete(1, "7", 30, 0)
    box.complete(2, "", 40, 500)
    box.skip(3)
    box.fail(worker_pb2.Failure(fence=4, released=True))
    box.take("w")
    box.answered(1)
    box.requeue_unanswered()
    complete, fail = box.take("w")
    assert list(complete.complete.fences) == [2] and list(complete.complete.skipped) == [3]
    # The run time counted when first sent; the end goes again, so a split a restart lost is made.
    assert not complete.complete.handler_us and list(complete.complete.ends) == [500]
    assert [f.fence for f in fail.fail.failures] == [4] and fail.fail.failures[0].released


def test_a_leaf_runs_failed_leaves_go_with_its_completion_and_again_after_a_reconnect() -> None:
    box = Outbox()
    bad = worker_pb2.LeafFailure(fence=7, start=30, end=40, message="RuntimeError: x")
    box.complete(7, "63", 640, 0, [bad])
    box.complete(8, "64", 640, 0)
    [request] = box.take("w")
    assert list(request.complete.fences) == [7, 8] and list(request.complete.failed_leaves) == [bad]
    box.answered(8)
    box.requeue_unanswered()  # a new stream: run 7 was never answered
    [again] = box.take("w")
    assert list(again.complete.fences) == [7] and list(again.complete.failed_leaves) == [bad]
    assert list(again.complete.results_json) == ["63"]
    assert not again.complete.handler_us  # its run time counted once
