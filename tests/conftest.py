"""Shared fixtures: a real moto_server on 127.0.0.1, reset between tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(autouse=True)
def no_stop_request():
    """A stop requested by one test (shutdown of the Kinesis reader) must not leak into the next."""
    from transforms import kinesis

    kinesis._STOP.clear()
    yield
    kinesis._STOP.clear()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """A moto_server process on a free loopback port, for the whole session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def moto(moto_endpoint, monkeypatch) -> str:
    """The moto endpoint, wiped clean, with test credentials in the environment."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return moto_endpoint


def aws_client(service: str, endpoint: str):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def subprocess_env(moto) -> dict[str, str]:
    """Environment for a pipeline run as a subprocess against the moto endpoint."""
    env = dict(os.environ)
    env.update(CREDENTIALS)
    env["AWS_DEFAULT_REGION"] = REGION
    env["PYTHONPATH"] = str(REPO)
    return env


NODE_DIR = REPO / "tests" / "node"


def start_node(script: str, *args: str, cwd: Path = NODE_DIR) -> tuple[subprocess.Popen, int]:
    """Starts a Node.js helper that prints `READY <port>` once it listens."""
    if not (NODE_DIR / "node_modules").is_dir():
        raise RuntimeError("tests/node/node_modules is missing: run `make test` (it runs npm ci there).")
    proc = subprocess.Popen(
        ["node", script, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{script} did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split()[1])


@pytest.fixture
def kinesalite() -> str:
    """kinesalite on 127.0.0.1: a Kinesis emulator that routes writes to child shards after a split."""
    proc, port = start_node("kinesalite_local.js")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class NodeGelfReceiver:
    """The independent GELF decoder (tests/gelf_receiver.js) as a child process."""

    def __init__(self, protocol: str, out: Path, *args: str):
        self.out = out
        # Graylog runs on its own machine; here the receiver shares 2 cores with the pipeline, moto and
        # pytest, and a starved UDP receiver drops datagrams. Give it the CPU first (root may).
        self.proc, self.port = start_node(
            str(REPO / "tests" / "gelf_receiver.js"),
            "--protocol",
            protocol,
            "--port",
            "0",
            "--out",
            str(out),
            *args,
        )

        try:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, -10)
        except OSError:
            pass

    def messages(self) -> list[dict]:
        import json

        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def gelf_udp(tmp_path):
    receiver = NodeGelfReceiver("udp", tmp_path / "gelf.jsonl")
    yield receiver
    receiver.stop()
