"""The S3 objects an S3 backfill reads: CloudTrail files already in a bucket, found by listing it.

`--s3_prefix s3://bucket/AWSLogs/...` with optional `--s3_start_time` / `--s3_end_time` reads existing
files without SQS, and the pipeline ends once they are read. A trail's bucket holds years of files, so
a backfill of one day must not list all of them: when the prefix reaches a CloudTrail region folder
(`.../CloudTrail/<region>/`) and the time range is bounded, only the day folders (`YYYY/MM/DD/`) of the
range are listed.

The range selects files by their *delivery* time, the `YYYYMMDDTHHMMZ` in a CloudTrail file name (to
the minute), not by the time of the events inside: a file holds the events of the minutes before its
delivery. Keys without such a time (anything that is not a CloudTrail log file) are selected by their
LastModified instead, but only when a time bound is given: without one, every key under the prefix
that the key filter accepts is read. The range is [start, end): a date alone as the end means up to
that day's midnight, that day excluded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock

import apache_beam as beam
from botocore.exceptions import ClientError

from transforms import metrics
from transforms.aws import AwsConfig
from transforms.s3_notifications import KeyFilter, S3Object

_LOG = logging.getLogger(__name__)

NAMESPACE = "s3"
#: ListObjectsV2 returns at most 1000 keys per call.
MAX_PAGE_SIZE = 1000
#: Most folders listed for one range: day folders while the range spans at most this many days, else
#: month folders while it spans at most this many months, else the prefix itself.
MAX_LISTING_PREFIXES = 400
#: With no end time, folders are listed up to this long after now (files keep arriving meanwhile, and
#: clocks differ); there are none later.
OPEN_END_MARGIN_SECONDS = 24 * 60 * 60

S3_PREFIX_FORM = (
    "s3://<bucket>/<prefix>, e.g. s3://my-trail-bucket/AWSLogs/123456789012/CloudTrail/eu-west-1/"
)
TIME_FORMS = (
    "an ISO-8601 date or time (2026-11-27, 2026-11-27T10:00, 2026-11-27T10:00:00Z, 2026-11-27T10:00+01:00;"
    " UTC without an offset) or an age before now (90m, 24h, 7d, 2w; s, m, h, d, w)"
)

_S3_URI = re.compile(r"^s3://(?P<bucket>[^/]*)(?:/(?P<prefix>.*))?$", re.DOTALL)
# Lenient on purpose: buckets made before 2018 in us-east-1 may hold capitals and underscores.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,254}$")
_AGE = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 60 * 60, "d": 24 * 60 * 60, "w": 7 * 24 * 60 * 60}
#: `<account>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<unique>.json.gz` (also CloudTrail-Insight); digest
#: files (`..._CloudTrail-Digest_<region>_<trail>_<region>_<YYYYMMDDTHHMMSSZ>.json.gz`) do not match.
_CLOUDTRAIL_FILE = re.compile(
    r"(?:^|/)\d{12}_CloudTrail(?:-Insight)?_[a-z0-9-]+_(?P<time>\d{8}T\d{4}Z)_[A-Za-z0-9]+\.json(?:\.gz)?$"
)
#: A prefix that reaches a region folder: `[...]/CloudTrail/<region>`, then nothing, `/` or more.
_REGION_FOLDER = re.compile(
    r"^(?P<base>(?:.*/)?CloudTrail(?:-Insight)?/[a-z]{2}(?:-[a-z]+)+-\d+)(?:/(?P<rest>.*))?$", re.DOTALL
)
#: What may follow the region folder for the day folders to apply: a (partial) `YYYY/MM/DD/...`.
_DATE_PATH = re.compile(r"^(?:\d{0,4}|\d{4}/(?:\d{0,2}|\d{2}/(?:\d{0,2}|\d{2}/.*)))$", re.DOTALL)
#: Client errors that no retry will fix: the option (or the credentials) is wrong.
_LISTING_HINTS = {
    "NoSuchBucket": "the bucket does not exist; check the bucket name",
    "InvalidBucketName": "this is not a valid bucket name",
    "AccessDenied": "the credentials may not list it; they need s3:ListBucket on the bucket",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "PermanentRedirect": "the bucket is in another region; check --region",
    "AuthorizationHeaderMalformed": "the bucket is in another region; check --region",
    "InvalidAccessKeyId": "the AWS credentials were refused",
    "SignatureDoesNotMatch": "the AWS credentials were refused",
    "ExpiredToken": "the AWS credentials have expired",
    "InvalidToken": "the AWS credentials were refused",
}
_RETRYABLE_ERRORS = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})


# --- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillRange:
    """What one backfill reads: the keys under `prefix` delivered in [start, end) (epoch seconds; None:
    unbounded)."""

    bucket: str
    prefix: str
    start: float | None = None
    end: float | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_prefix(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/some/prefix`; the prefix may be empty (the whole bucket)."""
    text = (uri or "").strip()
    match = _S3_URI.match(text)
    if match is None:
        raise ValueError(f"--s3_prefix={uri!r} is not an S3 URI: expected {S3_PREFIX_FORM}")
    bucket = match["bucket"]
    if not _BUCKET.match(bucket):
        raise ValueError(
            f"--s3_prefix={uri!r}: {bucket!r} is not a bucket name (3-255 letters, digits, '.', '-', '_');"
            f" expected {S3_PREFIX_FORM}"
        )
    return bucket, match["prefix"] or ""


