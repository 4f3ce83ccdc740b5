"""Finding the user's Modal token, and turning Modal's auth and lookup errors into actionable ones."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

from pipeline.errors import ConfigError, PodembedError, TargetError
from pipeline.modal.options import LOGIN_HELP, ModalOptions

log = logging.getLogger(__name__)


def modal_config_path() -> Path:
    """Where the Modal client keeps its tokens (``MODAL_CONFIG_PATH`` or ``~/.modal.toml``)."""
    return Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")


def find_modal_credentials() -> str | None:
    """Where a Modal token is configured (``"env"`` or the file), or ``None``.

    Only looks; never talks to Modal.
    """
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return "env"
    path = modal_config_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    profiles = {k: v for k, v in doc.items() if isinstance(v, dict)}
    wanted = os.environ.get("MODAL_PROFILE")
    if wanted:
        candidates = [profiles.get(wanted) or {}]
    else:
        active = [p for p in profiles.values() if p.get("active")]
        candidates = active or list(profiles.values())
    if any(p.get("token_id") and p.get("token_secret") for p in candidates):
        return str(path)
    return None


def _inside_modal() -> bool:
    # A Modal container authenticates through its runtime, not through a token.
    if "MODAL_TASK_ID" not in os.environ and "MODAL_IS_REMOTE" not in os.environ:
        return False
    import modal

    return not modal.is_local()


def require_modal_credentials() -> None:
    """Fail at once, with how to log in, when no Modal token is configured."""
    if _inside_modal():
        return
    if find_modal_credentials() is not None:
        return
    half = [v for v in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET") if os.environ.get(v)]
    if half:
        missing = ({"MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"} - set(half)).pop()
        raise ConfigError(f"Modal: {half[0]} is set but {missing} is not. {LOGIN_HELP}")
    raise ConfigError(LOGIN_HELP)


def modal_error(exc: BaseException, options: ModalOptions, what: str) -> PodembedError | None:
    """A user-actionable error for Modal's auth and lookup failures, else ``None``."""
    try:
        from modal import exception as mexc
    except ImportError:  # pragma: no cover - modal is a dependency
        return None
    if isinstance(exc, mexc.AuthError):
        return ConfigError(f"{LOGIN_HELP} ({exc})")
    if isinstance(exc, mexc.NotFoundError):
        env = f" in environment {options.environment!r}" if options.environment else ""
        return TargetError(
            f"Modal: {what} of app {options.app_name!r} not found{env}: deploy it first with "
            "`modal deploy jobs/modal_app.py` ({exc})"
        )
    return None
