"""A clean stop for the streaming sources of this process.

A SIGTERM/SIGINT handler calls `request_stop()`; every source (Kinesis shards, SQS pollers) then
finishes its restriction, so a local runner ends cleanly within seconds. Shutdown control only: what
is read never depends on it, and on a cluster the job is cancelled instead.
"""

from __future__ import annotations

import threading

_STOP = threading.Event()


def request_stop() -> None:
    """Make every running source in this process finish its restrictions."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a stop request (tests run many pipelines in one process)."""
    _STOP.clear()
