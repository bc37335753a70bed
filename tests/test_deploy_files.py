"""The production files agree with each other and with the settings.

docker-compose.yml, .env.example, ray-cluster.yaml, deploy/wtm.env.example,
deploy/kuberay/raycluster.yaml and the CI workflow, read as an operator's
tools would read them (no Docker needed): every secret is required and off
every command line, images are pinned, every container is limited, every
``WTM_*`` variable is a real setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from orchestrator.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
KUBERAY = ROOT / "deploy" / "kuberay" / "raycluster.yaml"
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET")
# ${VAR}, ${VAR:-default}, ${VAR:?message}; `$${` is a literal `${` for the container.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML document (compose interpolates those only)."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """What compose makes of a parsed file with this environment (its ${...} rules)."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":?" and not value:
            raise LookupError(f"required variable {name} is missing a value: {arg}")
        if op == ":-" and not value:
            return arg
        return value or ""

    return VARIABLE.sub(one, node).replace("$$", "$")


def filled_env() -> dict[str, str]:
    """.env.example with each empty secret filled, as an operator's .env has it."""
    env = env_file(ROOT / ".env.example")
    return {k: v or f"s3cret-{k.lower()}" for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(load(COMPOSE), filled_env())


def command_lines(service: dict) -> list[str]:
    """What `ps` shows: the entrypoint, the command, the healthcheck's command."""
    out = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        out += [value] if isinstance(value, str) else value
    out += (service.get("healthcheck") or {}).get("test") or []
    return [str(x) for x in out]


def is_setting(variable: str) -> bool:
    """Whether WTM_A__B names a field of Settings (prefix WTM_, nested by __)."""
    model: type[BaseModel] = Settings
    parts = variable.removeprefix("WTM_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            model = field.annotation  # type: ignore[assignment]
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return False
    return True


# compose ----------------------------------------------------------------------------------
def test_compose_refuses_to_start_without_each_secret_naming_it():
    with pytest.raises(LookupError, match="required variable"):
        interpolate(load(COMPOSE), {})  # no .env at all
    env = filled_env()
    secrets = [k for k in env if SECRET.search(k)]
    assert len(secrets) >= 5
    for name in secrets:
        with pytest.raises(LookupError, match=rf"required variable {name} "):
            interpolate(load(COMPOSE), {**env, name: ""})


def test_every_compose_variable_is_in_env_example_and_every_secret_is_required():
    found = [m for text in strings(load(COMPOSE)) for m in VARIABLE.finditer(text)]
    example = env_file(ROOT / ".env.example")
    used = {m.group(1) for m in found}
    assert used <= set(example), sorted(used - set(example))
    for m in found:
        if SECRET.search(m.group(1)):
            assert m.group(2) == ":?", f"{m.group(0)}: a secret must be required (${{VAR:?...}})"
            assert example[m.group(1)] == "", f"{m.group(1)}: no default secret in .env.example"


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image} is not pinned"
    for required in ("mongodb", "redis", "minio", "prometheus", "grafana"):
        assert required in compose["services"]


def test_every_service_has_cpu_and_memory_limits(compose):
    for name, service in compose["services"].items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name} has no limits"


def test_no_secret_is_on_a_command_line(compose):
    env = filled_env()
    secrets = [v for k, v in env.items() if SECRET.search(k)]
    assert secrets
    for name, service in compose["services"].items():
        for line in command_lines(service):
            assert not any(s in line for s in secrets), f"{name}: a secret in {line!r}"
            assert "--requirepass" not in line
    assert "--requirepass" not in COMPOSE.read_text()


def test_redis_keeps_its_aof_and_reads_its_password_from_its_environment(compose):
    redis = compose["services"]["redis"]
    script = "\n".join(command_lines(redis))
    assert "appendonly yes" in script and "appendfsync everysec" in script
    assert "requirepass %s" in script and '"$REDIS_PASSWORD"' in script
    assert "unset REDIS_PASSWORD" in script  # redis-server does not inherit it
    assert redis["environment"]["REDIS_PASSWORD"] == filled_env()["REDIS_PASSWORD"]
    assert "/data" in redis["volumes"][0]


def test_ray_nodes_carry_the_token_but_no_store_credentials(compose):
    for name in ("ray-head", "ray-worker"):
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]
        assert not [k for k in env if k.startswith("WTM_") and k != "WTM_HOME"], name
        commands = " ".join(command_lines(compose["services"][name]))
        assert "--metrics-export-port=8080" in commands


