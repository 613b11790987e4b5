"""The pinned Beam version is one and the same wherever it appears."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version

from tests.conftest import REPO


def pinned_beam() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.startswith("apache-beam")]
    assert len(pins) == 1 and "==" in pins[0], pins
    return pins[0].split("==", 1)[1]


def test_beam_is_pinned_to_one_exact_version_and_installed_at_it():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned_beam())
    assert version("apache-beam") == pinned_beam()


def test_the_docker_image_builds_on_the_sdk_image_of_the_pinned_version():
    dockerfile = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases == [f"apache/beam_python3.11_sdk:{pinned_beam()}"]
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert re.search(r"^RUN pip install --no-cache-dir \.", dockerfile, flags=re.MULTILINE)
