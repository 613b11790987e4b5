"""A local S3 backfill that survives a restart: one object per bundle, each recorded once delivered.

Beam's local runner processes all the input of a step as one bundle, and a bundle finalizer runs only
once its bundle has completed, so a plain listing followed by the reads would record nothing until the
whole backfill was sent. Here the listing is a splittable DoFn that hands one object on, then defers the
rest of its listing: every object is a bundle of its own, read, sent and flushed by the steps fused
after this one (`ReadS3Objects`, `WriteToGelf`: no Reshuffle or GroupByKey in between), and its
finalizer then records the object as finished in the position store. A restart with the same options
loads the finished objects and skips them; a crash costs at most the object in flight.

In the store the "stream" is the backfill (bucket, prefix, resolved time range, key filter; see
`backfill_key`) and each finished object is one row, named by its key. Objects are listed in key order,
so the restriction is only "the keys after K": a deferred remainder costs nothing to encode, whatever the
size of the backfill.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from transforms import metrics
from transforms.aws import AwsConfig
from transforms.positions import PositionStoreConfig
from transforms.s3_listing import MAX_PAGE_SIZE, NAMESPACE, BackfillRange, list_objects
from transforms.s3_notifications import KeyFilter, S3Object
from transforms.stopping import stop_requested

_LOG = logging.getLogger(__name__)

#: Longest object key stored as it is; a longer one is stored as its hash (a DynamoDB sort key holds
#: 1,024 bytes, an S3 key up to 1,024 bytes of UTF-8).
MAX_STORED_KEY_BYTES = 900


def backfill_key(backfill: BackfillRange, key_filter: KeyFilter) -> str:
    """The backfill's name in the position store: everything that selects its objects. Another range or
    filter is another backfill, with positions and a lease of its own."""

    def moment(seconds: float | None, unbounded: str) -> str:
        if seconds is None:
            return unbounded
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def pattern(compiled) -> str:
        return "-" if compiled is None else repr(compiled.pattern)

    return (
        f"{backfill.uri} [{moment(backfill.start, 'any')}, {moment(backfill.end, 'open')}) "
        f"include={pattern(key_filter.include)} exclude={pattern(key_filter.exclude)}"
    )


def object_shard(key: str) -> str:
    """How a finished object is named in the store: its key, or a hash of a key too long to store."""
    if len(key.encode("utf-8")) <= MAX_STORED_KEY_BYTES:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- restriction ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillCursor:
    """What is left of a backfill's listing: the keys after `after` (all when None), unless `done`."""

    after: str | None = None
    done: bool = False


class BackfillCursorTracker(RestrictionTracker):
    """Claims are object keys in increasing order, or None for "nothing more" (listing exhausted or a stop
    requested). A checkpoint split hands on every key after the last one claimed."""

    def __init__(self, cursor: BackfillCursor):
        self._cursor = cursor

    def current_restriction(self) -> BackfillCursor:
        return self._cursor

    def try_claim(self, key: str | None) -> bool:
        cursor = self._cursor
        if cursor.done:
            return False
        if key is None:
            self._cursor = replace(cursor, done=True)
            return True
        if cursor.after is not None and key <= cursor.after:
            raise ValueError(f"claimed {key!r}, not after {cursor.after!r}: the listing went backwards")
        self._cursor = replace(cursor, after=key)
        return True

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder != 0 or self._cursor.done:
            return None
        primary = replace(self._cursor, done=True)
        residual = self._cursor
        self._cursor = primary
        return primary, residual

    def check_done(self) -> None:
        if not self._cursor.done:
            raise ValueError(f"backfill listing left unfinished after {self._cursor.after!r}")

    def current_progress(self) -> RestrictionProgress:
        return RestrictionProgress(completed=0, remaining=0 if self._cursor.done else 1)

    def is_bounded(self) -> bool:
        return True


class _CursorProvider(RestrictionProvider):
    def initial_restriction(self, element: BackfillRange) -> BackfillCursor:
        return BackfillCursor()

    def create_tracker(self, restriction: BackfillCursor) -> BackfillCursorTracker:
        return BackfillCursorTracker(restriction)

    def restriction_size(self, element, restriction: BackfillCursor) -> float:
        return 0 if restriction.done else 1

    def truncate(self, element, restriction):
        return None


