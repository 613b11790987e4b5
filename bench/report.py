"""What every benchmark section returns, and the table `make bench` prints and writes."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure. `ratio` compares it with a baseline measured in the same run (the figure
    to quote: machines here are shared and noisy); `goal` says what the ratio (or value) must reach."""

    section: str
    name: str
    value: float
    unit: str
    ratio: float | None = None
    baseline: str | None = None
    goal: str | None = None
    met: bool | None = None
    note: str | None = None


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        # 1, 5 and 15 minutes, when the result is written: how busy the (shared) machine was
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            info["memory_kib"] = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    return info


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table(figures: list[Figure]) -> str:
    """A Markdown table, as the README quotes it."""
    lines = ["| section | figure | value | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for f in figures:
        ratio = f"{f.ratio:.2f}× {f.baseline}" if f.ratio is not None else ""
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        name = f.name + (f" ({f.note})" if f.note else "")
        value = f"{_number(f.value)} {f.unit}"
        lines.append(f"| {f.section} | {name} | {value} | {ratio} | {f.goal or ''} | {met} |")
    return "\n".join(lines)


def write(figures: list[Figure], settings: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    path = RESULTS / f"{now:%Y-%m-%dT%H%M}.json"
    document = {
        "date": now.isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings,
        "figures": [asdict(f) for f in figures],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
