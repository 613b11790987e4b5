"""The pipelines' counters and gauges, kept twice: as Beam metrics (the end-of-run summary, and on Flink
its metric system and Prometheus reporter) and, live, in this process for the monitoring endpoint, the
health answers and the progress lines (transforms/monitoring.py).

Beam's local runner reports its metrics only once the run ends, which for a streaming run is never; its
workers run in the launcher's process, so a live copy here is what an operator can scrape while it runs.
On Flink the workers are other processes: their live copies are never read, and Flink's metric system
carries the Beam ones. The live copy is read for monitoring only, never for what the pipeline does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from apache_beam.metrics import Metrics

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    counters: Mapping[tuple[str, str, Labels], float]
    gauges: Mapping[tuple[str, str, Labels], float]
    taken_at: float


class LiveMetrics:
    """This process's metric values; cheap to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str, Labels], float] = {}
        self._gauges: dict[tuple[str, str, Labels], float] = {}

    def inc(self, key: tuple[str, str, Labels], amount: float) -> None:
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def set(self, key: tuple[str, str, Labels], value: float) -> None:
        with self._lock:
            self._gauges[key] = value

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(dict(self._counters), dict(self._gauges), time.time())

    def clear(self) -> None:
        with self._lock:
            self._counters.clear()
            self._gauges.clear()


LIVE = LiveMetrics()


def _labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class Counter:
    """A Beam counter that also counts live. `labels` become Prometheus labels; Beam, which has none,
    gets them in the name (`name_value`)."""

    __slots__ = ("_beam", "_key")

    def __init__(self, namespace: str, name: str, beam: bool = True, **labels: str):
        beam_name = "_".join([name, *(str(v) for _, v in _labels(labels))])
        self._beam = Metrics.counter(namespace, beam_name) if beam else None
        self._key = (namespace, name, _labels(labels))
        LIVE.inc(self._key, 0)  # shown from the start, at 0, as Prometheus counters should be

    def inc(self, amount: int = 1) -> None:
        if self._beam is not None:
            self._beam.inc(amount)
        LIVE.inc(self._key, amount)


class Gauge:
    __slots__ = ("_beam", "_key")

    def __init__(self, namespace: str, name: str, **labels: str):
        beam_name = "_".join([name, *(str(v) for _, v in _labels(labels))])
        self._beam = Metrics.gauge(namespace, beam_name)
        self._key = (namespace, name, _labels(labels))

    def set(self, value: float) -> None:
        self._beam.set(int(value))
        LIVE.set(self._key, value)


def counter(namespace: str, name: str, beam: bool = True, **labels: str) -> Counter:
    """`beam=False`: a live-only counter, for a breakdown whose total Beam already keeps."""
    return Counter(namespace, name, beam, **labels)


def gauge(namespace: str, name: str, **labels: str) -> Gauge:
    return Gauge(namespace, name, **labels)


def timestamp(namespace: str, name: str, **labels: str) -> None:
    """A live-only gauge set to now (seconds since the epoch): when something last happened."""
    LIVE.set((namespace, name, _labels(labels)), time.time())


class Health:
    """What the health answers are made of: which components (Graylog, an AWS service) are failing
    since when and with what, and when a source's read loop last polled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[float, str]] = {}
        self._heartbeat: float | None = None

    def succeeded(self, component: str) -> None:
        if component in self._failing:
            with self._lock:
                self._failing.pop(component, None)

    def failed(self, component: str, error: str) -> None:
        """The first failure after a success starts the clock; later ones update the error shown."""
        with self._lock:
            since = self._failing.get(component, (time.time(), ""))[0]
            self._failing[component] = (since, error)

    def heartbeat(self) -> None:
        self._heartbeat = time.time()

    def failing(self) -> list[tuple[str, float, str]]:
        with self._lock:
            return [(component, since, error) for component, (since, error) in sorted(self._failing.items())]

    def last_heartbeat(self) -> float | None:
        return self._heartbeat

    def clear(self) -> None:
        with self._lock:
            self._failing.clear()
            self._heartbeat = None


HEALTH = Health()
