"""What the benchmark scripts share: progress lines, and stopping their own stack."""

from __future__ import annotations

import contextlib
import sys

from orchestrator import Client, stack
from orchestrator.settings import Settings


def say(text: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(text, file=sys.stderr, flush=True)


def stop_stack(client: Client | None, settings: Settings) -> None:
    """Close the client, leave Ray if this process joined it, stop the script's stack."""
    if client is not None:
        client.close()
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    stack.down(settings)
