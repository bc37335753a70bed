"""Supervisors: restart what died, only that, with no one asking.

:func:`main` supervises the embedded stack. ``wtm up`` (and
:func:`orchestrator.stack.ensure` if it is not running) starts it as
``python -m orchestrator.stack.supervisor`` with the stack's settings as JSON
on stdin; its pid is in ``stack.json`` and ``wtm down`` stops it first. It
exits when the stack it watches is no longer recorded, or records another
supervisor.

:func:`watch_cluster` keeps the control plane deployed on a cluster this
system did not start (production: Redis, MongoDB and Ray run elsewhere, and
restart by their own means). ``wtm supervise`` runs it in the foreground,
as the compose file's ``wtm-supervisor`` service does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from orchestrator.settings import Settings

PERIOD_S = 1.0
REDEPLOY_S = 30.0  # a control plane found gone is deployed again at most this often
STRIKES = 3  # a part is restarted once it failed this many checks in a row (not just slow)

log = logging.getLogger("wtm.supervisor")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from orchestrator import stack
    from orchestrator.stack import state

    settings = Settings(**json.loads(sys.stdin.read()))
    log.info("supervising the stack in %s (pid %d)", settings.home, os.getpid())
    deployed_at = time.monotonic()  # `up` just deployed it
    strikes = 0
    while True:
        time.sleep(PERIOD_S)
        try:
            with state.locked(settings):
                st = state.read(settings)
                if st is None or st.supervisor_pid not in (None, os.getpid()):
                    log.info(
                        "the stack in %s is down or supervised by another: exiting", settings.home
                    )
                    return 0
                strikes = strikes + 1 if stack.dead_parts(settings, st) else 0
                if 0 < strikes < STRIKES:
                    continue
                strikes = 0
                may_deploy = time.monotonic() - deployed_at > REDEPLOY_S
                restarted = stack.heal(settings, st, deploy=may_deploy)
            if "the control plane" in restarted:
                deployed_at = time.monotonic()
            if restarted:
                log.warning("restarted %s", ", ".join(restarted))
        except Exception:
            log.exception("healing the stack failed")


def watch_cluster(
    settings: Settings, stop: threading.Event | None = None, period_s: float = 2.0
) -> None:
    """Deploy the controller and dispatchers again whenever they are gone (a new Ray
    head, say), checking every ``period_s`` until ``stop`` is set."""
    from orchestrator import cluster
    from orchestrator.stack.health import control_plane_alive
    from orchestrator.stack.services import redis_ok

    stop = stop or threading.Event()
    url = settings.redis.url
    deployed_at = -REDEPLOY_S
    log.info("keeping the control plane deployed on %s", settings.ray.address)
    while not stop.wait(period_s):
        try:
            gone = redis_ok(url) and not control_plane_alive(url)
            if gone and time.monotonic() - deployed_at > REDEPLOY_S:
                log.warning("the control plane is gone: deploying it")
                cluster.deploy(settings, replace=False)
                deployed_at = time.monotonic()
        except Exception:
            log.exception("deploying the control plane failed")


if __name__ == "__main__":
    sys.exit(main())
