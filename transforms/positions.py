"""Where a local run keeps how far each Kinesis shard was delivered, so a restart resumes there.

Flink keeps the reader's positions in its checkpoints; a DirectRunner run keeps them here: in a SQLite file
under `--state_dir` (standard library, nothing to install), or in a DynamoDB table for runs without a
persistent disk (transforms/positions_dynamodb.py). Per pipeline, stream ARN and shard: the last
sequence number delivered (written from a bundle finalizer, so only once the GELF sink fused after the
reader has flushed that bundle) and whether the shard was finished (closed and read to its end), so a
restart reads children only after their parents. A lease (owner, expiry) lets one process read a stream
with a given store at a time.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apache_beam.options.pipeline_options import PipelineOptions
from botocore.exceptions import BotoCoreError, ClientError

from transforms.aws import AwsConfig

if TYPE_CHECKING:
    from transforms.positions_dynamodb import DynamoPositionStore

_LOG = logging.getLogger(__name__)

POSITION_STORES = ("file", "dynamodb", "none")
DEFAULT_POSITION_TABLE = "aws-gelf-pipelines-positions"
DEFAULT_LEASE_SECONDS = 30.0


class PositionOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group(
            "Reading positions (local runs of a Kinesis stream or an S3 backfill; Flink keeps its own)"
        )
        group.add_argument(
            "--position_store",
            default="file",
            choices=POSITION_STORES,
            help="Where a DirectRunner run keeps the last delivered sequence number of each shard: file "
            "(SQLite under --state_dir), dynamodb (the table --position_table, for hosts without a "
            "persistent disk) or none (every start begins at --initial_position).",
        )
        group.add_argument(
            "--position_table",
            default=DEFAULT_POSITION_TABLE,
            help="The DynamoDB table of --position_store=dynamodb (partition key pk, sort key sk, strings); "
            "created on first use unless --no_create_position_table.",
        )
        group.add_argument(
            "--no_create_position_table",
            dest="create_position_table",
            default=True,
            action="store_false",
            help="Do not create --position_table when it is missing (fail at start instead); the pipeline "
            "then needs no dynamodb:CreateTable permission.",
        )
        group.add_argument(
            "--state_dir",
            default="state",
            help="Directory of the position file (positions.sqlite); keep it on a persistent disk.",
        )
        group.add_argument(
            "--reset_positions",
            default=False,
            action="store_true",
            help="Forget the stored positions of this pipeline and stream (or backfill) and start again: "
            "at --initial_position, or at the start of the backfill's range.",
        )
        group.add_argument(
            "--lease_seconds",
            type=float,
            default=DEFAULT_LEASE_SECONDS,
            help="How long a reader's claim on the stream lasts without renewal; a second process is "
            "refused while it holds, and takes over once a dead holder's claim has expired.",
        )


@dataclass(frozen=True)
class StoredShard:
    sequence: str | None  # last sequence number delivered
    finished: bool  # closed and read to its end


@dataclass(frozen=True)
class PositionStoreConfig:
    """Picklable: each worker opens the store itself. A file path, or a DynamoDB table and the AWS
    identity that reaches it."""

    path: str | None
    pipeline: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    table: str | None = None
    aws: AwsConfig | None = None

    def open(self) -> FilePositionStore | DynamoPositionStore:
        if self.table is not None:
            from transforms.positions_dynamodb import DynamoPositionStore

            return DynamoPositionStore(self.aws, self.table, self.pipeline)
        return FilePositionStore(self.path, self.pipeline)

    @property
    def where(self) -> str:
        return f"the DynamoDB table {self.table}" if self.table is not None else str(self.path)


class LeaseHeld(ValueError):
    """Another live reader holds the stream in this store."""


_OWNERS_HERE: set[str] = set()  # the owners made by this process (a lease check's hint, nothing more)


def new_owner() -> str:
    """Who this process is, for a lease: host, pid and a random part (a pid can be reused)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _OWNERS_HERE.add(owner)
    return owner


