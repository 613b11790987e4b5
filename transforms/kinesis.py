"""`ReadFromKinesis`: a splittable DoFn that reads every shard of a Kinesis stream with boto3.

The restriction is the reading state of a set of shards: per shard, the last sequence number read
(so a runner checkpoint resumes exactly after it), when the shard may be polled next, and its
watermark. A restriction owns one shard lineage: when its shard closes and has been read to the end,
the restriction adopts the children, so a parent is always drained before its children.

Kinesis limits are kept per shard: at most `--kinesis_max_polls_per_second` (5) GetRecords calls,
back-off with jitter on throttling, a new iterator after the last sequence number when one expires,
and an idle shard is polled every `--kinesis_idle_poll_seconds` without busy-looping (the
DirectRunner ignores resume delays, so the DoFn sleeps briefly itself when nothing is due).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from transforms import metrics
from transforms.aws import AwsConfig
from transforms.elements import KinesisRecord
from transforms.positions import PositionStoreConfig, StoredShard
from transforms.stopping import stop_requested

_LOG = logging.getLogger(__name__)

INITIAL_POSITIONS = ("LATEST", "TRIM_HORIZON", "AT_TIMESTAMP")
THROTTLING_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
    }
)
MAX_BACKOFF_SECONDS = 30.0


class KinesisOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Kinesis")
        group.add_argument(
            "--stream_name",
            default=None,
            help="Kinesis stream that the CloudWatch Logs subscription filter writes to.",
        )
        group.add_argument(
            "--initial_position",
            default="LATEST",
            choices=INITIAL_POSITIONS,
            help="Where a new reader starts: LATEST (records arriving after start), TRIM_HORIZON "
            "(everything retained), AT_TIMESTAMP (with --initial_timestamp).",
        )
        group.add_argument(
            "--initial_timestamp",
            default=None,
            help="With --initial_position=AT_TIMESTAMP: ISO-8601 time (2026-11-27T08:00:00Z) "
            "or epoch seconds.",
        )
        group.add_argument(
            "--stop_at_latest",
            default=False,
            action="store_true",
            help="Bounded catch-up: read until every shard is caught up, then finish (backfills, tests, "
            "the demo). Without it the pipeline streams until stopped (SIGTERM or Ctrl-C).",
        )
        group.add_argument(
            "--kinesis_max_records",
            type=int,
            default=10000,
            help="Records per GetRecords call (1-10000).",
        )
        group.add_argument(
            "--kinesis_max_polls_per_second",
            type=float,
            default=5.0,
            help="GetRecords calls per second per shard; AWS allows 5, shared by every consumer.",
        )
        group.add_argument(
            "--kinesis_idle_poll_seconds",
            type=float,
            default=1.0,
            help="How often a caught-up shard is polled for new records.",
        )


@dataclass(frozen=True)
class KinesisReadConfig:
    stream: str
    aws: AwsConfig
    initial_position: str = "LATEST"
    initial_timestamp: float | None = None
    stop_at_latest: bool = False
    max_records: int = 10000
    max_polls_per_second: float = 5.0
    idle_poll_seconds: float = 1.0
    # How long one call may poll idle shards before handing its position back to the runner. Not
    # longer: a runner serves the restrictions of one worker one call at a time, so a long call
    # starves the other shards there (measured on Flink with 10 s).
    max_process_seconds: float = 1.0
    # One restriction per shard lets a distributed runner spread shards over workers. A single local
    # worker serves restrictions one after another, so there one restriction polling every shard
    # keeps an idle poll from waiting behind the other shards' idle waits.
    split_shards: bool = True
    # Local runs: where delivered positions are kept (None on Flink, whose checkpoints keep them).
    positions: PositionStoreConfig | None = None
    # The store's key for the stream: its ARN and creation time (a stream deleted and created again under
    # the same name has new shards and sequence numbers, so the old positions mean nothing there).
    stream_key: str = ""


def parse_timestamp(text: str) -> float:
    """Epoch seconds from epoch seconds or an ISO-8601 time (naive times are UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def kinesis_config_from_options(options: PipelineOptions, aws: AwsConfig) -> KinesisReadConfig:
    """Validated reader settings; a wrong option fails at start with the fix in the message."""
    k = options.view_as(KinesisOptions)
    if not k.stream_name:
        raise ValueError(
            "--stream_name is required: the Kinesis stream your CloudWatch Logs subscription filter "
            "writes to. To try the pipeline without AWS, run `make demo` (or add --demo)."
        )
    timestamp = None
    if k.initial_position == "AT_TIMESTAMP":
        if not k.initial_timestamp:
            raise ValueError(
                "--initial_position=AT_TIMESTAMP needs --initial_timestamp, e.g. "
                "--initial_timestamp=2026-11-27T08:00:00Z"
            )
        try:
            timestamp = parse_timestamp(k.initial_timestamp)
        except ValueError:
            raise ValueError(
                f"--initial_timestamp={k.initial_timestamp!r} is neither ISO-8601 "
                "(2026-11-27T08:00:00Z) nor epoch seconds."
            ) from None
    elif k.initial_timestamp:
        raise ValueError("--initial_timestamp is only used with --initial_position=AT_TIMESTAMP.")
    if not 1 <= k.kinesis_max_records <= 10000:
        raise ValueError("--kinesis_max_records must be between 1 and 10000 (the GetRecords limit).")
    if not 0 < k.kinesis_max_polls_per_second <= 5:
        raise ValueError(
            "--kinesis_max_polls_per_second must be above 0 and at most 5 (the per-shard GetRecords limit)."
        )
    if k.kinesis_idle_poll_seconds < 0.2:
        raise ValueError("--kinesis_idle_poll_seconds must be at least 0.2.")
    return KinesisReadConfig(
        stream=k.stream_name,
        aws=aws,
        initial_position=k.initial_position,
        initial_timestamp=timestamp,
        stop_at_latest=k.stop_at_latest,
        max_records=k.kinesis_max_records,
        max_polls_per_second=k.kinesis_max_polls_per_second,
        idle_poll_seconds=k.kinesis_idle_poll_seconds,
    )


def check_stream(config: KinesisReadConfig) -> str:
    """Fails at start, with the fix, when the stream cannot be read (name, region or credentials);
    returns the stream's key for the position store: `ARN@creation time`."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    where = f"in region {config.aws.region}" + (
        f" at {config.aws.endpoint_url}" if config.aws.endpoint_url else ""
    )
    try:
        client = config.aws.client("kinesis", retries={"mode": "standard", "total_max_attempts": 2})
        summary = client.describe_stream_summary(StreamName=config.stream)["StreamDescriptionSummary"]
    except NoCredentialsError:
        raise ValueError(
            "No AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, run on "
            "an instance or task with a role, or pass --aws_profile."
        ) from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise ValueError(
                f"--stream_name={config.stream}: no such Kinesis stream {where}; check the name and --region."
            ) from None
        raise ValueError(
            f"--stream_name={config.stream}: cannot describe the stream {where} ({code}); the reader needs "
            "kinesis:DescribeStreamSummary, ListShards, GetShardIterator and GetRecords."
        ) from None
    except BotoCoreError as error:
        raise ValueError(
            f"Cannot reach Kinesis {where}: {error}. Check --region and --aws_endpoint_url."
        ) from None
    if summary.get("StreamStatus") not in ("ACTIVE", "UPDATING"):
        _LOG.warning("Kinesis stream %s is %s", config.stream, summary.get("StreamStatus"))
    return f"{summary['StreamARN']}@{summary['StreamCreationTimestamp'].isoformat()}"


# --- restriction -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPosition:
    """Reading state of one shard: where to resume and when it may be polled again."""

    shard_id: str
    after_sequence: str | None = None  # last sequence number read; None = start at `start`
    start: str = "TRIM_HORIZON"  # iterator type until the first record is read
    start_timestamp: float | None = None
    next_poll_at: float = 0.0  # epoch seconds
    backoff_attempts: int = 0
    watermark: float = 0.0  # arrival time read up to (or "now" when caught up)
    # A merged child adopted while its other parent is still read in the same restriction waits for it.
    after_parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class KinesisRestriction:
    stream: str
    shards: tuple[ShardPosition, ...]
    done: bool = False

    def shard(self, shard_id: str) -> ShardPosition | None:
        for position in self.shards:
            if position.shard_id == shard_id:
                return position
        return None


# Claims: each describes one step of progress. The tracker applies it to the restriction.
@dataclass(frozen=True)
class Advance:
    """The shard's new position after a GetRecords call (records read, or none)."""

    position: ShardPosition


@dataclass(frozen=True)
class ShardEnded:
    """The shard is finished (closed and drained, or caught up in catch-up mode); children follow."""

    shard_id: str
    children: tuple[ShardPosition, ...] = ()
    closed: bool = False  # the shard itself ended (not only caught up in catch-up mode)


@dataclass(frozen=True)
class Finish:
    """Nothing more to read in this restriction (all shards done, or a stop was requested)."""


class KinesisShardsTracker(RestrictionTracker):
    """Tracks a `KinesisRestriction`; a checkpoint split hands everything not yet claimed on."""

    def __init__(self, restriction: KinesisRestriction):
        self._restriction = restriction

    def current_restriction(self) -> KinesisRestriction:
        return self._restriction

    def try_claim(self, position) -> bool:
        r = self._restriction
        if r.done:
            return False
        if isinstance(position, Finish):
            self._restriction = replace(r, done=True)
        elif isinstance(position, Advance):
            shard_id = position.position.shard_id
            self._restriction = replace(
                r,
                shards=tuple(position.position if s.shard_id == shard_id else s for s in r.shards),
            )
        elif isinstance(position, ShardEnded):
            kept = tuple(s for s in r.shards if s.shard_id != position.shard_id)
            known = {s.shard_id for s in kept}
            self._restriction = replace(
                r, shards=kept + tuple(c for c in position.children if c.shard_id not in known)
            )
        else:
            raise ValueError(f"unknown claim {position!r}")
        return True

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder != 0 or self._restriction.done:
            return None
        primary = replace(self._restriction, shards=(), done=True)
        residual = self._restriction
        self._restriction = primary
        return primary, residual

    def check_done(self):
        if not self._restriction.done:
            shards = ", ".join(s.shard_id for s in self._restriction.shards)
            raise ValueError(f"Kinesis restriction left unfinished with shards {shards}")

    def current_progress(self) -> RestrictionProgress:
        remaining = 0 if self._restriction.done else len(self._restriction.shards)
        return RestrictionProgress(completed=0, remaining=remaining)

    def is_bounded(self) -> bool:
        return False


# --- shard listing -------------------------------------------------------------------------------


def list_shards(client, stream: str) -> list[dict]:
    """Every shard of the stream, open and closed, following NextToken the way AWS wants it."""
    shards: list[dict] = []
    response = client.list_shards(StreamName=stream)
    while True:
        shards.extend(response.get("Shards", []))
        token = response.get("NextToken")
        if not token:
            return shards
        response = client.list_shards(NextToken=token)


def is_open(shard: dict) -> bool:
    return "EndingSequenceNumber" not in shard.get("SequenceNumberRange", {})


def is_position_past_retention(error: ClientError) -> bool:
    """How Kinesis refuses an AFTER_SEQUENCE_NUMBER iterator whose record has been trimmed: an
    InvalidArgumentException about the StartingSequenceNumber."""
    details = error.response.get("Error", {})
    message = details.get("Message", "").lower()
    return details.get("Code") == "InvalidArgumentException" and (
        "startingsequencenumber" in message or "starting sequence number" in message
    )


def starting_shards(shards: list[dict], initial_position: str) -> list[str]:
    """Shards to start reading: the open ones for LATEST, the lineage roots otherwise."""
    if initial_position == "LATEST":
        return [s["ShardId"] for s in shards if is_open(s)]
    known = {s["ShardId"] for s in shards}
    return [
        s["ShardId"]
        for s in shards
        if s.get("ParentShardId") not in known and s.get("AdjacentParentShardId") not in known
    ]


def adopted_children(shards: list[dict], parent_id: str, finished: frozenset[str] = frozenset()) -> list[str]:
    """Children that the reader of `parent_id` owns; a merged child belongs to its ParentShardId, unless
    that parent is gone or was finished before a restart (`finished`, from the position store)."""
    known = {s["ShardId"] for s in shards}
    children = []
    for s in shards:
        if s.get("ParentShardId") == parent_id:
            children.append(s["ShardId"])
        elif s.get("AdjacentParentShardId") == parent_id and (
            s.get("ParentShardId") not in known or s.get("ParentShardId") in finished
        ):
            children.append(s["ShardId"])
    return children


def resumed_shards(
    shards: list[dict], stored: dict[str, StoredShard], initial_position: str
) -> list[tuple[str, str | None, str]]:
    """(shard, sequence to resume after, start) for a restart with stored positions: a shard with a
    stored position resumes after it; one whose parents are finished (or were read, and have since
    aged out of the stream) starts at TRIM_HORIZON; a lineage root never read starts at
    `initial_position` (LATEST: only if open). Finished shards are done, and a shard with a listed,
    unfinished parent is left to that parent's reader, which adopts it."""
    listed = {s["ShardId"] for s in shards}
    finished = {shard for shard, state in stored.items() if state.finished}
    # Under LATEST a closed shard with nothing stored, whose parents are not read either, is never read:
    # its children must not wait for it.
    never_read: set[str] = set()
    if initial_position == "LATEST":
        for shard in sorted(shards, key=lambda s: s["ShardId"]):  # parents before children
            parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]
            if (
                shard["ShardId"] not in stored
                and not is_open(shard)
                and all(p in never_read or (p not in listed and p not in stored) for p in parents)
            ):
                never_read.add(shard["ShardId"])
    started = []
    for shard in shards:
        shard_id = shard["ShardId"]
        state = stored.get(shard_id)
        if shard_id in finished:
            continue
        if state is not None and state.sequence:
            started.append((shard_id, state.sequence, "TRIM_HORIZON"))
            continue
        parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]
        if any(p in listed and p not in finished and p not in never_read for p in parents):
            continue
        if any((p in listed and p not in never_read) or p in stored for p in parents):
            started.append((shard_id, None, "TRIM_HORIZON"))
        elif initial_position != "LATEST" or is_open(shard):
            started.append((shard_id, None, initial_position))
    return started