def parse_time(text: str, option: str, now: float | None = None) -> float:
    """Epoch seconds of an ISO-8601 time (UTC when naive) or of an age such as `24h` before `now`."""
    value = (text or "").strip()
    age = _AGE.match(value)
    if age:
        seconds = float(age["amount"]) * _UNIT_SECONDS[age["unit"].lower()]
        result = (time.time() if now is None else now) - seconds
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{option}={text!r} is not a time: give {TIME_FORMS}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            result = moment.timestamp()
        except (OverflowError, ValueError, OSError):
            raise ValueError(f"{option}={text!r} is out of range: give {TIME_FORMS}") from None
    try:  # listing_prefixes turns it into a date: it must be one
        datetime.fromtimestamp(result, UTC)
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{option}={text!r} is out of range: give {TIME_FORMS}") from None
    return result


def is_age(text: str | None) -> bool:
    """True for a time given as an age before now (`24h`): it names another moment at each start."""
    return bool(text) and _AGE.match(text.strip()) is not None


def backfill_range_from_values(
    s3_prefix: str | None,
    start_time: str | None = None,
    end_time: str | None = None,
    now: float | None = None,
) -> BackfillRange:
    """Validated backfill settings; a wrong value fails at start, naming the option to fix.

    Relative times (`24h`) are both taken from the same `now` (default: the current time)."""
    if not s3_prefix:
        raise ValueError(f"--s3_prefix is required for a backfill: {S3_PREFIX_FORM}")
    bucket, prefix = parse_s3_prefix(s3_prefix)
    now = time.time() if now is None else now
    start = parse_time(start_time, "--s3_start_time", now) if start_time else None
    end = parse_time(end_time, "--s3_end_time", now) if end_time else None
    if start is not None and end is not None and start >= end:
        raise ValueError(
            f"--s3_start_time={start_time!r} ({_iso(start)}) must be before --s3_end_time={end_time!r}"
            f" ({_iso(end)}): the range is [start, end)"
        )
    return BackfillRange(bucket, prefix, start, end)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- which keys -----------------------------------------------------------------------------------


def cloudtrail_key_time(key: str) -> float | None:
    """Epoch seconds of the delivery time in a CloudTrail log file's name; None for any other key."""
    match = _CLOUDTRAIL_FILE.search(key)
    if match is None:
        return None
    try:
        return datetime.strptime(match["time"], "%Y%m%dT%H%MZ").replace(tzinfo=UTC).timestamp()
    except ValueError:  # 20241332T2561Z
        return None


def listing_prefixes(prefix: str, start: float | None, end: float | None) -> list[str]:
    """The prefixes to list for the keys under `prefix` delivered in [start, end), sorted.

    Within a CloudTrail region folder with both times known, the day folders from start's day to end's
    day (month folders beyond `MAX_LISTING_PREFIXES` days), each narrowed to `prefix` when `prefix`
    already names a year, month or day; none when `prefix` names only days outside the range. Anything
    else: `[prefix]`, and the caller filters by time."""
    if start is not None and end is not None and start >= end:
        return []
    match = _REGION_FOLDER.match(prefix)
    if start is None or end is None or match is None or not _DATE_PATH.match(match["rest"] or ""):
        return [prefix]
    folders = _date_folders(match["base"], start, end)
    if folders is None:
        return [prefix]
    narrowed: list[str] = []
    for folder in folders:
        if folder.startswith(prefix):
            narrowed.append(folder)
        elif prefix.startswith(folder):  # the prefix names a day, or files within one
            narrowed.append(prefix)
    return sorted(set(narrowed))


def _date_folders(base: str, start: float, end: float) -> list[str] | None:
    """`base/YYYY/MM/DD/` for each day of [start, end), or `base/YYYY/MM/` when there are too many days;
    None when there are too many months too."""
    first = datetime.fromtimestamp(start, UTC).date()
    end_moment = datetime.fromtimestamp(end, UTC)
    # The range is [start, end): an end at midnight needs nothing of its day.
    last = end_moment.date() - timedelta(days=1) if end_moment.time() == clock(0) else end_moment.date()
    days = (last - first).days + 1
    if days <= MAX_LISTING_PREFIXES:
        return [_day_folder(base, first + timedelta(days=i)) for i in range(days)]
    first_month = first.year * 12 + first.month - 1  # months since year 0
    last_month = last.year * 12 + last.month - 1
    if last_month - first_month + 1 <= MAX_LISTING_PREFIXES:
        return [f"{base}/{m // 12:04d}/{m % 12 + 1:02d}/" for m in range(first_month, last_month + 1)]
    return None


