"""S3 backfill listing: the options, CloudTrail file times, the day folders listed, and the listing itself
against moto (time range, filters, pagination, errors) and as a Beam transform."""

from __future__ import annotations

from datetime import UTC, datetime

import apache_beam as beam
import boto3
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from tests.conftest import REGION, aws_client
from transforms.aws import AwsConfig
from transforms.s3_listing import (
    MAX_LISTING_PREFIXES,
    BackfillRange,
    ListS3Objects,
    backfill_range_from_values,
    cloudtrail_key_time,
    list_objects,
    listing_prefixes,
    parse_s3_prefix,
    parse_time,
)
from transforms.s3_notifications import KeyFilter, S3Object

ACCOUNT = "111122223333"
BUCKET = "trail-bucket"
TRAIL = f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def ts(text: str) -> float:
    """Epoch seconds of a naive ISO time, read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def log_key(stamp: str, unique: str = "kD2hXb9fQm1LcE7a", folder: str = TRAIL) -> str:
    """The key CloudTrail writes for a file delivered at `stamp` (YYYYMMDDTHHMM)."""
    day = f"{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}/"
    return f"{folder}{day}{ACCOUNT}_CloudTrail_us-east-1_{stamp}Z_{unique}.json.gz"


def digest_key(stamp: str) -> str:
    day = f"{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}/"
    return (
        f"AWSLogs/{ACCOUNT}/CloudTrail-Digest/us-east-1/{day}"
        f"{ACCOUNT}_CloudTrail-Digest_us-east-1_management-trail_us-east-1_{stamp}12Z.json.gz"
    )


# --- --s3_prefix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"s3://{BUCKET}/{TRAIL}", (BUCKET, TRAIL)),
        (f"s3://{BUCKET}/AWSLogs", (BUCKET, "AWSLogs")),
        (f"s3://{BUCKET}", (BUCKET, "")),
        (f"s3://{BUCKET}/", (BUCKET, "")),
        (f"  s3://{BUCKET}/x/  ", (BUCKET, "x/")),
        ("s3://Legacy_Bucket.2017/logs/", ("Legacy_Bucket.2017", "logs/")),
    ],
)
def test_parse_s3_prefix(uri, expected):
    assert parse_s3_prefix(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["", f"{BUCKET}/AWSLogs/", f"s3:/{BUCKET}/x", f"https://{BUCKET}.s3.amazonaws.com/x", "s3://", "s3:///x"]
    + ["s3://my bucket/x", "s3://ab/x", "S3://bucket/x"],
)
def test_parse_s3_prefix_rejects_what_is_not_an_s3_uri(uri):
    with pytest.raises(ValueError, match="--s3_prefix") as error:
        parse_s3_prefix(uri)
    assert "s3://<bucket>/<prefix>" in str(error.value)


# --- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27", "2026-11-27T00:00"),
        ("2026-11-27T10:00", "2026-11-27T10:00"),
        ("2026-11-27 10:00", "2026-11-27T10:00"),
        ("2026-11-27T10:00:00Z", "2026-11-27T10:00"),
        ("2026-11-27T10:00:30.5Z", "2026-11-27T10:00:30.5"),
        ("2026-11-27T10:00+02:00", "2026-11-27T08:00"),
        ("2026-11-27T10:00:00-05:30", "2026-11-27T15:30"),
    ],
)
def test_parse_time_iso(text, expected):
    assert parse_time(text, "--s3_start_time") == ts(expected)


@pytest.mark.parametrize(
    ("text", "age"),
    [("90m", 90 * 60), ("24h", 24 * 3600), ("7d", 7 * 86400), ("2w", 14 * 86400), ("30s", 30)]
    + [("1.5h", 5400), (" 12H ", 12 * 3600), ("0h", 0)],
)
def test_parse_time_age_before_now(text, age):
    assert parse_time(text, "--s3_start_time", now=NOW) == NOW - age


def test_parse_time_age_defaults_to_the_current_time():
    before = datetime.now(UTC).timestamp()
    assert before - 3600 - 1 <= parse_time("1h", "--s3_end_time") <= before - 3600 + 5


@pytest.mark.parametrize("text", ["", "yesterday", "24x", "-5h", "h", "2026", "2026-13-01", "27.11.2026"])
@pytest.mark.parametrize("option", ["--s3_start_time", "--s3_end_time"])
def test_parse_time_rejects_other_text_naming_the_option_and_the_forms(text, option):
    with pytest.raises(ValueError, match=f"^{option}=") as error:
        parse_time(text, option)
    assert "2026-11-27T10:00" in str(error.value) and "24h" in str(error.value)


def test_parse_time_rejects_an_age_beyond_the_calendar():
    with pytest.raises(ValueError, match="--s3_start_time.*out of range"):
        parse_time("99999999w", "--s3_start_time", now=NOW)


# --- BackfillRange --------------------------------------------------------------------------------


def test_backfill_range_from_values():
    backfill = backfill_range_from_values(f"s3://{BUCKET}/{TRAIL}", "2026-11-27", "2026-11-28T06:00Z")
    assert backfill == BackfillRange(BUCKET, TRAIL, ts("2026-11-27T00:00"), ts("2026-11-28T06:00"))
    assert backfill.uri == f"s3://{BUCKET}/{TRAIL}"


def test_backfill_range_open_ends_and_relative_times_share_one_now():
    assert backfill_range_from_values(f"s3://{BUCKET}/x", None, "") == BackfillRange(BUCKET, "x")
    backfill = backfill_range_from_values(f"s3://{BUCKET}/x", "2d", "1d", now=NOW)
    assert (backfill.start, backfill.end) == (NOW - 2 * 86400, NOW - 86400)


@pytest.mark.parametrize(
    ("start", "end"), [("2026-11-28", "2026-11-27"), ("2026-11-27", "2026-11-27"), ("1d", "2d")]
)
def test_backfill_range_start_must_be_before_end(start, end):
    with pytest.raises(ValueError, match="--s3_start_time=.* must be before --s3_end_time="):
        backfill_range_from_values(f"s3://{BUCKET}/x", start, end, now=NOW)


@pytest.mark.parametrize("value", [None, ""])
def test_backfill_range_needs_a_prefix(value):
    with pytest.raises(ValueError, match="--s3_prefix is required"):
        backfill_range_from_values(value, "1d")


def test_backfill_range_names_the_bad_time_option():
    with pytest.raises(ValueError, match="--s3_end_time='soon'"):
        backfill_range_from_values(f"s3://{BUCKET}/x", "1d", "soon")


# --- CloudTrail file times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        log_key("20240514T1005"),
        f"{ACCOUNT}_CloudTrail_eu-west-1_20240514T1005Z_kD2hXb9fQm1LcE7a.json.gz",
        log_key("20240514T1005", folder=f"audit/AWSLogs/o-a1b2c3d4e5/{ACCOUNT}/CloudTrail/eu-west-1/"),
        f"AWSLogs/{ACCOUNT}/CloudTrail-Insight/eu-west-1/2024/05/14/"
        f"{ACCOUNT}_CloudTrail-Insight_eu-west-1_20240514T1005Z_a1B2c3D4e5F6g7H8.json.gz",
    ],
)
def test_cloudtrail_key_time(key):
    assert cloudtrail_key_time(key) == ts("2024-05-14T10:05")


@pytest.mark.parametrize(
    "key",
    [
        digest_key("20240514T1005"),
        f"{TRAIL}2024/05/14/notes.txt",
        f"{TRAIL}2024/05/14/",
        "vpc/2024/05/14/flows-20240514T1005Z.log.gz",
        log_key("20241332T1005"),  # no such month
        log_key("20240514T1005").replace(".json.gz", ".json.gz.tmp"),
        log_key("20240514T1005").replace(ACCOUNT + "_", "1234_"),
    ],
)
def test_cloudtrail_key_time_of_other_keys_is_none(key):
    assert cloudtrail_key_time(key) is None


# --- listing prefixes -----------------------------------------------------------------------------


def days(*names: str, base: str = TRAIL) -> list[str]:
    return [f"{base}{name}/" for name in names]


def test_listing_prefixes_day_folders_of_the_range():
    assert listing_prefixes(TRAIL, ts("2024-05-14T10:00"), ts("2024-05-16T09:00")) == days(
        "2024/05/14", "2024/05/15", "2024/05/16"
    )


def test_listing_prefixes_one_day():
    assert listing_prefixes(TRAIL, ts("2024-05-14T10:00"), ts("2024-05-14T11:00")) == days("2024/05/14")


def test_listing_prefixes_end_at_midnight_excludes_its_day():
    assert listing_prefixes(TRAIL, ts("2024-05-14"), ts("2024-05-16")) == days("2024/05/14", "2024/05/15")


def test_listing_prefixes_across_month_and_leap_day():
    assert listing_prefixes(TRAIL, ts("2024-02-28T12:00"), ts("2024-03-02T01:00")) == days(
        "2024/02/28", "2024/02/29", "2024/03/01", "2024/03/02"
    )


def test_listing_prefixes_across_year():
    assert listing_prefixes(TRAIL, ts("2023-12-30T23:00"), ts("2024-01-01T00:01")) == days(
        "2023/12/30", "2023/12/31", "2024/01/01"
    )


@pytest.mark.parametrize(
    "base",
    [
        f"AWSLogs/{ACCOUNT}/CloudTrail/eu-west-1/",
        f"audit/AWSLogs/o-a1b2c3d4e5/{ACCOUNT}/CloudTrail/us-gov-west-1/",
        f"AWSLogs/{ACCOUNT}/CloudTrail-Insight/ap-southeast-3/",
        f"CloudTrail/AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/",  # a user prefix named CloudTrail
    ],
)
def test_listing_prefixes_any_region_folder(base):
    assert listing_prefixes(base, ts("2024-05-14"), ts("2024-05-15")) == [f"{base}2024/05/14/"]


def test_listing_prefixes_region_folder_without_its_slash():
    assert listing_prefixes(TRAIL.rstrip("/"), ts("2024-05-14"), ts("2024-05-15")) == days("2024/05/14")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (f"{TRAIL}2024/", days("2024/01/30", "2024/01/31", "2024/02/01")),
        (f"{TRAIL}2024/02/", days("2024/02/01")),
        (f"{TRAIL}2024/02", days("2024/02/01")),
        (f"{TRAIL}2024/01/3", days("2024/01/30", "2024/01/31")),
        (f"{TRAIL}2024/01/31/", days("2024/01/31")),
        (f"{TRAIL}2024/01/31", days("2024/01/31")),
        (
            f"{TRAIL}2024/01/31/{ACCOUNT}_CloudTrail_us-east-1_20240131T12",
            [f"{TRAIL}2024/01/31/{ACCOUNT}_CloudTrail_us-east-1_20240131T12"],
        ),
        (f"{TRAIL}2024/03/", []),  # names only days outside the range
        (f"{TRAIL}2023/", []),
    ],
)
def test_listing_prefixes_keeps_a_prefix_that_names_a_year_month_or_day(prefix, expected):
    assert listing_prefixes(prefix, ts("2024-01-30T10:00"), ts("2024-02-01T10:00")) == expected


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "AWSLogs/",
        f"AWSLogs/{ACCOUNT}/CloudTrail/",
        f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-",
        f"AWSLogs/{ACCOUNT}/CloudTrail-Digest/us-east-1/",
        f"{TRAIL}backup/",
        "vpc/2024/05/14/",
    ],
)
def test_listing_prefixes_elsewhere_lists_the_prefix(prefix):
    assert listing_prefixes(prefix, ts("2024-05-14"), ts("2024-05-15")) == [prefix]


@pytest.mark.parametrize(("start", "end"), [(None, None), (ts("2024-05-14"), None), (None, ts("2024-05-14"))])
def test_listing_prefixes_without_both_times_lists_the_prefix(start, end):
    assert listing_prefixes(TRAIL, start, end) == [TRAIL]


def test_listing_prefixes_of_an_empty_range_is_empty():
    assert listing_prefixes(TRAIL, ts("2024-05-14"), ts("2024-05-14")) == []
    assert listing_prefixes("AWSLogs/", ts("2024-05-15"), ts("2024-05-14")) == []


def test_listing_prefixes_caps_days_then_lists_months():
    start = ts("2023-01-01")
    within = listing_prefixes(TRAIL, start, start + MAX_LISTING_PREFIXES * 86400)
    assert len(within) == MAX_LISTING_PREFIXES and within[-1] == f"{TRAIL}2024/02/04/"
    months = listing_prefixes(TRAIL, start, start + (MAX_LISTING_PREFIXES + 1) * 86400)
    assert months == [f"{TRAIL}2023/{m:02d}/" for m in range(1, 13)] + days("2024/01", "2024/02")
    # A year prefix still narrows the months.
    assert listing_prefixes(f"{TRAIL}2024/", start, ts("2025-01-01")) == [
        f"{TRAIL}2024/{m:02d}/" for m in range(1, 13)
    ]


def test_listing_prefixes_caps_months_then_lists_the_prefix():
    assert len(listing_prefixes(TRAIL, ts("1990-01-01"), ts("2023-05-01"))) == MAX_LISTING_PREFIXES
    assert listing_prefixes(TRAIL, ts("1990-01-01"), ts("2023-06-01")) == [TRAIL]
    assert listing_prefixes(TRAIL, 0.0, ts("9999-12-31")) == [TRAIL]


# --- listing against moto -------------------------------------------------------------------------

STAMPS = [
    f"{day}T{hhmm}"
    for day in ("20240130", "20240131", "20240201", "20240202")
    for hhmm in ("0005", "0605", "1205", "2355")
]
NOTES = f"{TRAIL}2024/01/31/notes.txt"
FOLDER_MARKER = f"{TRAIL}2024/01/31/"
OTHER = "other/app.log"


def aws_config(endpoint: str) -> AwsConfig:
    return AwsConfig(
        region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    )


@pytest.fixture
def s3(moto):
    """A client of a trail bucket: log files on four days, digests, a note, a folder marker, other logs."""
    client = aws_client("s3", moto)
    client.create_bucket(Bucket=BUCKET)
    keys = [log_key(s) for s in STAMPS] + [digest_key(s) for s in STAMPS[::4]] + [NOTES, OTHER]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=b'{"Records": []}')
    client.put_object(Bucket=BUCKET, Key=FOLDER_MARKER, Body=b"")
    return client


def listed_prefixes(client) -> list[str]:
    """The Prefix of every ListObjectsV2 call the client makes from now on."""
    calls: list[str] = []
    client.meta.events.register(
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(params["Prefix"])
    )
    return calls


def test_list_objects_of_a_range_lists_only_its_day_folders(s3):
    calls = listed_prefixes(s3)
    skipped: list[tuple[str, str]] = []
    backfill = BackfillRange(BUCKET, TRAIL, ts("2024-01-31T06:00"), ts("2024-02-02T00:00"))
    objects = list(
        list_objects(s3, backfill, KeyFilter(), region="us-east-1", skipped=lambda *s: skipped.append(s))
    )
    expected = [log_key(s) for s in STAMPS if "20240131T0605" <= s < "20240202"]
    assert [o.key for o in objects] == expected
    assert all(o.bucket == BUCKET and o.size == 15 and o.region == "us-east-1" for o in objects)
    assert calls == days("2024/01/31", "2024/02/01")
    assert sorted(skipped) == [
        (FOLDER_MARKER, "empty"),
        (log_key("20240131T0005"), "before --s3_start_time"),
        (NOTES, "at or after --s3_end_time"),  # no time in its name: LastModified (now) decides
    ]


def test_list_objects_outside_a_region_folder_filters_by_time(s3):
    calls = listed_prefixes(s3)
    skipped: list[tuple[str, str]] = []
    backfill = BackfillRange(BUCKET, "AWSLogs/", ts("2024-01-31T06:00"), ts("2024-02-02T00:00"))
    objects = list(list_objects(s3, backfill, KeyFilter(), skipped=lambda *s: skipped.append(s)))
    assert [o.key for o in objects] == [log_key(s) for s in STAMPS if "20240131T0605" <= s < "20240202"]
    assert all(o.region is None for o in objects)
    assert calls == ["AWSLogs/"]
    reasons = {key: reason for key, reason in skipped}
    assert {reasons[digest_key(s)] for s in STAMPS[::4]} == {"key filter"}
    assert reasons[log_key("20240202T0005")] == "at or after --s3_end_time"


def test_list_objects_without_times_reads_everything_the_filter_accepts(s3):
    objects = list(list_objects(s3, BackfillRange(BUCKET, ""), KeyFilter()))
    assert [o.key for o in objects] == sorted([log_key(s) for s in STAMPS] + [NOTES, OTHER])
    include = KeyFilter.from_options(include=r"_CloudTrail_")
    assert [o.key for o in list_objects(s3, BackfillRange(BUCKET, ""), include)] == [
        log_key(s) for s in STAMPS
    ]


def test_list_objects_keys_without_a_time_go_by_last_modified(s3):
    """Recent bounds: the 2024 log files are out by their names, the note and other log in by LastModified."""
    backfill = backfill_range_from_values(f"s3://{BUCKET}", "1h", None)
    assert [o.key for o in list_objects(s3, backfill, KeyFilter())] == [NOTES, OTHER]
    backfill = backfill_range_from_values(f"s3://{BUCKET}", "2024-01-01", "2024-03-01")
    assert [o.key for o in list_objects(s3, backfill, KeyFilter())] == [log_key(s) for s in STAMPS]


def test_list_objects_open_end_lists_day_folders_up_to_now(s3):
    calls = listed_prefixes(s3)
    now = datetime.now(UTC)
    backfill = backfill_range_from_values(f"s3://{BUCKET}/{TRAIL}", "1d", None)
    assert list(list_objects(s3, backfill, KeyFilter())) == []
    assert 2 <= len(calls) <= 4 and f"{TRAIL}{now:%Y/%m/%d}/" in calls


def test_list_objects_follows_pages(moto):
    client = aws_client("s3", moto)
    client.create_bucket(Bucket=BUCKET)
    keys = [log_key(f"20240514T{h:02d}{m:02d}") for h in range(10) for m in (5, 35)]
    keys += [log_key(f"20240514T{h:02d}20", unique="Zz9Yy8Xx7Ww6Vv5U") for h in range(10)]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    calls = listed_prefixes(client)
    backfill = BackfillRange(BUCKET, TRAIL, ts("2024-05-14"), ts("2024-05-15"))
    assert [o.key for o in list_objects(client, backfill, KeyFilter(), page_size=5)] == sorted(keys)
    assert len(keys) == 30 and calls == [f"{TRAIL}2024/05/14/"] * 6


def test_list_objects_page_size_is_bounded(s3):
    with pytest.raises(ValueError, match="page_size"):
        list(list_objects(s3, BackfillRange(BUCKET, ""), KeyFilter(), page_size=1001))


def test_list_objects_missing_bucket(moto):
    client = aws_client("s3", moto)
    backfill = BackfillRange("no-such-bucket", TRAIL, ts("2024-05-14"), ts("2024-05-15"))
    with pytest.raises(ValueError, match=r"^--s3_prefix=s3://no-such-bucket/AWSLogs/.*\(NoSuchBucket\)"):
        list(list_objects(client, backfill, KeyFilter()))


def stubbed_client():
    return boto3.client(
        "s3", region_name=REGION, aws_access_key_id="AKIDSECRETLOOKING", aws_secret_access_key="s3cr3t-v4lue"
    )


def test_list_objects_access_denied_names_the_option_not_the_credentials():
    client = stubbed_client()
    with Stubber(client) as stubber:
        stubber.add_client_error("list_objects_v2", "AccessDenied", "Access Denied", http_status_code=403)
        with pytest.raises(ValueError) as error:
            list(list_objects(client, BackfillRange(BUCKET, "AWSLogs/"), KeyFilter()))
    message = str(error.value)
    assert message.startswith(f"--s3_prefix=s3://{BUCKET}/AWSLogs/") and "(AccessDenied)" in message
    assert "s3:ListBucket" in message
    assert "AKID" not in message and "s3cr3t" not in message
    assert error.value.__cause__ is None


def test_list_objects_server_errors_stay_client_errors():
    """Not a wrong option: the runner retries the bundle."""
    client = stubbed_client()
    with Stubber(client) as stubber:
        stubber.add_client_error("list_objects_v2", "InternalError", http_status_code=500)
        with pytest.raises(ClientError):
            list(list_objects(client, BackfillRange(BUCKET, "AWSLogs/"), KeyFilter()))


def test_list_s3_objects_transform(s3, moto):
    backfill = backfill_range_from_values(f"s3://{BUCKET}/{TRAIL}", "2024-01-31T06:00", "2024-02-02")
    expected = [
        S3Object(BUCKET, log_key(s), 15, "us-east-1") for s in STAMPS if "20240131T0605" <= s < "20240202"
    ]
    pipeline = beam.Pipeline()
    objects = pipeline | ListS3Objects(
        backfill, aws_config(moto), KeyFilter(), region="us-east-1", page_size=2
    )
    assert_that(objects, equal_to(expected))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("s3"))["counters"]
    }
    assert counters == {"objects_listed": len(expected), "objects_filtered": 3}
