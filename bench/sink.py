"""A GELF UDP receiver that only counts, for throughput runs: parsing every message in Python would
compete with the pipeline for the machine's two cores. `pipelines.gelf_receiver` is the one that
checks what arrives; the benchmarks' own tests check the messages themselves."""

from __future__ import annotations

import socket
import threading
import time

#: GELF chunked datagrams start with these two bytes; a message sent in chunks counts once.
_CHUNK_MAGIC = b"\x1e\x0f"
#: Linux's SO_RCVBUFFORCE, which Python's socket module does not name.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class CountingSink:
    """Counts GELF messages and bytes arriving on a UDP port, with the time of the first and last."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # past net.core.rmem_max when allowed (root), so a busy moment loses nothing
            self._socket.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 32 * 1024 * 1024)
        except OSError:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self.messages = 0
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counting-sink", daemon=True)

    def __enter__(self) -> CountingSink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()

    def _run(self) -> None:
        receive = self._socket.recv
        while not self._stop.is_set():
            try:
                data = receive(65536)
            except TimeoutError:
                continue
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            self.last = now
            self.bytes += len(data)
            # A chunked message counts at its first chunk (sequence number 0).
            if data[:2] != _CHUNK_MAGIC or data[10] == 0:
                self.messages += 1

    def wait_for(self, count: int, timeout: float) -> int:
        """Waits until `count` messages arrived, or nothing arrived for `timeout` seconds."""
        seen, since = -1, time.monotonic()
        while self.messages < count:
            if self.messages != seen:
                seen, since = self.messages, time.monotonic()
            elif time.monotonic() - since > timeout:
                break
            time.sleep(0.05)
        return self.messages

    def rate(self) -> float:
        """Messages per second between the first and the last arrival."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return self.messages / (self.last - self.first)
