"""The embedded stack's supervisor: every second, restart what died, only that.

Started by ``wtm up`` (and by :func:`orchestrator.stack.ensure` if it is not
running) as ``python -m orchestrator.stack.supervisor`` with the stack's
settings as JSON on stdin; its pid is in ``stack.json`` and ``wtm down`` stops
it first. It exits when the stack it watches is no longer recorded, or
records another supervisor.
"""

from __future__ import annotations

import json
import logging
import os
import sys
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


if __name__ == "__main__":
    sys.exit(main())
