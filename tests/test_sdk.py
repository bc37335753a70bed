"""The task SDK as a task author meets it."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest

from orchestrator import FatalError, MLTask, RetryableError, SimpleTask, TaskBase
from orchestrator.errors import ValidationError
from orchestrator.images import image_from_input, load_image
from orchestrator.objects.local import LocalObjectStore
from tests.conftest import IMAGES


class Echo(SimpleTask):
    def process(self, input_data):
        return {"echo": input_data}


def test_task_base_requires_process():
    class Incomplete(TaskBase):
        pass

    with pytest.raises(TypeError, match="process"):
        Incomplete()


def test_setup_runs_once_under_concurrent_first_calls():
    class Slow(SimpleTask):
        setups = 0

        def setup(self):
            type(self).setups += 1
            time.sleep(0.05)  # widen the race window; not a timing assertion

        def process(self, input_data):
            return {}

    task = Slow()
    threads = [threading.Thread(target=task.run, args=({},)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Slow.setups == 1 and task.load_count == 1


def test_simple_task_wraps_unknown_errors_as_retryable_with_the_cause():
    class Broken(SimpleTask):
        def process(self, input_data):
            raise KeyError("weights")

    with pytest.raises(RetryableError, match="KeyError") as info:
        Broken().run({})
    assert isinstance(info.value.__cause__, KeyError)


def test_simple_task_lets_sdk_errors_through():
    class Fatal(SimpleTask):
        def process(self, input_data):
            raise FatalError("corrupt model")

    with pytest.raises(FatalError, match="corrupt model"):
        Fatal().run({})


def test_ml_task_loads_once_and_chains_the_stages():
    class Doubler(MLTask):
        def load_model(self):
            return 2

        def preprocess_input(self, input_data):
            return input_data["x"]

        def predict(self, model_input):
            return model_input * self.model

        def postprocess_output(self, model_output):
            return {"y": model_output}

    task = Doubler()
    assert [task.run({"x": i})["y"] for i in range(3)] == [0, 2, 4]
    assert task.load_count == 1
    task.shutdown()
    assert task.model is None


def test_process_batch_defaults_to_one_by_one_and_overrides_are_detected():
    class Batched(Echo):
        def process_batch(self, inputs):
            return [{"n": len(inputs)} for _ in inputs]

    assert Echo().process_batch([{"a": 1}, {"a": 2}]) == [{"echo": {"a": 1}}, {"echo": {"a": 2}}]
    assert not Echo().batches
    assert Batched().batches


def test_load_image_from_every_kind_of_source(tmp_path):
    path = IMAGES / "astronaut.jpg"
    data = path.read_bytes()
    store = LocalObjectStore(tmp_path)
    store.put("ai-data", "photos/a.jpg", data)
    expected = load_image(path)
    assert expected.shape == (480, 640, 3)
    for source in (str(path), path, path.as_uri(), data, "s3://ai-data/photos/a.jpg"):
        assert np.array_equal(load_image(source, store), expected)
    assert load_image(expected) is expected
    encoded = base64.b64encode(data).decode()
    assert np.array_equal(image_from_input({"image_data": encoded}), expected)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such.jpg", "does not exist"),
        (b"not an image", "not a readable image"),
        ("s3://ai-data/missing.jpg", "does not exist"),
        (42, "cannot load an image"),
    ],
)
def test_bad_image_sources_are_validation_errors(tmp_path, source, message):
    with pytest.raises(ValidationError, match=message):
        load_image(source, LocalObjectStore(tmp_path))
