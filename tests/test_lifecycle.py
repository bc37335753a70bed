"""Status transitions: the moves allowed, the events they publish, the verdict of steps."""

from __future__ import annotations

import pytest

from orchestrator import lifecycle
from orchestrator.errors import IllegalTransition
from orchestrator.lifecycle import Event
from orchestrator.models import (
    ErrorInfo,
    ExecutionRecord,
    ExecutionStatus,
    StepRecord,
    StepStatus,
)

E, S = ExecutionStatus, StepStatus


def execution(status=E.QUEUED, *step_states: StepStatus) -> ExecutionRecord:
    steps = [
        StepRecord(step_id=f"s{i}", task_id="t", status=state)
        for i, state in enumerate(step_states)
    ]
    return ExecutionRecord(
        execution_id="E1", kind="task", task_id="t", status=status, submitted_at=100.0, steps=steps
    )


def test_start_sets_the_queue_wait_and_a_claimed_job_keeps_its_first_start():
    record = execution()
    event = lifecycle.start(record, now=103.0)
    assert (record.status, record.started_at, record.queue_wait) == (E.RUNNING, 103.0, 3.0)
    assert event == Event(execution_id="E1", status=E.RUNNING, at=103.0)
    lifecycle.start(record, now=200.0)  # delivered again after its dispatcher died
    assert (record.started_at, record.queue_wait) == (103.0, 3.0)


@pytest.mark.parametrize(
    ("status", "move"),
    [
        (E.SUCCEEDED, lambda r: lifecycle.start(r, 1.0)),
        (E.CANCELLED, lambda r: lifecycle.cancel(r, 1.0)),
        (E.FAILED, lambda r: lifecycle.dead_letter(r, "x", 1.0)),
        (E.QUEUED, lambda r: lifecycle.finish(r, lifecycle.Verdict(E.SUCCEEDED), 1.0)),
    ],
)
def test_moves_the_lifecycle_does_not_allow_are_refused(status, move):
    record = execution(status)
    with pytest.raises(IllegalTransition, match="E1 cannot go from"):
        move(record)
    assert record.status == status  # unchanged


def test_cancel_ends_the_unfinished_steps_and_keeps_the_finished_ones():
    record = execution(E.RUNNING, S.SUCCEEDED, S.RUNNING, S.PENDING)
    event = lifecycle.cancel(record, now=5.0)
    assert event.status == E.CANCELLED and record.error.type == "Cancelled"
    assert [s.status for s in record.steps] == [S.SUCCEEDED, S.CANCELLED, S.CANCELLED]


def test_finish_sums_up_the_steps():
    record = execution(E.RUNNING, S.SUCCEEDED, S.SUCCEEDED)
    record.started_at = 10.0
    record.steps[0].attempts, record.steps[0].memory_usage = 3, 500
    record.steps[1].attempts, record.steps[1].worker_id = 1, "wtm:t@1#0"
    lifecycle.finish(record, lifecycle.Verdict(E.SUCCEEDED, result={"ok": 1}), now=12.5)
    assert (record.status, record.duration, record.result) == (E.SUCCEEDED, 2.5, {"ok": 1})
    assert (record.attempts, record.worker_id, record.memory_usage) == (3, "wtm:t@1#0", 500)


def test_judge_cancelled_before_failed_before_succeeded():
    failed = StepRecord(
        step_id="b",
        task_id="t",
        status=S.FAILED,
        error=ErrorInfo(type="FatalError", message="bad"),
    )
    ok = StepRecord(step_id="a", task_id="t", status=S.SUCCEEDED)
    cancelled = StepRecord(step_id="c", task_id="t", status=S.CANCELLED)

    assert lifecycle.judge([ok], name_failed_step=True).status == E.SUCCEEDED
    named = lifecycle.judge([ok, failed], name_failed_step=True)
    assert (named.status, named.error.step) == (E.FAILED, "b")
    assert named.error.message == "step 'b' failed: FatalError: bad"
    assert lifecycle.judge([failed], name_failed_step=False).error.message == "bad"
    assert lifecycle.judge([failed, cancelled], name_failed_step=True).status == E.CANCELLED


def test_a_step_behind_a_failed_dependency_is_skipped_behind_a_cancelled_one_cancelled():
    ok = StepRecord(step_id="a", task_id="t", status=S.SUCCEEDED)
    failed = StepRecord(step_id="b", task_id="t", status=S.FAILED)
    cancelled = StepRecord(step_id="c", task_id="t", status=S.CANCELLED)
    step = StepRecord(step_id="d", task_id="t")
    assert not lifecycle.step_blocked(step, [ok]) and step.status == S.PENDING
    assert lifecycle.step_blocked(step, [ok, failed]) and step.status == S.SKIPPED
    other = StepRecord(step_id="e", task_id="t")
    assert lifecycle.step_blocked(other, [failed, cancelled]) and other.status == S.CANCELLED


def test_events_travel_as_text_and_anything_else_decodes_to_none():
    event = Event(execution_id="E1", status=E.RUNNING, step_id="a", step_status=S.RUNNING, at=1.0)
    assert Event.decode(event.encode()) == event
    assert Event.decode(event.encode().encode()) == event  # bytes, as Redis delivers it
    assert Event.decode(b'{"hello": 1}') is None
    assert Event.decode(b"not json") is None


@pytest.mark.parametrize(
    "end",
    [
        lifecycle.dead_letter,
        lambda r, reason, now: lifecycle.fail(
            r, ErrorInfo(type="NotFoundError", message=reason), now
        ),
    ],
)
def test_an_execution_ended_outside_the_driver_leaves_no_step_open(end):
    record = execution(E.RUNNING, S.SUCCEEDED, S.RUNNING, S.PENDING)
    record.steps[1].started_at = 1.0
    end(record, "gone", 5.0)
    assert [s.status for s in record.steps] == [S.SUCCEEDED, S.FAILED, S.SKIPPED]
    assert record.steps[1].error.message == "gone" and record.steps[1].finished_at == 5.0
