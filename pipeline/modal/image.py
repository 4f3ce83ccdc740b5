"""The container image's versions: exactly what the tests ran, from one file.

``jobs/image-requirements.txt`` pins the image's packages and everything they depend on,
generated from the tested environment (the project's virtualenv)::

    python -m pipeline.modal.image > jobs/image-requirements.txt

``jobs/modal_app.py`` installs exactly those pins on the Python version written in the
file's header, and ``tests/test_modal_small.py`` fails when the file and the environment
the tests run in disagree. Torch's local build label (``+cpu``) is dropped: the image gets
the CUDA build of the same version from the package index.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

#: What the containers import (Modal's own client comes with Modal's runtime).
IMAGE_PACKAGES = (
    "torch",
    "sentence-transformers",
    "transformers",
    "huggingface_hub",
    "tokenizers",
    "safetensors",
    "sentencepiece",
    "numpy",
    "pyarrow",
    "pymongo",
    "click",
    "tqdm",
    "tenacity",
    "fastapi",
)

PINS_FILE = Path(__file__).resolve().parents[2] / "jobs" / "image-requirements.txt"
_PYTHON = re.compile(r"^#\s*python\s+(\d+\.\d+)\s*$")


def canonical(name: str) -> str:
    """A distribution name as package indexes compare them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(name: str) -> str:
    return metadata.version(name).split("+", 1)[0]  # torch 2.13.0+cpu -> 2.13.0


def closure(packages: tuple[str, ...] = IMAGE_PACKAGES) -> dict[str, str]:
    """``{name: version}`` of ``packages`` and their installed dependencies (no extras)."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    todo = list(packages)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency for another platform
        found[name] = _version(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return dict(sorted(found.items()))


def render(pins: dict[str, str]) -> str:
    """The requirements file for ``pins``, with the Python version in its header."""
    head = [
        "# The Modal image's packages, pinned to what the tests ran. Generated; do not edit:",
        "#   python -m pipeline.modal.image > jobs/image-requirements.txt",
        f"# python {sys.version_info.major}.{sys.version_info.minor}",
    ]
    return "\n".join([*head, *(f"{n}=={v}" for n, v in pins.items())]) + "\n"


def read_pins(path: Path = PINS_FILE) -> tuple[str, list[str]]:
    """``(python version, ["name==version", ...])`` from the requirements file."""
    python, pins = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        match = _PYTHON.match(line)
        if match:
            python = match.group(1)
        elif line and not line.startswith("#"):
            pins.append(line)
    return python, pins


if __name__ == "__main__":
    sys.stdout.write(render(closure()))