class KinesisRestrictionProvider(RestrictionProvider):
    def __init__(self, config: KinesisReadConfig):
        self._config = config

    def initial_restriction(self, element: str) -> KinesisRestriction:
        config = self._config
        client = config.aws.client("kinesis")
        shards = list_shards(client, element)
        if config.initial_position == "LATEST":
            # "Records arriving from now on", pinned to a time so that a resumed or expired
            # iterator cannot skip what arrived before the first read.
            start, timestamp = "AT_TIMESTAMP", time.time()
        elif config.initial_position == "AT_TIMESTAMP":
            start, timestamp = "AT_TIMESTAMP", config.initial_timestamp
        else:
            start, timestamp = "TRIM_HORIZON", None
        stored = self._stored_positions()
        if stored:
            resumed = resumed_shards(shards, stored, config.initial_position)
            positions = tuple(
                ShardPosition(
                    shard_id,
                    after_sequence=after,
                    start=start if start != "LATEST" else "AT_TIMESTAMP",
                    start_timestamp=timestamp if start in ("LATEST", "AT_TIMESTAMP") else None,
                )
                for shard_id, after, start in resumed
            )
            _LOG.info(
                "Kinesis stream %s: %d shards; resuming %d from the positions in %s (%d finished)",
                element,
                len(shards),
                len(positions),
                config.positions.where,
                sum(s.finished for s in stored.values()),
            )
            return KinesisRestriction(stream=element, shards=positions)
        positions = tuple(
            ShardPosition(shard_id, start=start, start_timestamp=timestamp)
            for shard_id in starting_shards(shards, config.initial_position)
        )
        _LOG.info(
            "Kinesis stream %s: %d shards, starting %d at %s",
            element,
            len(shards),
            len(positions),
            config.initial_position,
        )
        return KinesisRestriction(stream=element, shards=positions)

    def _stored_positions(self) -> dict[str, StoredShard]:
        if self._config.positions is None:
            return {}
        store = self._config.positions.open()
        try:
            return store.load(self._config.stream_key)
        finally:
            store.close()

    def split(self, element, restriction: KinesisRestriction) -> Iterable[KinesisRestriction]:
        """One restriction per shard lineage, so a runner can spread shards over workers."""
        if len(restriction.shards) <= 1 or not self._config.split_shards:
            yield restriction
            return
        for position in restriction.shards:
            yield replace(restriction, shards=(position,))

    def create_tracker(self, restriction: KinesisRestriction) -> KinesisShardsTracker:
        return KinesisShardsTracker(restriction)

    def restriction_size(self, element, restriction: KinesisRestriction) -> float:
        return 0 if restriction.done else float(len(restriction.shards))

    def truncate(self, element, restriction):
        return None


