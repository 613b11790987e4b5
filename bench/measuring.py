"""What the benchmarks read about processes and the machine while a run goes on."""

from __future__ import annotations

import threading
import time


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak RSS so far (VmHWM). Not wait4's ru_maxrss: that keeps the high-water mark of
    the forked parent process from before exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class CpuSampler:
    """The machine's busy share of CPU over time (from /proc/stat), to say afterwards how busy the
    machine was between two moments, e.g. while a sink was receiving."""

    def __init__(self, interval: float = 0.25) -> None:
        self._interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (perf_counter, busy jiffies, all jiffies)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            self.samples.append((time.perf_counter(), sum(values) - idle, sum(values)))
            self._stop.wait(self._interval)

    def busy(self, start: float, end: float) -> float | None:
        """The busy share of all CPUs (0..1) between `start` and `end` (perf_counter times)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (_, busy0, all0), (_, busy1, all1) = inside[0], inside[-1]
        return (busy1 - busy0) / (all1 - all0) if all1 > all0 else None
