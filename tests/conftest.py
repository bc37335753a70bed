"""Session fixtures: one real embedded stack (redis-server, Ray head, dispatcher).

Starting Ray costs seconds, so the whole session shares one stack in a
temporary WTM_HOME; tests isolate themselves by using their own task ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Client, cluster, stack
from orchestrator.settings import Settings
from orchestrator.testing import write_task

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "data" / "images"
TASK_PKGS = ROOT / "task_pkgs"


@pytest.fixture(scope="session")
def wtm_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wtm")


@pytest.fixture(scope="session")
def stack_settings(wtm_home) -> Settings:
    """Resolved settings of a running embedded stack, stopped after the session."""
    # Short idle timeout, upscale delay and heartbeat so scaling down, scaling up
    # and status show up quickly; a short claim time so abandoned jobs are
    # reclaimed within a test.
    settings = Settings(
        home=wtm_home,
        controller={"idle_timeout_s": 4, "upscale_delay_s": 2, "heartbeat_s": 1},
        dispatcher={"heartbeat_s": 1, "max_deliveries": 3},
    )
    try:
        stack.up(settings)  # inside: a start that fails halfway still stops what it started
        yield stack.resolve(settings)
    finally:
        stack.down(settings)


@pytest.fixture(scope="session")
def client(stack_settings) -> Client:
    c = Client(stack_settings)
    c.register_task(TASK_PKGS / "face_detection")
    yield c
    c.close()


@pytest.fixture(scope="session")
def ray_connected(stack_settings):
    """This process as a Ray driver of the session's cluster."""
    import ray

    cluster.connect(stack_settings)
    yield ray


@pytest.fixture
def cli_env(monkeypatch, wtm_home, stack_settings):
    """Point the CLI (which builds its own settings) at the session's stack."""
    monkeypatch.setenv("WTM_HOME", str(wtm_home))
    for var in ("WTM_REDIS__URL", "WTM_RAY__ADDRESS", "WTM_RECORDS__URI", "WTM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return wtm_home


make_task = write_task  # the tests' name for it


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on."""
    from orchestrator.stack.processes import free_port as pick

    return pick()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """An S3-compatible server (moto) on a free port: its ``host:port``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of an S3-compatible server shared by the session.

    Tests keep apart by bucket names of their own (MinioObjectStore's bucket_prefix).
    """
    with moto_server() as endpoint:
        yield endpoint
