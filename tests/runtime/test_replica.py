"""What a replica does with a package when it loads it on the cluster."""

from __future__ import annotations

from orchestrator import packages
from orchestrator.models import ExecutionStatus
from tests.conftest import make_task


def test_missing_requirements_fail_the_job_with_the_list(client, tmp_path, monkeypatch):
    folder = make_task(
        tmp_path,
        "needs_missing",
        "return {}",
        requirements=["definitely-not-installed-pkg>=1", "numpy>=1.0", "nor-this-one"],
        max_retries=3,
    )
    # Registered where they were installed (registration checks this process's
    # environment); the replica's own check is what this test is about.
    with monkeypatch.context() as m:
        m.setattr(packages, "_satisfied", lambda req: True)
        client.register_task(folder)
    record = client.run("needs_missing", {})
    assert record.status == ExecutionStatus.FAILED
    assert record.error.type == "PackageError"
    assert "definitely-not-installed-pkg>=1, nor-this-one" in record.error.message
    assert "numpy" not in record.error.message
    assert record.attempts == 1  # a package that cannot load is not retried


def test_a_task_can_bring_its_own_runtime_env(client, tmp_path):
    body = 'import os\nreturn {"flag": os.environ.get("WTM_EXAMPLE_FLAG")}'
    folder = make_task(
        tmp_path, "own_env", body, runtime_env={"env_vars": {"WTM_EXAMPLE_FLAG": "isolated"}}
    )
    client.register_task(folder)
    record = client.run("own_env", {})
    assert record.status == ExecutionStatus.SUCCEEDED, record.error
    assert record.result == {"flag": "isolated"}


def test_two_tasks_with_the_same_module_names_run_side_by_side(client, tmp_path):
    for task_id, value in (("twin_a", "A"), ("twin_b", "B")):
        folder = make_task(tmp_path, task_id, "from .helper import VALUE\nreturn {'v': VALUE}")
        (folder / "helper.py").write_text(f"VALUE = {value!r}\n")
        client.register_task(folder)
    assert client.run("twin_a", {}).result == {"v": "A"}
    assert client.run("twin_b", {}).result == {"v": "B"}
