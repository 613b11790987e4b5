"""A GELF input made of Graylog's own server classes (tests/graylog/), as a subprocess for the tests.

`tests/graylog/` is a small Java program that constructs Graylog 6.3.7's real GELF UDP/TCP/HTTP input with
its real transport and codec, launches it on 127.0.0.1 and passes what it receives through Graylog's
DecodingProcessor; it writes one JSON line per message:

    {"accepted": true, "stored": {...}, "graylog": {...}, "payload": "<base64>"}
    {"accepted": false, "error": "...", "raw": "..."}

"stored" is Message.toElasticSearchObject() without the fields Graylog adds itself (those are in
"graylog"), "payload" the bytes the codec decoded (chunks reassembled, maybe compressed; `deliveries()`
pairs the JSON sent with the document stored). A "not accepted" line is a message the codec rejected, one
the DecodingProcessor dropped, or a
transport error (too long frame, bad chunk, TLS failure, an HTTP status other than 2xx).

Import the fixture into a conftest with `from tests.graylog_receiver import graylog_receiver_fixture`; it is
named `graylog_receiver`.

The jar is built by Maven on first use and cached in `.cache/graylog/` under a hash of the Java sources and
the POM, so a change to either rebuilds it and nothing else does:

    python -m tests.graylog_receiver build
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "tests" / "graylog"
CACHE = Path(os.environ.get("GRAYLOG_RECEIVER_CACHE_DIR", REPO / ".cache" / "graylog"))
JAR_NAME = "graylog-gelf-receiver.jar"
PROTOCOLS = ("udp", "tcp", "http")


def source_hash() -> str:
    """A hash of everything the jar is built from: the POM and every file under src/."""
    digest = hashlib.sha256()
    files = [PROJECT / "pom.xml", *sorted(p for p in (PROJECT / "src").rglob("*") if p.is_file())]
    for path in files:
        digest.update(path.relative_to(PROJECT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def receiver_jar() -> Path:
    return CACHE / f"graylog-gelf-receiver-{source_hash()}" / JAR_NAME


def build_receiver(log=print) -> Path:
    """Builds the receiver with Maven (from Maven Central) unless this version of the sources is cached."""
    jar = receiver_jar()
    if jar.is_file() and (jar.parent / "lib").is_dir():
        return jar
    if shutil.which("mvn") is None:
        raise RuntimeError(
            "Maven (mvn) is needed to build the Graylog GELF receiver (tests/graylog); install Maven."
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"Building the Graylog GELF receiver with Maven into {jar.parent}…")
    build_dir = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(PROJECT / "pom.xml"),
                "package",
                f"-Dreceiver.build.dir={build_dir}",
            ],
            check=True,
        )
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=CACHE))
        shutil.move(str(build_dir / JAR_NAME), staging / JAR_NAME)
        shutil.move(str(build_dir / "lib"), staging / "lib")
        if jar.parent.exists():
            shutil.rmtree(jar.parent)
        staging.rename(jar.parent)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    # Builds of older sources are of no use any more.
    for old in CACHE.glob("graylog-gelf-receiver-*"):
        if old != jar.parent:
            shutil.rmtree(old, ignore_errors=True)
    return jar


def gelf_json(payload: bytes) -> bytes:
    """The JSON of a GELF payload: gzip and zlib are told apart by their magic bytes, as Graylog does."""
    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:1] == b"\x78":
        return zlib.decompress(payload)
    return payload


# What a GELF message's standard keys are stored as; `version` is not stored at all.
STORED_NAME_OF_STANDARD = {
    "host": "source",
    "short_message": "message",
    "full_message": "full_message",
    "level": "level",
    "timestamp": "timestamp",
}


def stored_timestamp(seconds: float) -> str:
    """GELF's float seconds as Graylog stores them: UTC, milliseconds."""
    when = datetime.fromtimestamp(round(seconds * 1000) / 1000, UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def differences(sent: dict, stored: dict) -> list[str]:
    """Each field of `sent` that Graylog did not store under the name, with the value and JSON type, that
    we sent it (an additional field `_x` is expected as `x`), and each stored field we did not send."""
    problems = []
    expected: dict[str, object] = {}
    for key, value in sent.items():
        if key == "version":
            continue
        if key in STORED_NAME_OF_STANDARD:
            name = STORED_NAME_OF_STANDARD[key]
            expected[name] = stored_timestamp(value) if key == "timestamp" else value
        elif key.startswith("_") and len(key) > 1:
            expected[key[1:]] = value
        else:
            problems.append(f"{key!r} is neither a standard GELF key nor an additional field (_name)")
    for name, value in expected.items():
        if name not in stored:
            problems.append(f"{name!r} = {value!r} was sent but not stored")
        elif type(stored[name]) is not type(value) or stored[name] != value:
            problems.append(f"{name!r} sent as {value!r}, stored as {stored[name]!r}")
    extra = sorted(stored.keys() - expected)
    problems += [f"{name!r} = {stored[name]!r} is stored but was not sent" for name in extra]
    return problems


class ReceiverProcess:
    """A test receiver as a subprocess: it prints `READY <port>` once it listens and appends one JSON line
    per message to a file. Shared by Graylog's receiver and the Node.js one (tests/conftest.py)."""

    name = "receiver"
    stop_seconds = 5.0

    def _launch(self, command: list[str], stderr: Path, ready_timeout: float) -> None:
        self.stderr = stderr
        with open(stderr, "wb") as err:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        self.port = self._wait_ready(ready_timeout)
        # Graylog runs on its own machine; here the receiver shares 2 cores with the pipeline, moto and
        # pytest, and a starved UDP receiver drops datagrams. Give it the CPU first (root may).
        try:
            os.setpriority(os.PRIO_PROCESS, self.process.pid, -10)
        except OSError:
            pass

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            readable, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if readable:
                line = self.process.stdout.readline()
                if line.startswith(b"READY "):
                    return int(line.split()[1])
        self.stop()
        pytest.fail(f"{self.name} did not start ({line!r}): {self.stderr.read_text()[-4000:]}")

    @staticmethod
    def json_lines(path: Path) -> list[dict]:
        """The whole lines of `path` (the receiver may be writing one right now)."""
        if not path.exists():
            return []
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]

    def records(self) -> list[dict]:
        return self.json_lines(self.out)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Waits until `count` lines arrived (or the timeout passed) and returns them."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL): the receiver writes what it has received and exits."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