def test_every_wtm_variable_in_compose_is_a_setting_and_parses(compose, monkeypatch):
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        wrong = [k for k in env if k.startswith("WTM_") and not is_setting(k)]
        assert not wrong, f"{name}: {wrong} are not settings"
    cli = compose["services"]["wtm"]["environment"]
    for key, value in cli.items():
        monkeypatch.setenv(key, str(value))
    s = load_settings()
    assert s.redis.url.startswith("redis://:s3cret-redis_password@redis:6379")
    assert s.records.uri.startswith("mongodb://wtm:s3cret-mongo_root_password@mongodb:27017")
    assert (s.objects.endpoint, s.objects.secure, s.ray.address) == (
        "minio:9000",
        False,
        "ray://ray-head:10001",
    )
    assert (s.log_level, s.logging.format) == ("INFO", "text")


def test_the_supervisor_redeploys_with_the_clis_settings(compose):
    supervisor, cli = compose["services"]["wtm-supervisor"], compose["services"]["wtm"]
    assert supervisor["entrypoint"] == ["wtm"] and supervisor["command"] == ["supervise"]
    assert supervisor["restart"] == "unless-stopped"
    # One control plane whoever deploys it: the same settings, so neither replaces the other's.
    assert supervisor["environment"] == cli["environment"]
    assert "ray-head" in supervisor["depends_on"]


def test_prometheus_and_grafana_read_files_in_the_repository(compose):
    mounts = [
        v.split(":")[0]
        for name in ("prometheus", "grafana")
        for v in compose["services"][name]["volumes"]
        if v.startswith("./")
    ]
    assert mounts
    for host_path in mounts:
        assert (ROOT / host_path).exists(), f"{host_path} is mounted but missing"
    assert (
        "--config.file=/etc/prometheus/prometheus.yml"
        in compose["services"]["prometheus"]["command"]
    )
    scrape = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "ray-head" in scrape and "8080" in scrape  # Ray's metrics, as the nodes export them
    boards = list((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert boards, "no Grafana dashboard JSON"


def test_logs_are_one_volume_the_cli_reads(compose):
    for name in ("ray-head", "ray-worker", "wtm-supervisor", "wtm"):
        assert "logs:/var/lib/wtm/logs" in compose["services"][name]["volumes"], name
    assert "/var/lib/wtm/logs" in (ROOT / "Dockerfile").read_text()  # owned by the ray user


# the Ray cluster launcher and KubeRay -----------------------------------------------------
def test_ray_cluster_yaml_keeps_secrets_in_files_and_exports_metrics():
    cluster = load(ROOT / "ray-cluster.yaml")
    assert not cluster["docker"]["image"].endswith(":latest")
    assert cluster["file_mounts"] == {
        "~/wtm.env": "./deploy/wtm.env",
        "~/.ray/auth_token": "./deploy/ray_auth_token",
    }
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"deploy/wtm.env", "deploy/ray_auth_token", ".env"} <= set(ignored)
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token" in command and "--metrics-export-port=8080" in command
        assert "wtm.env" not in command  # Ray's processes get no store credentials
    assert any("wtm supervise" in c for c in cluster["head_start_ray_commands"])
    assert "WTM_" not in yaml.safe_dump(cluster)


def test_the_cluster_env_example_holds_only_settings():
    env = env_file(ROOT / "deploy" / "wtm.env.example")
    assert env and all(is_setting(k) for k in env), [k for k in env if not is_setting(k)]
    assert not any(v.startswith(("'", '"')) for v in env.values())  # kubectl keeps quotes


def test_kuberay_manifest_matches_the_cluster_file():
    docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    supervisor = next(d for d in docs if d["kind"] == "Deployment")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert not [d for d in docs if d["kind"] == "Secret"]  # secrets are made with kubectl
    image = load(ROOT / "ray-cluster.yaml")["docker"]["image"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == image
        assert (
            container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
        )
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "wtm-ray-auth"
        assert "envFrom" not in container  # no store credentials on Ray pods
        assert all(is_setting(k) for k in env if k.startswith("WTM_"))
    (container,) = supervisor["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image and container["command"] == ["wtm", "supervise"]
    assert container["envFrom"] == [{"secretRef": {"name": "wtm-settings"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["WTM_RAY__ADDRESS"]["value"] == "ray://wtm-head-svc:10001"
    assert all(is_setting(k) for k in env if k.startswith("WTM_"))
    assert container["resources"]["limits"]


# CI -----------------------------------------------------------------------------------------
def test_ci_runs_the_readmes_test_command_and_ruff():
    workflow = load(ROOT / ".github" / "workflows" / "ci.yml")
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    setup = next(s for s in job["steps"] if "setup-python" in s.get("uses", ""))
    assert setup["with"]["python-version"] == "3.11" and setup["with"]["cache"] == "pip"
    runs = [s.get("run", "") for s in job["steps"]]
    assert "make test" in runs and "make lint" in runs
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    lint = (ROOT / "Makefile").read_text()
    assert "ruff check" in lint and "ruff format --check" in lint
