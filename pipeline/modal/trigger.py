"""Starting the deployed per-episode ingest function from the CLI."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.errors import ConfigError, PodembedError, TargetError
from pipeline.modal.credentials import modal_error, require_modal_credentials
from pipeline.modal.options import INGEST_FUNCTION, ModalOptions

log = logging.getLogger(__name__)


def trigger_ingest(
    config: Config, episode_id: str, *, lookup: Callable[[str, str, str | None], Any] | None = None
) -> str:
    """Start the deployed ``ingest_episode(episode_id)``; returns the Modal call id at once.

    ``lookup(app_name, function_name, environment)`` replaces ``modal.Function.from_name``
    (tests). Follow the call with ``modal.FunctionCall.from_id(call_id).get()``.
    """
    options = config.executor.options if config.executor.kind == "modal" else ModalOptions()
    episode_id = episode_id.strip()
    if not episode_id:
        raise ConfigError("episode id: must not be empty")
    env = options.environment or None
    try:
        if lookup is None:
            require_modal_credentials()
            import modal

            fn = modal.Function.from_name(options.app_name, INGEST_FUNCTION, environment_name=env)
        else:
            fn = lookup(options.app_name, INGEST_FUNCTION, env)
        call = fn.spawn(episode_id)
    except PodembedError:
        raise
    except Exception as exc:
        mapped = modal_error(exc, options, f"function {INGEST_FUNCTION}")
        if mapped is not None:
            raise mapped from None
        raise TargetError(f"Modal: could not start {INGEST_FUNCTION}: {type(exc).__name__}: {exc}") from exc
    return str(call.object_id)