# --- Beam -----------------------------------------------------------------------------------------


class _ListObjectsInTurnFn(beam.DoFn):
    """BackfillRange -> one S3Object per bundle, skipping those the store says were delivered."""

    def __init__(
        self,
        aws: AwsConfig,
        key_filter: KeyFilter,
        positions: PositionStoreConfig | None,
        stream: str,
        page_size: int = MAX_PAGE_SIZE,
    ):
        self._aws = aws
        self._key_filter = key_filter
        self._positions = positions
        self._stream = stream
        self._page_size = page_size
        self._listed = metrics.counter(NAMESPACE, "objects_listed")
        self._filtered = metrics.counter(NAMESPACE, "objects_filtered")
        self._skipped = metrics.counter(NAMESPACE, "objects_already_delivered")

    def setup(self) -> None:
        self._client = self._aws.client("s3", retries={"mode": "standard", "total_max_attempts": 5})
        self._listing: Iterator[S3Object] | None = None
        self._listing_after: str | None = None  # the last key the open listing handed out
        self._store = self._positions.open() if self._positions is not None else None
        self._delivered: frozenset[str] = frozenset()
        if self._store is not None:
            stored = self._store.load(self._stream)
            self._delivered = frozenset(shard for shard, state in stored.items() if state.finished)
            if self._delivered:
                _LOG.info(
                    "Backfill %s: %d objects delivered by earlier runs (positions in %s), skipped",
                    self._stream,
                    len(self._delivered),
                    self._positions.where,
                )

    def teardown(self) -> None:
        if getattr(self, "_store", None) is not None:
            self._store.close()
            self._store = None

    def process(
        self,
        backfill: BackfillRange,
        # The finalizer parameter must come before the restriction's (Beam 2.62 binds them so).
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(_CursorProvider()),
    ) -> Iterator[S3Object]:
        after = tracker.current_restriction().after
        if stop_requested():
            _LOG.warning(
                "Backfill %s: stopping after %s; a restart goes on from there",
                backfill.uri,
                after or "no file",
            )
            tracker.try_claim(None)
            return
        obj = self._next_object(backfill, after)
        if obj is None:
            tracker.try_claim(None)
            return
        if not tracker.try_claim(obj.key):
            return
        yield obj
        if self._store is not None:
            # Runs once this bundle, with the reader and the GELF sink fused after this step, has
            # completed: every record of the object was delivered (or dead-lettered).
            finalizer.register(lambda: self._store.save(self._stream, {}, finished=[object_shard(obj.key)]))
        tracker.defer_remainder()  # the next object in a bundle of its own

    def _next_object(self, backfill: BackfillRange, after: str | None) -> S3Object | None:
        """The first object after `after` not yet delivered, from the listing kept open between
        bundles (listed again, from `after`, when this instance did not hand out `after`)."""
        if self._listing is None or self._listing_after != after:
            self._listing = list_objects(
                self._client,
                backfill,
                self._key_filter,
                page_size=self._page_size,
                skipped=lambda key, reason: self._filtered.inc(),
                start_after=after,
            )
        for obj in self._listing:
            self._listed.inc()
            if object_shard(obj.key) in self._delivered:
                self._skipped.inc()
                continue
            self._listing_after = obj.key
            return obj
        self._listing = None
        return None


class ListS3ObjectsInTurn(beam.PTransform):
    """The `S3Object`s of one backfill, one per bundle, in key order, for a local run: with `positions`,
    each is recorded under `stream` once its bundle completed, and those recorded before are skipped.
    Keep the reader and the GELF sink fused after it (no Reshuffle or GroupByKey)."""

    def __init__(
        self,
        backfill: BackfillRange,
        aws: AwsConfig,
        key_filter: KeyFilter,
        positions: PositionStoreConfig | None,
        stream: str,
        page_size: int = MAX_PAGE_SIZE,
    ):
        super().__init__()
        self._backfill = backfill
        self._fn = _ListObjectsInTurnFn(aws, key_filter, positions, stream, page_size)

    def expand(self, pbegin):
        return (
            pbegin
            | "Range" >> beam.Create([self._backfill])
            | "ListInTurn" >> beam.ParDo(self._fn).with_output_types(S3Object)
        )
