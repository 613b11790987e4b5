"""A standalone Flink cluster on 127.0.0.1 for tests, benchmarks and trying things out.

The same topology as a Kubernetes deployment: a JobManager, a TaskManager with two slots, and a Beam
Python worker pool beside the TaskManager (`--environment_type=EXTERNAL`). Pipelines reach it with
`--runner=FlinkRunner --flink_master=localhost:8081 --flink_job_server_jar=<jar>`; the FlinkRunner starts
the Beam job server from that jar and points it at the cluster.

    python -m flink.cluster fetch    # job server jar (Maven) and Flink distribution (PyPI), cached
                                     # (or each alone: `jobserver`, `dist`)
    python -m flink.cluster start    # JobManager, TaskManager, worker pool; prints the options to use
    python -m flink.cluster stop

Everything lives under `.cache/flink/` in the checkout (ignored by git); nothing is installed into the
project's environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.runners import flink_rest

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FLINK_CACHE_DIR", REPO / ".cache" / "flink"))
#: The job server's Maven project: Beam's Flink runner shaded into one jar, with our fix of #27648.
JOBSERVER = REPO / "flink" / "jobserver"
#: Beam 2.62's newest supported Flink line, and the newest release of that line on PyPI.
FLINK_MINOR = "1.19"
FLINK_VERSION = "1.19.3"
HOST = "127.0.0.1"


def beam_version() -> str:
    from importlib.metadata import version

    return version("apache-beam")


def job_server_jar() -> Path:
    return CACHE / f"beam-runners-flink-{FLINK_MINOR}-job-server-{beam_version()}.jar"


def flink_home() -> Path:
    return CACHE / f"flink-{FLINK_VERSION}"


def job_server_sources_digest() -> str:
    """SHA-256 over the job server's Maven project (pom and our patch to Beam), to know a stale jar."""
    digest = hashlib.sha256()
    for path in sorted([JOBSERVER / "pom.xml", *(p for p in (JOBSERVER / "src").rglob("*") if p.is_file())]):
        digest.update(path.relative_to(JOBSERVER).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fetch_job_server(log=print) -> Path:
    """Builds Beam's Flink job server jar with Maven (from Maven Central), again when its sources change."""
    jar = job_server_jar()
    stamp = jar.with_name(jar.name + ".sources-sha256")
    sources = job_server_sources_digest()
    if jar.is_file() and stamp.is_file() and stamp.read_text().strip() == sources:
        return jar
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Beam Flink job server; install Maven.")
    log(f"Building the Beam {beam_version()} Flink {FLINK_MINOR} job server with Maven…")
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(JOBSERVER / "pom.xml"),
            "package",
            f"-Dbeam.version={beam_version()}",
            f"-Dflink.minor={FLINK_MINOR}",
        ],
        check=True,
    )
    built = JOBSERVER / "target" / jar.name
    jar.parent.mkdir(parents=True, exist_ok=True)
    partial = jar.with_suffix(".part")
    shutil.copyfile(built, partial)
    partial.rename(jar)
    stamp.write_text(sources + "\n")
    shutil.rmtree(JOBSERVER / "target", ignore_errors=True)
    return jar


def fetch_flink(log=print) -> Path:
    """Assembles a Flink distribution from PyPI's apache-flink (scripts, conf) and -libraries (jars)."""
    home = flink_home()
    if (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        return home
    downloads = CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"Fetching Flink {FLINK_VERSION} from PyPI (apache-flink, apache-flink-libraries)…")
    for package in ("apache-flink", "apache-flink-libraries"):
        # A wheel's name has `_` where the sdist's has `-`.
        if not list(downloads.glob(f"{package.replace('-', '?')}-{FLINK_VERSION}*")):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
                + ["--dest", str(downloads), f"{package}=={FLINK_VERSION}"],
                check=True,
            )
    staging = Path(tempfile.mkdtemp(prefix="flink-", dir=CACHE))
    libraries = next(downloads.glob(f"apache?flink?libraries-{FLINK_VERSION}*"))
    _unpack_tree(libraries, "deps/", staging)
    scripts = next(downloads.glob(f"apache_flink-{FLINK_VERSION}-*.whl"))
    _unpack_tree(scripts, "pyflink/bin/", staging / "bin")
    _unpack_tree(scripts, "pyflink/conf/", staging / "conf")
    for script in (staging / "bin").iterdir():
        script.chmod(0o755)
    if home.exists():
        shutil.rmtree(home)
    staging.rename(home)
    return home