class GraylogReceiver(ReceiverProcess):
    """Graylog's GELF input (tests/graylog) as a subprocess, writing one JSON line per message."""

    name = "the Graylog GELF receiver"
    stop_seconds = 15.0  # it decodes what connections still hold when they close

    def __init__(
        self,
        directory: Path,
        protocol: str,
        *,
        bulk: bool = False,
        tls: tuple[Path, Path] | None = None,
        port: int = 0,
        max_body: int | None = None,
        max_frame: int | None = None,
        recv_buffer: int | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        java = shutil.which("java")
        if java is None:
            pytest.fail("java is not installed: the Graylog GELF receiver needs Java 17")
        jar = build_receiver()
        self.protocol = protocol
        self.out = directory / f"graylog-{protocol}-{time.monotonic_ns()}.jsonl"
        command = [
            java,
            "-jar",
            str(jar),
            "--protocol",
            protocol,
            "--port",
            str(port),
            "--out",
            str(self.out),
        ]
        if bulk:
            command.append("--bulk")
        if tls is not None:
            cert, key = tls
            command += ["--tls", "--cert", str(cert), "--key", str(key)]
        if max_body is not None:
            command += ["--max-body", str(max_body)]
        if max_frame is not None:
            command += ["--max-frame", str(max_frame)]
        if recv_buffer is not None:
            command += ["--recv-buffer", str(recv_buffer)]
        self._launch(command, self.out.with_suffix(".stderr"), ready_timeout=60.0)

    def stored(self) -> list[dict]:
        """The documents Graylog would store (Message.toElasticSearchObject, without Graylog's own fields)."""
        return [record["stored"] for record in self.records() if record["accepted"]]

    def deliveries(self) -> list[tuple[dict, dict]]:
        """(GELF message as sent, document Graylog stores) for each accepted message."""
        first_document = json.JSONDecoder().raw_decode  # as Graylog, which drops what follows it
        return [
            (
                first_document(gelf_json(base64.b64decode(record["payload"])).decode().lstrip())[0],
                record["stored"],
            )
            for record in self.records()
            if record["accepted"]
        ]

    def rejected(self) -> list[dict]:
        return [record for record in self.records() if not record["accepted"]]


@pytest.fixture(name="graylog_receiver")
def graylog_receiver_fixture(tmp_path):
    """A factory of GraylogReceivers (same arguments, without the directory); all are stopped afterwards."""
    started: list[GraylogReceiver] = []

    def start(protocol: str, **options) -> GraylogReceiver:
        receiver = GraylogReceiver(tmp_path, protocol, **options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m tests.graylog_receiver build", file=sys.stderr)
        return 2
    print(build_receiver())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
