"""``[executor]`` options for ``kind = "modal"``, and the names the deployed app uses."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.reporting.cost import Footprint

log = logging.getLogger(__name__)


#: Never more GPU containers than this, whatever the config says.
MAX_CONTAINERS_LIMIT = 10
#: Modal's limit on one call's arguments before they go through blob storage.
PAYLOAD_LIMIT_BYTES = 2 * 1024 * 1024
#: The class and functions ``jobs/modal_app.py`` deploys (looked up by name).
EMBEDDER_CLASS = "Embedder"
INGEST_FUNCTION = "ingest_episode"
#: The deployment file, as a module: an ephemeral run (``deployed = false``) starts a copy of it.
APP_MODULE = "jobs.modal_app"


def roster_name(app_name: str) -> str:
    """The ``modal.Dict`` where the app's GPU containers record themselves when they start."""
    return f"{app_name}-containers"


LOGIN_HELP = (
    "Modal: no credentials found. Log in once with `modal token new` (opens a browser and "
    "writes ~/.modal.toml), or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (from "
    "https://modal.com/settings/tokens). To run without Modal, use --executor local."
)

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?#LW]+$")


# ---------------------------------------------------------------------------- options
@dataclass(slots=True)
class ModalOptions:
    """``[executor]`` options for ``kind = "modal"`` (also read by ``jobs/modal_app.py``)."""

    app_name: str = "podembed"
    environment: str = ""  # Modal environment; "" = the profile's default
    deployed: bool = True  # False: start an ephemeral copy of jobs/modal_app.py per run
    gpu: str = "A10G"  # Modal's GPU string; one constant, used by the app and reports
    max_containers: int = 10  # GPU containers at once; never above 10
    inflight_per_container: int = 4  # batches queued per container (memory vs. GPU idling)
    scaledown_window_s: int = 15  # idle seconds before a container stops (billed)
    batch_timeout_s: int = 300  # one batch, per attempt
    startup_timeout_s: int = 900  # container start incl. loading weights from the Volume
    retries: int = 2  # Modal retries of a crashed or timed-out batch, before our split
    gpu_cpu: float = 2.0  # cores each GPU container reserves (billed)
    gpu_memory_mib: int = 12 * 1024  # fp32 weights are read, then kept in the configured precision
    job_cpu: float = 1.0  # cores of the nightly/ingest/reindex job container (billed)
    job_memory_mib: int = 2048
    trigger_per_minute: int = 60  # web trigger: requests per minute before it answers 429
    region: str = ""  # Modal region for GPU and job containers (near MongoDB); "" = anywhere
    proxy: str = ""  # Modal Proxy for the jobs (a static outbound IP for the DB's access list)
    abort_after_failures: int = 10  # stop the run when this many batches fail before any works
    schedule: str = "0 3 * * *"  # nightly backfill, cron in UTC; "" = no schedule
    backfill_timeout_s: int = 6 * 3600
    ingest_timeout_s: int = 1800
    weights_volume: str = "podembed-hf-cache"  # HF_HOME lives here
    reports_volume: str = "podembed-reports"  # run reports of scheduled and triggered runs
    mongo_secret: str = "podembed-mongo"  # holds the URI under the config's uri_env name
    trigger_secret: str = "podembed-trigger"  # holds PODEMBED_TRIGGER_TOKEN
    token_env: str = "PODEMBED_TRIGGER_TOKEN"

    def validate(self, prefix: str) -> None:
        """Reject settings Modal would refuse, or that break the cost or memory bounds."""
        if not 1 <= self.max_containers <= MAX_CONTAINERS_LIMIT:
            raise ConfigError(
                f"{prefix}.max_containers: must be between 1 and {MAX_CONTAINERS_LIMIT} "
                f"(got {self.max_containers})"
            )
        if not self.gpu.strip():
            raise ConfigError(f'{prefix}.gpu: must name a GPU (e.g. "A10G")')
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", self.app_name):
            raise ConfigError(
                f"{prefix}.app_name: {self.app_name!r} is not a Modal app name "
                "(lowercase letters, digits, '-', '_', '.')"
            )
        if not 1 <= self.inflight_per_container <= 64:
            raise ConfigError(f"{prefix}.inflight_per_container: must be between 1 and 64")
        if not 2 <= self.scaledown_window_s <= 3600:
            raise ConfigError(f"{prefix}.scaledown_window_s: must be between 2 and 3600")
        for name in ("batch_timeout_s", "startup_timeout_s", "backfill_timeout_s", "ingest_timeout_s"):
            if not 10 <= getattr(self, name) <= 86400:
                raise ConfigError(f"{prefix}.{name}: must be between 10 and 86400 seconds")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"{prefix}.retries: must be between 0 and 10 (Modal's limit)")
        if not 0.125 <= self.gpu_cpu <= 64 or not 0.125 <= self.job_cpu <= 64:
            raise ConfigError(
                f"{prefix}.gpu_cpu / job_cpu: must be between 0.125 (Modal's minimum) and 64 cores"
            )
        if not 128 <= self.gpu_memory_mib <= 344064 or not 128 <= self.job_memory_mib <= 344064:
            raise ConfigError(f"{prefix}.gpu_memory_mib / job_memory_mib: must be between 128 and 344064 MiB")
        if not 1 <= self.trigger_per_minute <= 10000:
            raise ConfigError(f"{prefix}.trigger_per_minute: must be between 1 and 10000")
        if self.abort_after_failures < 0:
            raise ConfigError(f"{prefix}.abort_after_failures: must be 0 (never) or more")
        if self.schedule:
            fields_ = self.schedule.split()
            if len(fields_) != 5 or not all(_CRON_FIELD.match(f) for f in fields_):
                raise ConfigError(
                    f"{prefix}.schedule: {self.schedule!r} is not a 5-field cron expression "
                    '(minute hour day month weekday, UTC), e.g. "0 3 * * *"; "" disables it'
                )
        for name in ("region", "proxy"):
            value = getattr(self, name)
            if value and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", value):
                raise ConfigError(f"{prefix}.{name}: {value!r} is not a Modal {name} name")
        for name in ("weights_volume", "reports_volume", "mongo_secret", "trigger_secret", "token_env"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{prefix}.{name}: must not be empty")

    def footprint(self, job_container: bool = True) -> Footprint:
        """What the deployed containers reserve and how long they idle (for the bill)."""
        return Footprint(
            gpu_cpu=self.gpu_cpu,
            gpu_memory_gib=self.gpu_memory_mib / 1024,
            job_cpu=self.job_cpu if job_container else 0.0,
            job_memory_gib=self.job_memory_mib / 1024 if job_container else 0.0,
            idle_s=float(self.scaledown_window_s),
            attempt_limit_s=float(self.batch_timeout_s * (self.retries + 1)),
        )

    @property
    def max_in_flight(self) -> int:
        """Batches handed to Modal and not yet answered."""
        return self.max_containers * self.inflight_per_container