def holder_is_dead(owner: str) -> bool:
    """True when `owner` was a process of this host that no longer runs (killed, crashed): its lease need
    not be waited out. A holder on another host is only known dead once its lease expires."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _OWNERS_HERE  # an earlier process with our pid (a restarted container's pid 1)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def later_sequence(a: str | None, b: str | None) -> str | None:
    """The later of two Kinesis sequence numbers (decimal strings of up to 128 bits)."""
    if a is None or b is None:
        return a if b is None else b
    return a if int(a) >= int(b) else b


class FilePositionStore:
    """Positions and leases in one SQLite file; each write is a transaction, safe against a kill.
    The interface every store has: load, save, reset, acquire, renew, release, close."""

    def __init__(self, path: str | os.PathLike[str], pipeline: str):
        self.path = Path(path)
        self.pipeline = pipeline
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS positions (pipeline TEXT, stream TEXT, shard TEXT, sequence TEXT, "
            "finished INTEGER NOT NULL DEFAULT 0, updated_at REAL, PRIMARY KEY (pipeline, stream, shard))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS leases (pipeline TEXT, stream TEXT, owner TEXT, expires_at REAL, "
            "PRIMARY KEY (pipeline, stream))"
        )

    def close(self) -> None:
        self._db.close()

    def load(self, stream: str) -> dict[str, StoredShard]:
        rows = self._db.execute(
            "SELECT shard, sequence, finished FROM positions WHERE pipeline = ? AND stream = ?",
            (self.pipeline, stream),
        )
        return {shard: StoredShard(sequence, bool(finished)) for shard, sequence, finished in rows}

    def save(self, stream: str, sequences: Mapping[str, str], finished: Iterable[str] = ()) -> None:
        """Records delivered positions; a position never moves back, a finished shard stays finished."""
        finished = set(finished)
        now = time.time()
        with _transaction(self._db):
            for shard in set(sequences) | finished:
                row = self._db.execute(
                    "SELECT sequence, finished FROM positions "
                    "WHERE pipeline = ? AND stream = ? AND shard = ?",
                    (self.pipeline, stream, shard),
                ).fetchone()
                before = StoredShard(row[0], bool(row[1])) if row else StoredShard(None, False)
                sequence = later_sequence(before.sequence, sequences.get(shard))
                self._db.execute(
                    "INSERT INTO positions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline, stream, shard) "
                    "DO UPDATE SET sequence = excluded.sequence, finished = excluded.finished, "
                    "updated_at = excluded.updated_at",
                    (self.pipeline, stream, shard, sequence, int(before.finished or shard in finished), now),
                )

    def reset(self, stream: str) -> int:
        """Forgets this pipeline's positions on the stream; returns how many shards were forgotten."""
        cursor = self._db.execute(
            "DELETE FROM positions WHERE pipeline = ? AND stream = ?", (self.pipeline, stream)
        )
        return cursor.rowcount

    def acquire(self, stream: str, owner: str, seconds: float) -> None:
        """Takes the lease on the stream, or raises LeaseHeld naming the live holder."""
        now = time.time()
        with _transaction(self._db):
            row = self._db.execute(
                "SELECT owner, expires_at FROM leases WHERE pipeline = ? AND stream = ?",
                (self.pipeline, stream),
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now and not holder_is_dead(row[0]):
                raise LeaseHeld(
                    f"{self.pipeline} on {stream} is being read by {row[0]} (its lease in {self.path} "
                    f"expires in {row[1] - now:.0f} s unless renewed). Stop that process, or wait for its "
                    "lease to expire if it died."
                )
            self._db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                (self.pipeline, stream, owner, now + seconds),
            )

    def renew(self, stream: str, owner: str, seconds: float) -> bool:
        """Extends our lease; False if another process has taken it (ours had expired)."""
        cursor = self._db.execute(
            "UPDATE leases SET expires_at = ? WHERE pipeline = ? AND stream = ? AND owner = ?",
            (time.time() + seconds, self.pipeline, stream, owner),
        )
        return cursor.rowcount == 1

    def release(self, stream: str, owner: str) -> None:
        self._db.execute(
            "DELETE FROM leases WHERE pipeline = ? AND stream = ? AND owner = ?",
            (self.pipeline, stream, owner),
        )


