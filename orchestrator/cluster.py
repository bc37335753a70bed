"""The Ray connection: explicit, one cluster per process, never switched behind a caller's back.

A process is a Ray driver of at most one cluster. :func:`connect` makes it
one, or confirms it already is one of this stack's cluster, and refuses with
a clear error to switch a process that drives another. Work any process must
be able to do, such as deploying the controller and dispatchers when a stack
starts, runs in a short-lived child process (:func:`deploy`,
:func:`remove_actors`), so a process can start or stop a second stack while
it drives the first.

Run as ``python -m orchestrator.cluster deploy|ensure|remove`` with the
settings as JSON on stdin (never on the command line: they may hold passwords).

A cluster whose settings name an auth token file (``ray.auth_token_file``;
the embedded stack names its own) is reached with Ray's token
authentication on and that token, whatever ``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token`` hold (:func:`with_auth`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from orchestrator import keys
from orchestrator.errors import StackError
from orchestrator.secrets import redact_text
from orchestrator.settings import Settings

CHILD_TIMEOUT_S = 180.0
_RESULT = "wtm-cluster-result: "  # marks the child's answer among whatever Ray prints
_ERROR = "wtm-cluster-error: "


def connect(settings: Settings) -> None:
    """Make this process a driver of the stack's cluster (a no-op if it already is).

    StackError if this process drives another cluster: a driver talks to one
    cluster, and switching would break every handle the caller holds.
    """
    import ray

    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if same_cluster(current, settings.ray.address):
            return
        raise StackError(
            f"this process is a Ray driver of the cluster at {current}, not of "
            f"{settings.ray.address}; a process drives one cluster: use another process"
        )
    _use_token(settings.ray.auth_token_file)
    ray.init(
        address=settings.ray.address,
        namespace=settings.ray.namespace,
        log_to_driver=False,
        logging_level="WARNING",
    )


def with_auth(env: dict[str, str], token_file: Path | None) -> dict[str, str]:
    """An environment that turns Ray's token authentication on with the token in
    ``token_file`` (unchanged if None). ``RAY_AUTH_TOKEN`` goes: it would win over the file."""
    if token_file is None:
        return dict(env)
    out = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    return {**out, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def _use_token(token_file: Path | None) -> None:
    """Have this process, about to become a driver, authenticate with ``token_file``.

    Ray reads its mode and token from the environment, and caches both: they are
    set, then read again (as ``ray.init`` does when it enables token auth itself).
    """
    if token_file is None:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    auth = with_auth(dict(os.environ), token_file)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update({k: auth[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def same_cluster(a: str | None, b: str | None) -> bool:
    """Whether two GCS addresses name one cluster: one port, and one host or this machine.

    Ray reports a head by the machine's address even when it was given 127.0.0.1.
    """
    if not (a and b):
        return False
    (host_a, port_a), (host_b, port_b) = a.rsplit(":", 1), b.rsplit(":", 1)
    if port_a != port_b:
        return False
    return host_a == host_b or (_this_machine(host_a) and _this_machine(host_b))


def _this_machine(host: str) -> bool:
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    mine = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return address.is_loopback or str(address) in mine


def deploy(settings: Settings, replace: bool = True) -> list[str]:
    """Start the controller and the dispatchers; returns the dispatchers.

    Idempotent. With ``replace`` (``wtm up``) one running with other settings
    is replaced; without it (whoever notices the control plane gone and puts
    it back) only what is missing is started.
    """
    return json.loads(_in_child("deploy" if replace else "ensure", settings))


def remove_actors(settings: Settings) -> None:
    """Remove this system's named actors from a cluster we did not start."""
    _in_child("remove", settings)


def _in_child(verb: str, settings: Settings) -> str:
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = {
        **with_auth(dict(os.environ), settings.ray.auth_token_file),
        "PYTHONPATH": f"{package_root}{os.pathsep}{path}" if path else package_root,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cluster", verb],
            input=settings.model_dump_json(),
            capture_output=True,
            text=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{verb} on the Ray cluster took over {CHILD_TIMEOUT_S:g}s") from e
    if done.returncode != 0:
        marked = [line for line in done.stderr.splitlines() if line.startswith(_ERROR)]
        lines = marked or (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        reason = redact_text(lines[-1].removeprefix(_ERROR))
        raise StackError(f"{verb} on the Ray cluster at {settings.ray.address} failed: {reason}")
    answers = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if not answers:
        raise StackError(f"{verb} on the Ray cluster at {settings.ray.address} gave no answer")
    return answers[-1].removeprefix(_RESULT)


def _deploy_here(settings: Settings, replace: bool) -> list[str]:
    from orchestrator import dispatcher
    from orchestrator.runtime import controller

    controller.deploy(settings, replace)
    return dispatcher.deploy(settings, replace)


def _remove_here(settings: Settings) -> None:
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == settings.ray.namespace and keys.is_ours(actor["name"]):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))


def main(argv: list[str]) -> int:
    """The child's side: connect, do one thing, print its result as JSON."""
    verb = argv[0] if argv else ""
    if verb not in ("deploy", "ensure", "remove"):
        print(
            f"usage: python -m orchestrator.cluster deploy|ensure|remove (got {verb!r})",
            file=sys.stderr,
        )
        return 2
    settings = Settings(**json.loads(sys.stdin.read()))
    try:
        connect(settings)
        if verb == "remove":
            result = _remove_here(settings)
        else:
            result = _deploy_here(settings, replace=verb == "deploy")
    except Exception as e:  # noqa: BLE001 - the parent shows the last line
        print(f"{_ERROR}{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(_RESULT + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
