"""Which runner runs a pipeline, with what settings, and how a run is stopped.

Local runs go to Beam's FnApiRunner (what the DirectRunner falls back to for streaming Python);
Flink runs get the settings the Kinesis reader needs there, and are cancelled on the cluster itself.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineState

from transforms import stopping

_LOG = logging.getLogger("pipelines")

LOCAL_RUNNERS = {"directrunner", "fnapirunner", "switchingdirectrunner"}
#: Where the DirectRunner runs a streaming Python pipeline; by its path, which every Beam release knows.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
#: Flink settings the Kinesis reader needs, added unless given. Without this one, a polling splittable
#: DoFn's deferred work is never resumed once Flink takes a checkpoint (measured: Beam 2.62, Flink 1.19).
FLINK_DEFAULTS = ("--finish_bundle_before_checkpointing",)
FLINK_ACTIVE_STATES = {"CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "FAILING", "RECONCILING"}


class ConfigError(ValueError):
    """A wrong or missing option; its message names the option and says how to fix it."""


def runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return runner.rsplit(".", 1)[-1] if isinstance(runner, str) else type(runner).__name__


def prepare_runner(options: PipelineOptions) -> bool:
    """Refuses local settings that lose data; runs DirectRunner on the FnApiRunner it falls back to.

    Returns whether the run is local (one worker)."""
    lowered = runner_name(options).lower()
    if lowered in {"bundlebaseddirectrunner"}:
        raise ConfigError(
            "--runner=BundleBasedDirectRunner cannot run a Python splittable DoFn such as the Kinesis "
            "reader; use --runner=DirectRunner."
        )
    if lowered in LOCAL_RUNNERS:
        direct = options.view_as(DirectOptions)
        if direct.direct_num_workers != 1:
            raise ConfigError(
                f"--direct_num_workers={direct.direct_num_workers} is refused: Beam's local runner drops "
                "the deferred work of splittable DoFns with more than one worker (data loss). "
                "Remove it (1 worker), or use a Flink cluster for parallelism."
            )
        # The DirectRunner would first try to download Prism and then fall back to the FnApiRunner;
        # go there directly so local runs behave the same on every machine.
        options.view_as(StandardOptions).runner = LOCAL_RUNNER
    if lowered == "flinkrunner":
        check_flink_options(options)
    # The Kinesis source is unbounded, even when it stops at the latest record.
    options.view_as(StandardOptions).streaming = True
    return lowered in LOCAL_RUNNERS


def check_flink_options(options: PipelineOptions) -> None:
    """A missing job server jar fails here, not after Beam has tried to download one."""
    jar = options.view_as(FlinkRunnerOptions).flink_job_server_jar
    if jar and "://" not in jar and not Path(jar).is_file():
        raise ConfigError(
            f"--flink_job_server_jar={jar}: no such file. Build it with `make flink-jobserver` "
            "(it lands in .cache/flink/), or leave the option out to let Beam fetch it from Maven Central."
        )


#: Options of the Flink runner's Java side, which Python passes on without knowing them: never taken for
#: misspellings of ours, however close their names.
FLINK_JAVA_OPTIONS = frozenset(
    {
        "--checkpointing_interval",
        "--externalized_checkpoints_enabled",
        "--retain_externalized_checkpoints_on_cancellation",
    }
)
#: Checkpoint interval added for pipelines that act at checkpoints (SQS deletes) when none is given.
DEFAULT_CHECKPOINTING_MS = 10000
#: Options that make a run end by itself, whose sources Flink may shut down once idle. Not
#: `--stop_when_idle`: once a source has shut down, Flink (1.19, Beam 2.62) completes no further
#: checkpoint (measured), so the SQS deletes that wait for one would never come; that run is ended by
#: the launcher instead (`Stopper.stop_when`).
BOUNDED_FLAGS = frozenset({"--stop_at_latest", "--s3_prefix"})


def flink_defaults(argv: Sequence[str], pipeline: str, needs_checkpoints: bool = False) -> list[str]:
    """The Flink options to add to `argv`: the readers' needs, and a job name to find the job by.

    `needs_checkpoints`: the pipeline acknowledges its input at checkpoints (SQS messages are deleted
    by bundle finalizers, which Flink runs only when a checkpoint completes), so checkpointing is on."""
    given = {arg.split("=", 1)[0] for arg in argv}
    added = [flag for flag in FLINK_DEFAULTS if flag.split("=", 1)[0] not in given]
    if given & BOUNDED_FLAGS and "--shutdown_sources_after_idle_ms" not in given:
        # With checkpointing on, Flink keeps the (idle) Impulse source alive for ever, so a job whose
        # reader has finished would never end; this lets it end once everything was processed.
        added.append("--shutdown_sources_after_idle_ms=1000")
    if needs_checkpoints and "--checkpointing_interval" not in given:
        added.append(f"--checkpointing_interval={DEFAULT_CHECKPOINTING_MS}")
    if "--job_name" not in given:
        added.append(f"--job_name={pipeline}-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    return added


def flink_rest_url(options: PipelineOptions) -> str | None:
    """The REST address of a standalone Flink cluster, or None for Flink inside the job server."""
    master = options.view_as(FlinkRunnerOptions).flink_master
    if not master or master.startswith("["):
        return None
    return master if "://" in master else f"http://{master}"


def flink_rest(rest_url: str, path: str, method: str = "GET") -> dict:
    """One call to Flink's REST API; its JSON answer ({} when empty)."""
    request = urllib.request.Request(f"{rest_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else {}


def cancel_flink_job(rest_url: str, job_name: str, timeout: float = 30.0) -> str | None:
    """Cancels the job named `job_name` through Flink's REST API and waits until Flink has ended it.

    Beam's job server (2.62) cancels only its own invocation and leaves the job running on a remote
    cluster, so the cluster is asked directly. Returns the job's final state."""

    def call(path: str, method: str = "GET") -> dict:
        return flink_rest(rest_url, path, method)

    jobs = [j for j in call("/jobs/overview")["jobs"] if j["name"] == job_name]
    active = [j for j in jobs if j["state"] in FLINK_ACTIVE_STATES]
    for job in active:
        call(f"/jobs/{job['jid']}?mode=cancel", method="PATCH")
    deadline = time.monotonic() + timeout
    state = jobs[-1]["state"] if jobs else None
    for job in active:
        while time.monotonic() < deadline:
            state = call(f"/jobs/{job['jid']}")["state"]
            if state not in FLINK_ACTIVE_STATES and state != "CANCELLING":
                break
            time.sleep(0.5)
    return state


class Stopper:
    """SIGTERM or Ctrl-C stops the run cleanly: local sources finish their reads, a job on a cluster
    is cancelled. A second signal exits at once."""

    def __init__(self) -> None:
        self.result = None
        self.options: PipelineOptions | None = None
        self.cancelled = False
        self.cancelling: threading.Thread | None = None
        self.final_state: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def attach(self, result, options: PipelineOptions, local: bool) -> None:
        """From now on a signal cancels `result`'s job, unless the run is local."""
        if not local:
            self.result, self.options = result, options

    def _on_signal(self, signum, frame) -> None:
        if stopping.stop_requested():
            _LOG.warning("Second signal: exiting now.")
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        stopping.request_stop()
        if self.result is None:
            _LOG.warning("Stopping: finishing the current reads (signal again to exit at once).")
            return
        _LOG.warning("Stopping: cancelling the job (signal again to exit at once).")
        self.cancelled = True
        # Not in the handler itself: the main thread is inside the runner's gRPC wait.
        self.cancelling = threading.Thread(target=self._cancel, name="cancel-job", daemon=True)
        self.cancelling.start()

    def _cancel(self) -> None:
        rest_url = flink_rest_url(self.options)
        if rest_url:
            job_name = self.options.view_as(GoogleCloudOptions).job_name
            try:
                self.final_state = cancel_flink_job(rest_url, job_name)
                _LOG.info("Flink job %s: %s", job_name, self.final_state)
            except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
                _LOG.warning("Could not cancel the job on Flink at %s: %s", rest_url, error)
        try:
            self.result.cancel()
        except Exception as error:  # the job may have ended meanwhile
            _LOG.debug("The runner's cancel: %s", error)

    def stop_when(self, done, reason: str, period: float = 1.0) -> None:
        """Ends a cluster run like a signal would, once `done()` holds: for bounded runs whose job
        cannot end by itself. Only for attached (cluster) runs."""
        if self.result is None:
            return

        def watch() -> None:
            while not self.cancelled:
                try:
                    if done():
                        break
                except Exception as error:  # a failed check only delays the end
                    _LOG.warning("Checking whether the run is done failed: %s", error)
                time.sleep(period)
            if self.cancelled:
                return
            _LOG.info("%s: ending the job.", reason)
            stopping.request_stop()
            self.cancelling = threading.current_thread()  # `wait` waits for the cancellation
            self.cancelled = True
            self._cancel()

        threading.Thread(target=watch, name="stop-when", daemon=True).start()

    def wait(self, result) -> str:
        """Waits for the run to end; a cancellation asked for by a signal is a clean end."""
        try:
            result.wait_until_finish()
        except (RuntimeError, KeyboardInterrupt):
            if not self.cancelled:
                raise
        if self.cancelling is not None:
            self.cancelling.join(timeout=60)
        # Beam's job server reports a job cancelled on a remote cluster as FAILED; Flink knows better.
        state = self.final_state or result.state
        if self.cancelled and state not in (PipelineState.CANCELLED, PipelineState.DONE, "CANCELED"):
            _LOG.warning("The job was asked to cancel; its last known state is %s.", state)
        return state


def counters(result) -> dict[str, int]:
    """Final counter values of a finished pipeline, as 'namespace/name'."""
    try:
        query = result.metrics().query()
    except Exception:  # some runners cannot report metrics
        return {}
    totals: dict[str, int] = {}
    for counter in query.get("counters", []):
        key = f"{counter.key.metric.namespace}/{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[key] = totals.get(key, 0) + (value or 0)
    return totals
