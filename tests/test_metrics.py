"""The system's metrics as an operator reads them: from Ray's Prometheus endpoint
after runs on the real stack, named by `wtm health`, and drawn by the Grafana board."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import defaultdict

import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cli.main import app
from orchestrator import metrics, stack
from orchestrator.models import ExecutionStatus
from orchestrator.settings import Settings
from tests.conftest import ROOT, make_task
from tests.helpers import wait_until

METERED = """
if input_data.get("fail"):
    raise FatalError("asked to fail")
return {"ok": True}
"""

# Ray exports what a process records every few seconds (metrics_report_interval_ms).
EXPORT_S = 90


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample at a metrics endpoint: name -> [(labels, value)]."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return samples


def matching(samples, name: str, **labels: str) -> list[float]:
    """The values of a series' samples whose labels include these."""
    return [v for have, v in samples.get(name, []) if labels.items() <= have.items()]


def value(samples, name: str, **labels: str) -> float:
    """Their sum (0 if none)."""
    return sum(matching(samples, name, **labels))


def idle(samples, name: str, **labels: str) -> bool:
    """Whether a gauge is there, and reads 0."""
    values = matching(samples, name, **labels)
    return bool(values) and not any(values)


def test_a_run_shows_in_the_execution_counters_and_the_step_histogram(
    client, stack_settings, tmp_path
):
    client.register_task(make_task(tmp_path, "metered", METERED, queue="metered"))
    assert client.run("metered", {}, timeout=120).status == ExecutionStatus.SUCCEEDED
    assert client.run("metered", {"fail": True}, timeout=120).status == ExecutionStatus.FAILED
    url = stack.read_state(stack_settings).metrics_url
    submitted, finished = metrics.SUBMITTED.exported, metrics.FINISHED.exported
    step, wait = metrics.STEP.exported, metrics.QUEUE_WAIT.exported

    def counted():
        samples = scrape(url)
        seen = (
            value(samples, submitted, kind="task", target="metered") >= 2
            and value(samples, finished, target="metered", status="succeeded") >= 1
            and value(samples, finished, target="metered", status="failed") >= 1
            and value(samples, f"{step}_count", task="metered") >= 2
            and value(samples, f"{wait}_count", target="metered") >= 2
            and idle(samples, metrics.DEPTH.exported, queue="metered", lane="normal")
            and idle(samples, metrics.PENDING.exported, queue="metered", lane="normal")
            and matching(samples, metrics.REPLICAS.exported, task="metered", state="ready")
        )
        if not seen:
            time.sleep(1)  # Ray exports every few seconds: no use reading it more often
        return samples if seen else None

    samples = wait_until(counted, timeout=EXPORT_S, what="the run's metrics at " + url)
    assert value(samples, f"{step}_count", task="metered", status="failed") >= 1
    buckets = [labels for labels, _ in samples[f"{step}_bucket"] if labels["task"] == "metered"]
    assert {"+Inf", "1.0"} <= {b["le"] for b in buckets}  # a histogram, with its buckets
    assert value(samples, f"{step}_bucket", task="metered", le="+Inf") >= 2


def test_health_names_the_metrics_endpoint(cli_env, stack_settings):
    st = stack.read_state(stack_settings)
    assert st.metrics_url == f"http://127.0.0.1:{st.ports['ray_metrics']}/metrics"
    result = CliRunner().invoke(app, ["health", "--json"])
    shown = {c["name"]: c for c in json.loads(result.stdout)}["metrics"]
    assert (shown["ok"], shown["detail"]) == (True, st.metrics_url)
    assert "ray_" in urllib.request.urlopen(st.metrics_url, timeout=10).read().decode()


def test_health_finds_the_endpoint_of_a_cluster_it_did_not_start(stack_settings, tmp_path):
    # Redis and Ray named, as in production: no stack.json to read it from.
    own = Settings(
        home=tmp_path,
        redis={"url": stack_settings.redis.url},
        ray={"address": stack_settings.ray.address},
    )
    st = stack.read_state(stack_settings)
    shown = {c.name: c for c in stack.health(own)}["metrics"]
    # The head as the controller found it in Ray's node table (its address on the network).
    assert shown.ok and re.fullmatch(
        rf"http://[^/]+:{st.ports['ray_metrics']}/metrics", shown.detail
    )
    told = own.model_copy(
        update={"ray": own.ray.model_copy(update={"metrics_url": st.metrics_url})}
    )
    assert {c.name: c for c in stack.health(told)}["metrics"].detail == st.metrics_url


def test_the_dashboard_draws_every_series_and_only_those():
    board = json.loads((ROOT / "deploy/grafana/dashboards/wtm.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"ray_wtm_\w+", e)
    }
    assert used == {s.exported for s in metrics.ALL}
    uids = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    assert uids == {"${datasource}"}


def test_prometheus_scrapes_ray_and_grafana_reads_prometheus():
    scrape_cfg = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in scrape_cfg["scrape_configs"]}
    assert jobs["ray"]["dns_sd_configs"][0]["names"] == ["ray-head", "ray-worker"]
    provisioning = ROOT / "deploy/grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    boards = yaml.safe_load((provisioning / "dashboards/wtm.yml").read_text())
    assert boards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
