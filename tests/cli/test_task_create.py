"""`wtm task create`: a generated package registers and passes `task test` as made."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("template", "document", "key"),
    [
        ("ml", {"input": "test_data"}, "prediction"),
        ("simple", {"input": "test data"}, "word_count"),
        ("vision", None, "brightness"),
    ],
)
def test_created_package_registers_and_runs(cli_env, client, tmp_path, template, document, key):
    name = f"my_custom_{template}"
    created = runner.invoke(
        app,
        ["task", "create", name, "--template", template, "--author", "A", "--dir", str(tmp_path)],
    )
    assert created.exit_code == 0, created.output
    folder = tmp_path / name
    assert {"task.py", "task.json", "README.md", "test_task.py"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "task.json").read_text())["author"] == "A"

    registered = runner.invoke(app, ["task", "register", str(folder)])
    assert registered.exit_code == 0, registered.output
    document = document or {"image_path": str(folder / "sample.png")}
    tested = runner.invoke(app, ["task", "test", name, json.dumps(document), "--json"])
    assert tested.exit_code == 0, tested.output
    assert key in json.loads(tested.stdout)


def test_created_ml_task_runs_on_a_replica(client, tmp_path):
    from orchestrator import templates

    folder = templates.create("my_replica_ml", "ml", "A", tmp_path)
    client.register_task(folder)
    record = client.run("my_replica_ml", {"input": "test_data"})
    assert record.status == "succeeded", record.error
    assert record.result["prediction"] in ("positive", "negative")


def test_create_refuses_to_overwrite_and_unknown_templates(cli_env, tmp_path):
    args = ["task", "create", "twice", "--dir", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 4 and "already exists" in again.stderr
    bad = runner.invoke(app, ["task", "create", "x", "--template", "rnn", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown template 'rnn'" in bad.stderr
    long = runner.invoke(app, ["task", "create", "x" * 5000, "--dir", str(tmp_path)])
    assert long.exit_code == 2 and "5000 characters, over 128" in long.stderr
    assert len(long.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == [
        tmp_path / "twice"
    ]


def test_delete_removes_a_version_from_records_and_objects(cli_env, client, tmp_path):
    from orchestrator import keys, templates

    record, _ = client.register_task(templates.create("to_delete", "simple", "A", tmp_path))
    result = runner.invoke(app, ["task", "delete", "to_delete", "--version", "0.1.0"])
    assert result.exit_code == 0, result.output
    assert not client.objects.exists(keys.TASKS_BUCKET, record.object_key)
    missing = runner.invoke(app, ["task", "info", "to_delete"])
    assert missing.exit_code == 3 and "unknown task 'to_delete'" in missing.stderr