class _transaction:
    """BEGIN IMMEDIATE … COMMIT: a read-modify-write no other process interleaves with."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback):
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def position_store_from_options(
    options: PipelineOptions, pipeline: str, local: bool, aws: AwsConfig | None = None
) -> PositionStoreConfig | None:
    """The store of a local run (None on Flink, or with --position_store=none); a DynamoDB table is
    checked, or created, here."""
    o = options.view_as(PositionOptions)
    if not local or o.position_store == "none":
        return None
    if o.lease_seconds < 5:
        raise ValueError(f"--lease_seconds={o.lease_seconds} is too short: use at least 5 (default 30).")
    if o.position_store == "dynamodb":
        from transforms.positions_dynamodb import ensure_table

        table = (o.position_table or "").strip()
        if not table:
            raise ValueError(f"--position_table must name a table (default {DEFAULT_POSITION_TABLE}).")
        if aws is None:
            raise ValueError("--position_store=dynamodb needs the AWS options of the pipeline.")
        ensure_table(aws, table, o.create_position_table)
        return PositionStoreConfig(None, pipeline, o.lease_seconds, table=table, aws=aws)
    state_dir = Path(o.state_dir or "").expanduser()
    if not str(o.state_dir or "").strip():
        raise ValueError("--state_dir must not be empty: name a directory on a persistent disk.")
    state_dir = Path(os.path.abspath(state_dir))
    existing = state_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"--state_dir={o.state_dir}: {existing} is not a writable directory; name one the pipeline may "
            "write, or pass --position_store=none to start at --initial_position every time."
        )
    return PositionStoreConfig(str(state_dir / "positions.sqlite"), pipeline, o.lease_seconds)


def reset_positions(config: PositionStoreConfig, stream: str, owner: str) -> None:
    """--reset_positions: forgets the stream's positions, refused (LeaseHeld) while another reader runs."""
    store = config.open()
    try:
        store.acquire(stream, owner, config.lease_seconds)
        forgotten = store.reset(stream)
        store.release(stream, owner)
    finally:
        store.close()
    _LOG.warning("--reset_positions: forgot the positions of %d shards of %s", forgotten, stream)


class StreamLease:
    """The run's claim on a stream in its store: taken at start (or refused, naming the holder), renewed
    in the background every third of its length, given back when the run ends. A run that finds its lease
    taken over (it stalled past the expiry) stops its sources rather than read beside the new holder."""

    def __init__(self, config: PositionStoreConfig, stream: str, on_lost: Callable[[], None]):
        self._config = config
        self._stream = stream
        self._on_lost = on_lost
        self.owner = new_owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StreamLease:
        store = self._config.open()
        try:
            store.acquire(self._stream, self.owner, self._config.lease_seconds)
        finally:
            store.close()
        self._thread = threading.Thread(target=self._renew, name="position-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        store = self._config.open()
        try:
            while not self._stop.wait(self._config.lease_seconds / 3):
                try:
                    if not store.renew(self._stream, self.owner, self._config.lease_seconds):
                        _LOG.error(
                            "The lease on %s was taken over by another reader: stopping.", self._stream
                        )
                        self._on_lost()
                        return
                except (sqlite3.Error, BotoCoreError, ClientError) as error:
                    _LOG.warning("Could not renew the lease on %s: %s", self._stream, error)
        finally:
            store.close()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        store = self._config.open()
        try:
            store.release(self._stream, self.owner)
        finally:
            store.close()