def _unpack_tree(archive: Path, prefix: str, dest: Path) -> None:
    """Extracts the files under `prefix` (at any depth of the archive's top folder) into `dest`."""
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    target = dest / name[len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
        return
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            inner = member.name.split("/", 1)[1] if "/" in member.name else ""
            if member.isfile() and inner.startswith(prefix):
                target = dest / inner[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)


@dataclass(frozen=True)
class ClusterConfig:
    rest_port: int = 8081
    rpc_port: int = 6123
    worker_pool_port: int = 50000
    slots: int = 2
    workdir: Path = CACHE / "cluster"
    #: Where Flink's Prometheus reporter code pushes the metrics (a push gateway's URL), or None. The
    #: pull reporter of the k8s config listens on every interface, which a local cluster must not.
    metrics_push_url: str | None = None


def flink_config(config: ClusterConfig) -> str:
    """Flink's config.yaml: everything bound to loopback, two slots, checkpoints on local disk."""
    checkpoints = (config.workdir / "checkpoints").as_uri()
    savepoints = (config.workdir / "savepoints").as_uri()
    java_opts = (
        "--add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED "
        "--add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED "
        "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED "
        "--add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED "
        "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED "
        "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED "
        "--add-opens=java.base/java.text=ALL-UNNAMED"
    )
    return f"""\
env:
  java:
    opts:
      all: {java_opts}
jobmanager:
  bind-host: {HOST}
  rpc:
    address: {HOST}
    port: {config.rpc_port}
  memory:
    process:
      size: 1024m
taskmanager:
  bind-host: {HOST}
  host: {HOST}
  numberOfTaskSlots: {config.slots}
  memory:
    process:
      size: 2048m
parallelism:
  default: 1
rest:
  address: {HOST}
  bind-address: {HOST}
  port: {config.rest_port}
blob:
  server:
    port: "0"
state:
  checkpoints:
    dir: {checkpoints}
  savepoints:
    dir: {savepoints}
""" + (_push_reporter(config.metrics_push_url) if config.metrics_push_url else "")


def _push_reporter(url: str) -> str:
    return f"""\
metrics:
  reporter:
    promgateway:
      factory.class: org.apache.flink.metrics.prometheus.PrometheusPushGatewayReporterFactory
      hostUrl: {url}
      jobName: aws-gelf-local
      randomJobNameSuffix: "false"
      deleteOnShutdown: "false"
      interval: 1 SECONDS
"""


class FlinkCluster:
    """Starts and stops the cluster's three processes; their pids and logs live in `workdir`."""

    def __init__(self, config: ClusterConfig = ClusterConfig()):
        self.config = config
        self.home = flink_home()
        self.workdir = config.workdir
        self.conf_dir = self.workdir / "conf"
        self.log_dir = self.workdir / "log"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.config.rest_port}"

    @property
    def flink_master(self) -> str:
        return f"localhost:{self.config.rest_port}"

    @property
    def worker_pool(self) -> str:
        return f"localhost:{self.config.worker_pool_port}"

    def pipeline_args(self, parallelism: int = 2) -> list[str]:
        """The options that send a pipeline to this cluster."""
        return [
            "--runner=FlinkRunner",
            f"--flink_version={FLINK_MINOR}",
            f"--flink_master={self.flink_master}",
            f"--flink_job_server_jar={job_server_jar()}",
            "--environment_type=EXTERNAL",
            f"--environment_config={self.worker_pool}",
            f"--parallelism={parallelism}",
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LOG_DIR=str(self.log_dir),
            FLINK_PID_DIR=str(self.workdir),
        )
        return env

    def start(self, timeout: float = 90.0, worker_env: dict[str, str] | None = None) -> None:
        """Starts the cluster; `worker_env` is added to the SDK workers' environment (AWS settings)."""
        if self.is_up():
            raise RuntimeError(f"Something already answers on {self.rest_url}; stop it first.")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        if self.conf_dir.exists():
            shutil.rmtree(self.conf_dir)
        shutil.copytree(self.home / "conf", self.conf_dir)
        (self.conf_dir / "config.yaml").write_text(flink_config(self.config))
        (self.conf_dir / "masters").write_text(f"{HOST}:{self.config.rest_port}\n")
        (self.conf_dir / "workers").write_text(f"{HOST}\n")
        env = self._env()
        subprocess.run([self.home / "bin" / "jobmanager.sh", "start"], env=env, check=True)
        subprocess.run([self.home / "bin" / "taskmanager.sh", "start"], env=env, check=True)
        self._start_worker_pool(worker_env or {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            overview = self.overview()
            if overview and overview.get("slots-total", 0) >= self.config.slots:
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Flink did not come up within {timeout:.0f} s; see the logs in {self.log_dir}")

    def _start_worker_pool(self, worker_env: dict[str, str]) -> None:
        env = dict(os.environ)
        env.update(worker_env)
        # The pool starts each SDK worker as `python …`: the same interpreter and packages as ours.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        log = open(self.log_dir / "worker-pool.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "flink.worker_pool", f"--port={self.config.worker_pool_port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        (self.workdir / "worker-pool.pid").write_text(str(process.pid))

    def taskmanager_log(self) -> str:
        """What the TaskManagers logged so far (e.g. the line that shows the job server's #27648 fix)."""
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*taskexecutor*"))
        )

    def stop(self) -> None:
        env = self._env()
        for script in ("taskmanager.sh", "jobmanager.sh"):
            if (self.home / "bin" / script).exists():
                subprocess.run(
                    [self.home / "bin" / script, "stop-all"],
                    env=env,
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        pid_file = self.workdir / "worker-pool.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.killpg(pid, signal.SIGTERM)
                for _ in range(50):
                    os.killpg(pid, 0)
                    time.sleep(0.1)
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            pid_file.unlink()

    def rest(self, path: str, method: str = "GET") -> dict:
        return flink_rest(self.rest_url, path, method)

    def overview(self) -> dict | None:
        try:
            return self.rest("/overview")
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    def is_up(self) -> bool:
        return self.overview() is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flink.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "jobserver", "dist", "start", "stop", "status"])
    parser.add_argument("--rest-port", type=int, default=8081)
    parser.add_argument("--worker-pool-port", type=int, default=50000)
    args = parser.parse_args(argv)
    cluster = FlinkCluster(ClusterConfig(rest_port=args.rest_port, worker_pool_port=args.worker_pool_port))
    if args.command in ("fetch", "jobserver"):
        print(fetch_job_server())
    if args.command in ("fetch", "dist"):
        print(fetch_flink())
    if args.command in ("fetch", "jobserver", "dist"):
        return 0
    if args.command == "start":
        fetch_job_server()
        fetch_flink()
        cluster.start()
        print(f"Flink {FLINK_VERSION} is up: {cluster.rest_url} (logs in {cluster.log_dir}).")
        print("Submit with: " + " ".join(cluster.pipeline_args()))
    elif args.command == "stop":
        cluster.stop()
        print("Flink stopped.")
    else:
        overview = cluster.overview()
        print(json.dumps(overview, indent=2) if overview else f"Nothing answers on {cluster.rest_url}.")
        return 0 if overview else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