def _day_folder(base: str, day: date) -> str:
    return f"{base}/{day.year:04d}/{day.month:02d}/{day.day:02d}/"


def _time_skip(key: str, entry: dict, start: float | None, end: float | None) -> str | None:
    """Why a listed key is outside [start, end) (its name's time, else its LastModified); None if inside."""
    if start is None and end is None:
        return None
    moment = cloudtrail_key_time(key)
    if moment is None:
        last_modified = entry.get("LastModified")
        if last_modified is None:
            return None
        moment = last_modified.timestamp()
    if start is not None and moment < start:
        return "before --s3_start_time"
    if end is not None and moment >= end:
        return "at or after --s3_end_time"
    return None


# --- listing --------------------------------------------------------------------------------------


def list_objects(
    client,
    backfill: BackfillRange,
    key_filter: KeyFilter,
    region: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
    skipped: Callable[[str, str], None] | None = None,
    start_after: str | None = None,
) -> Iterator[S3Object]:
    """The objects to read for `backfill`, in key order: accepted by `key_filter`, not empty, in range.

    `region` goes into each `S3Object` (the bucket's region, for the reader's client). `skipped` is
    called with (key, reason) for every listed key that is not yielded, so the caller can count it.
    `start_after`: only keys after it (a resumed listing). A missing bucket, refused access or wrong
    region raises ValueError naming `--s3_prefix`."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE} (the ListObjectsV2 limit)")
    # Without an end, files can only be as new as now: the day folders still bound the listing.
    end = backfill.end if backfill.end is not None else time.time() + OPEN_END_MARGIN_SECONDS
    paginator = client.get_paginator("list_objects_v2")
    for prefix in listing_prefixes(backfill.prefix, backfill.start, end):
        after = {}
        if start_after is not None and start_after >= prefix:
            if not start_after.startswith(prefix):
                continue  # every key under this prefix sorts before start_after
            after = {"StartAfter": start_after}
        pages = paginator.paginate(
            Bucket=backfill.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}, **after
        )
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    key = entry["Key"]
                    reason = _skip_reason(key, entry, backfill, key_filter)
                    if reason is None:
                        yield S3Object(backfill.bucket, key, entry.get("Size"), region)
                    elif skipped is not None:
                        skipped(key, reason)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in _RETRYABLE_ERRORS or status >= 500:
                raise  # botocore retried already; the runner retries the bundle
            hint = _LISTING_HINTS.get(code, "check the bucket, the prefix and --region")
            raise ValueError(
                f"--s3_prefix={backfill.uri}: cannot list the objects ({code or status}): {hint}"
            ) from None


def _skip_reason(key: str, entry: dict, backfill: BackfillRange, key_filter: KeyFilter) -> str | None:
    if not key_filter.accepts(key):
        return "key filter"
    if not entry.get("Size"):
        return "empty"
    return _time_skip(key, entry, backfill.start, backfill.end)


# --- Beam -----------------------------------------------------------------------------------------


class ListObjectsFn(beam.DoFn):
    """Lists the objects of each `BackfillRange` element (see `list_objects`)."""

    def __init__(
        self,
        aws: AwsConfig,
        key_filter: KeyFilter,
        region: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ):
        self._aws = aws
        self._key_filter = key_filter
        self._region = region
        self._page_size = page_size
        self._listed = metrics.counter(NAMESPACE, "objects_listed")
        self._filtered = metrics.counter(NAMESPACE, "objects_filtered")

    def setup(self):
        self._client = self._aws.client("s3", retries={"mode": "standard", "total_max_attempts": 5})

    def process(self, element: BackfillRange) -> Iterator[S3Object]:
        listed = filtered = 0

        def count_skipped(key: str, reason: str) -> None:
            nonlocal filtered
            filtered += 1
            self._filtered.inc()

        for obj in list_objects(
            self._client, element, self._key_filter, self._region, self._page_size, count_skipped
        ):
            listed += 1
            self._listed.inc()
            yield obj
        _LOG.info("%s: %d objects to read, %d skipped", element.uri, listed, filtered)


class ListS3Objects(beam.PTransform):
    """The `S3Object`s of one backfill, spread over the workers: `pbegin | ListS3Objects(...)`."""

    def __init__(
        self,
        backfill: BackfillRange,
        aws: AwsConfig,
        key_filter: KeyFilter | None = None,
        region: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ):
        super().__init__()
        self._backfill = backfill
        self._aws = aws
        self._key_filter = KeyFilter() if key_filter is None else key_filter
        self._region = region
        self._page_size = page_size

    def expand(self, pbegin):
        fn = ListObjectsFn(self._aws, self._key_filter, self._region, self._page_size)
        return (
            pbegin
            | "Range" >> beam.Create([self._backfill])
            | "ListObjects" >> beam.ParDo(fn).with_output_types(S3Object)
            # One worker lists; the reads that follow must not all stay on it.
            | "Spread" >> beam.Reshuffle()
        )