# --- reading --------------------------------------------------------------------------------------


def backoff_seconds(attempt: int, rng: random.Random) -> float:
    """Exponential back-off with full jitter, capped."""
    return rng.uniform(0.5, 1.0) * min(MAX_BACKOFF_SECONDS, 0.5 * 2**attempt)


class _ReadShardsFn(beam.DoFn, KinesisRestrictionProvider):
    """Polls the shards of its restriction; is its own restriction provider (needs the config)."""

    def __init__(self, config: KinesisReadConfig):
        KinesisRestrictionProvider.__init__(self, config)
        self._records = metrics.counter("kinesis", "records")
        self._bytes = metrics.counter("kinesis", "bytes")
        self._calls = metrics.counter("kinesis", "get_records_calls")
        self._throttles = metrics.counter("kinesis", "throttles")
        self._renewals = metrics.counter("kinesis", "iterator_renewals")
        self._shards_finished = metrics.counter("kinesis", "shards_finished")
        self._positions_saved = metrics.counter("kinesis", "positions_saved")
        self._positions_expired = metrics.counter("kinesis", "positions_expired")

    def setup(self):
        # Throttling is handled here, per shard, with back-off; botocore must not retry it blindly.
        self._client = self._config.aws.client(
            "kinesis", retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=30
        )
        self._iterators: dict[str, tuple[str | None, str]] = {}
        self._rng = random.Random()
        self._per_shard: dict[str, metrics.Counter] = {}
        self._lag: dict[str, metrics.Gauge] = {}
        self._store = self._config.positions.open() if self._config.positions else None
        self._stored_finished: frozenset[str] = frozenset()
        if self._store is not None:
            stored = self._store.load(self._config.stream_key)
            self._stored_finished = frozenset(s for s, state in stored.items() if state.finished)

    def teardown(self):
        if getattr(self, "_store", None) is not None:
            self._store.close()

    def _shard_records(self, shard_id: str) -> metrics.Counter:
        """Records read per shard: live only, Beam keeps the total."""
        if shard_id not in self._per_shard:
            counter = metrics.counter("kinesis", "shard_records", beam=False, shard=shard_id)
            self._per_shard[shard_id] = counter
        return self._per_shard[shard_id]

    def _shard_lag(self, shard_id: str) -> metrics.Gauge:
        if shard_id not in self._lag:
            self._lag[shard_id] = metrics.gauge("kinesis", "millis_behind_latest", shard=shard_id)
        return self._lag[shard_id]

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: str,
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(),
        watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        delivered: dict[str, str] = {}
        finished: list[str] = []
        yield from self._read(tracker, watermark, delivered, finished)
        if self._store is not None and (delivered or finished):
            # Runs once the bundle, with the GELF sink fused after this reader, has completed: what
            # these positions cover has been delivered.
            finalizer.register(lambda: self._save(delivered, finished))

    def _save(self, delivered: dict[str, str], finished: list[str]) -> None:
        self._store.save(self._config.stream_key, delivered, finished)
        self._positions_saved.inc()

    def _read(self, tracker, watermark, delivered: dict[str, str], finished: list[str]):
        """Reads due shards until data was emitted, all is done, or the time slice is used up; notes in
        `delivered` and `finished` the positions its records and claims reach."""
        config = self._config
        deadline = time.monotonic() + config.max_process_seconds
        while True:
            restriction: KinesisRestriction = tracker.current_restriction()
            if stop_requested() or not restriction.shards:
                tracker.try_claim(Finish())
                return
            now = time.time()
            reading = {s.shard_id for s in restriction.shards}
            ready = [s for s in restriction.shards if not reading.intersection(s.after_parents)]
            due = [s for s in ready if s.next_poll_at <= now]
            if not due:
                wait = min(s.next_poll_at for s in ready) - now
                if time.monotonic() + wait > deadline:
                    # Sleep a little anyway: the FnApiRunner resumes deferred work at once.
                    time.sleep(max(0.0, min(wait, deadline - time.monotonic(), 0.5)))
                    self._advance_watermark(watermark, tracker.current_restriction())
                    tracker.defer_remainder(Duration.of(max(0.0, wait)))
                    return
                time.sleep(max(0.0, wait))
                continue
            emitted = False
            for position in due:
                claim, records = self._poll(restriction.stream, position)
                if not tracker.try_claim(claim):
                    # Checkpointed by the runner: the residual re-reads from the last claim.
                    return
                for record in records:
                    yield TimestampedValue(record, Timestamp.of(record.arrival_time))
                if records:
                    delivered[position.shard_id] = records[-1].sequence_number
                if isinstance(claim, ShardEnded) and claim.closed:
                    finished.append(claim.shard_id)
                emitted = emitted or bool(records)
            if emitted:
                # Let the fused downstream finish this bundle (and deliver) before reading more.
                self._advance_watermark(watermark, tracker.current_restriction())
                tracker.defer_remainder()
                return

    def _advance_watermark(self, estimator, restriction: KinesisRestriction):
        if not restriction.shards:
            return
        low = min(s.watermark for s in restriction.shards)
        current = estimator.current_watermark()
        if low > 0 and (current is None or Timestamp.of(low) > current):
            estimator.set_watermark(Timestamp.of(low))

    def _poll(self, stream: str, position: ShardPosition) -> tuple[object, list[KinesisRecord]]:
        """One GetRecords call for a shard: the claim describing the new state, and its records."""
        config = self._config
        now = time.time()
        min_interval = 1.0 / config.max_polls_per_second
        try:
            iterator, position = self._iterator(stream, position)
            response = self._client.get_records(ShardIterator=iterator, Limit=config.max_records)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ExpiredIteratorException":
                self._renewals.inc()
                self._iterators.pop(position.shard_id, None)
                _LOG.info("Kinesis %s %s: iterator expired, renewing", stream, position.shard_id)
                return Advance(replace(position, next_poll_at=now)), []
            if code in THROTTLING_ERRORS:
                metrics.HEALTH.failed("AWS Kinesis", f"{code} on {position.shard_id}")
                return self._backoff(stream, position, code), []
            raise
        except (ConnectionError, HTTPClientError) as error:
            metrics.HEALTH.failed("AWS Kinesis", repr(error))
            return self._backoff(stream, position, type(error).__name__), []
        self._calls.inc()
        metrics.HEALTH.succeeded("AWS Kinesis")
        metrics.HEALTH.heartbeat()
        now = time.time()  # the next poll is spaced from the end of this one: never more than the limit
        behind = response.get("MillisBehindLatest")
        if behind is not None:
            self._shard_lag(position.shard_id).set(int(behind))
        records = self._records_of(stream, position, response.get("Records", []))
        next_iterator = response.get("NextShardIterator")
        last = records[-1].sequence_number if records else position.after_sequence
        if next_iterator is None:
            self._iterators.pop(position.shard_id, None)
            return self._ended(stream, position, response, closed=True), records
        self._iterators[position.shard_id] = (last, next_iterator)
        caught_up = not records and behind == 0
        if caught_up and config.stop_at_latest:
            if not self._closed(stream, position.shard_id):
                self._iterators.pop(position.shard_id, None)
                return self._ended(stream, position, response, closed=False), records
            # A closed shard ends where GetRecords gives no NextShardIterator, not at an empty answer: its
            # children hold what came after it, and are adopted only at that end.
            caught_up = False
        watermark = position.watermark
        if records:
            watermark = max(watermark, max(r.arrival_time for r in records))
        elif caught_up:
            watermark = max(watermark, now)
        interval = config.idle_poll_seconds if caught_up else min_interval
        return (
            Advance(
                replace(
                    position,
                    after_sequence=last,
                    next_poll_at=now + interval,
                    backoff_attempts=0,
                    watermark=watermark,
                )
            ),
            records,
        )

    def _closed(self, stream: str, shard_id: str) -> bool:
        return any(s["ShardId"] == shard_id and not is_open(s) for s in list_shards(self._client, stream))

    def _records_of(self, stream: str, position: ShardPosition, raw: list[dict]) -> list[KinesisRecord]:
        after = int(position.after_sequence) if position.after_sequence else -1
        records = []
        total_bytes = 0
        for r in raw:
            sequence = r["SequenceNumber"]
            if int(sequence) <= after:
                continue  # never emit a record twice, whatever the service returns
            data = r["Data"]
            total_bytes += len(data)
            records.append(
                KinesisRecord(
                    stream=stream,
                    shard_id=position.shard_id,
                    sequence_number=sequence,
                    partition_key=r.get("PartitionKey", ""),
                    arrival_time=r["ApproximateArrivalTimestamp"].timestamp(),
                    data=data,
                )
            )
        self._records.inc(len(records))
        self._shard_records(position.shard_id).inc(len(records))
        self._bytes.inc(total_bytes)
        return records

    def _iterator(self, stream: str, position: ShardPosition) -> tuple[str, ShardPosition]:
        """An iterator for the position, and the position it reads from: TRIM_HORIZON instead of a stored
        position that the stream no longer holds."""
        cached = self._iterators.get(position.shard_id)
        if cached and cached[0] == position.after_sequence:
            return cached[1], position
        kwargs = {"StreamName": stream, "ShardId": position.shard_id}
        if position.after_sequence:
            kwargs.update(
                ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=position.after_sequence
            )
        elif position.start == "AT_TIMESTAMP":
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=position.start_timestamp)
        else:
            kwargs.update(ShardIteratorType=position.start)
        try:
            iterator = self._client.get_shard_iterator(**kwargs)["ShardIterator"]
        except ClientError as error:
            if not (position.after_sequence and is_position_past_retention(error)):
                raise
            self._positions_expired.inc()
            _LOG.warning(
                "Kinesis %s %s: the position %s is no longer in the stream (%s); reading from TRIM_HORIZON. "
                "Records trimmed while the pipeline was down are lost: run it longer than the stream's "
                "retention apart, or raise the retention.",
                stream,
                position.shard_id,
                position.after_sequence,
                error.response.get("Error", {}).get("Message", ""),
            )
            position = replace(position, after_sequence=None, start="TRIM_HORIZON", start_timestamp=None)
            iterator = self._client.get_shard_iterator(
                StreamName=stream, ShardId=position.shard_id, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        self._iterators[position.shard_id] = (position.after_sequence, iterator)
        return iterator, position

    def _backoff(self, stream: str, position: ShardPosition, reason: str) -> Advance:
        self._throttles.inc()
        delay = backoff_seconds(position.backoff_attempts, self._rng)
        _LOG.warning("Kinesis %s %s: %s, backing off %.2fs", stream, position.shard_id, reason, delay)
        return Advance(
            replace(
                position,
                next_poll_at=time.time() + delay,
                backoff_attempts=position.backoff_attempts + 1,
            )
        )

    def _ended(self, stream: str, position: ShardPosition, response: dict, closed: bool) -> ShardEnded:
        self._shards_finished.inc()
        if not closed:
            _LOG.info("Kinesis %s %s: caught up, finished (--stop_at_latest)", stream, position.shard_id)
            return ShardEnded(position.shard_id)
        shards = list_shards(self._client, stream)
        children = adopted_children(shards, position.shard_id, self._stored_finished)
        _LOG.info(
            "Kinesis %s %s: closed and read to its end; continuing with %s",
            stream,
            position.shard_id,
            ", ".join(children) or "no children",
        )
        parents = {s["ShardId"]: (s.get("ParentShardId"), s.get("AdjacentParentShardId")) for s in shards}
        return ShardEnded(
            position.shard_id,
            tuple(
                ShardPosition(
                    child,
                    start="TRIM_HORIZON",
                    watermark=position.watermark,
                    after_parents=tuple(p for p in parents[child] if p and p != position.shard_id),
                )
                for child in children
            ),
            closed=True,
        )


class ReadFromKinesis(beam.PTransform):
    """Reads every shard of one stream; emits `KinesisRecord`s timestamped with their arrival time."""

    def __init__(self, config: KinesisReadConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        return (
            pbegin
            | "Stream" >> beam.Create([self._config.stream])
            | "ReadShards" >> beam.ParDo(_ReadShardsFn(self._config)).with_output_types(KinesisRecord)
        )
