"""Fixtures shared by every test module."""

from __future__ import annotations

import os

import pytest

# Tests never reach Modal's servers or the Hugging Face hub.
for var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
    os.environ.pop(var, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``stress`` marker unless the project configuration already does."""
    if not any(line.split(":")[0].strip() == "stress" for line in config.getini("markers")):
        config.addinivalue_line("markers", "stress: long random-kill loops; opt in with `pytest -m stress`")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight T5 encoder laid out like instructor-xl (fast; vectors meaningless)."""
    from tests.synthetic_model import TINY, build_model

    return str(build_model(tmp_path_factory.mktemp("tiny-model") / "model", TINY))
