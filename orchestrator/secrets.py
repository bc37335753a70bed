"""Credentials kept out of sight and out of reach.

What the system shows of a store's address passes through :func:`redact`
(a URL keeps its scheme, host, port and path, never its user or password),
and free text that may quote one (an error message) through
:func:`redact_text`. :func:`for_replicas` is what task code's process is
given of the settings: the object store, and nothing of the records store,
Redis or the Ray token.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # models import this module: it imports nothing of the package at run time
    from orchestrator.settings import Settings

# scheme://userinfo@ : everything up to the last '@' of the URL (a password may
# hold an unescaped '@' or '/'; hiding too much of an odd URL is the safe side).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)\S*@")
# Credentials passed as query parameters (redis://host/0?password=...).
_QUERY = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|pass|secret|secret_key|access_key|token)=)[^&\s]*",
    re.IGNORECASE,
)
MASK = "***"


def redact(url: str | None) -> str:
    """A URL with its credentials hidden ('' for none)."""
    return redact_text(url or "")


def redact_text(text: str) -> str:
    """Text with the credentials of every URL in it hidden."""
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    return _QUERY.sub(rf"\g<key>{MASK}", text)


def for_replicas(settings: Settings) -> Settings:
    """The settings a replica (and so task code) holds: what loading and running a
    task needs (the object store, the package cache, heartbeat periods) and no
    credential of the records store, Redis or the Ray cluster.

    The records and Redis are reached through the controller, which writes the
    replicas' worker records for them.
    """
    safe = settings.model_copy(deep=True)
    safe.redis.url = None
    safe.records.uri = None
    safe.records.database = ""
    safe.ray.address = None
    safe.ray.auth_token_file = None
    safe.config = None
    return safe
