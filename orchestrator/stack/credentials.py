"""The embedded stack's own secrets: its Ray auth token and its Redis password.

Each is random, made once per home and kept in a file under
``WTM_HOME/secrets`` that only its owner can read (the folder 0700, the
files 0600), so a token in ``~/.ray/auth_token`` (which any plain
``ray.init()`` writes) or another stack's never mixes with this one's.
Delete a file while the stack is down to rotate that secret.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from orchestrator.settings import Settings


def folder(settings: Settings) -> Path:
    return settings.home / "secrets"


def ray_token_file(settings: Settings) -> Path:
    """The file holding the embedded Ray head's auth token, made if missing."""
    path = folder(settings) / "ray_auth_token"
    _ensure(path)
    return path


def redis_password(settings: Settings) -> str:
    """The embedded redis-server's password, made if missing."""
    path = folder(settings) / "redis_password"
    _ensure(path)
    return path.read_text().strip()


def private_file(path: Path, text: str) -> None:
    """Write text to a file only its owner can read or write (replacing it at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _ensure(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.exists():
        return
    # 256 bits, hex: what `ray get-auth-token --generate` makes, and safe in a Redis URL.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    private_file(tmp, secrets.token_hex(32))
    try:  # whole or not there; of two processes making it at once, the first one's stands
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
