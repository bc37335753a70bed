"""Dynamic batching inside a replica: concurrent calls become one batch, each gets its own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from orchestrator.runtime.batching import Batcher
from tests.conftest import make_task


def submit_all(batcher: Batcher, items: list) -> list:
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(batcher.submit, items))


def test_concurrent_calls_are_grouped_and_each_gets_its_own_result():
    seen = []

    def double(items):
        seen.append(list(items))
        return [i * 2 for i in items]

    # A long wait: the batch closes because it is full, not because time passed.
    batcher = Batcher(double, max_size=4, wait_s=30)
    assert submit_all(batcher, [1, 2, 3, 4]) == [2, 4, 6, 8]
    assert batcher.sizes == [4] and sorted(seen[0]) == [1, 2, 3, 4]


def test_a_lone_call_runs_as_a_batch_of_one_after_the_wait():
    batcher = Batcher(lambda items: [i + 1 for i in items], max_size=8, wait_s=0)
    assert batcher.submit(41) == 42 and batcher.sizes == [1]


def test_a_batch_error_reaches_every_caller_and_an_item_error_only_its_own():
    def fail_all(items):
        raise RuntimeError("gpu fell over")

    batcher = Batcher(fail_all, max_size=2, wait_s=30)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.submit, i) for i in (1, 2)]
        for f in futures:
            with pytest.raises(RuntimeError, match="gpu fell over"):
                f.result()

    def odd_ones_fail(items):
        return [ValueError(f"odd {i}") if i % 2 else i for i in items]

    batcher = Batcher(odd_ones_fail, max_size=2, wait_s=30)
    with ThreadPoolExecutor(2) as pool:
        odd, even = pool.submit(batcher.submit, 1), pool.submit(batcher.submit, 2)
        assert even.result() == 2
        with pytest.raises(ValueError, match="odd 1"):
            odd.result()


def test_a_batch_that_returns_too_few_results_fails_every_caller_instead_of_hanging_one():
    batcher = Batcher(lambda items: items[:1], max_size=2, wait_s=30)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.submit, i) for i in (1, 2)]
        for f in futures:
            with pytest.raises(ValueError, match="a batch of 2 returned 1 results"):
                f.result(timeout=30)


def test_a_batching_task_forms_batches_under_the_default_replica_settings(client, tmp_path):
    folder = make_task(
        tmp_path, "batched_default", "return {}", batch={"max_size": 8, "wait_ms": 200}
    )
    (folder / "task.py").write_text(
        "from orchestrator import SimpleTask\n\n\n"
        "class Task(SimpleTask):\n"
        "    def process(self, input_data):\n"
        "        return {'batch': 1}\n\n"
        "    def process_batch(self, inputs):\n"
        "        return [{'batch': len(inputs)} for _ in inputs]\n"
    )
    client.register_task(folder)  # no replicas section: the defaults

    ids = [client.submit("batched_default", {"n": n}) for n in range(16)]
    sizes = [client.wait(i, timeout=60).result["batch"] for i in ids]

    assert max(sizes) > 1, sizes
