"""The S3 objects that one SQS message announces, whatever AWS service put the message there.

The Graylog plugin understood only CloudTrail's SNS envelope: raw S3 event notifications, raw SNS
delivery and EventBridge were unsupported, and whatever else shared the queue (the CloudTrail
validation message, AWS Config notifications, S3 test events) was never deleted and came back forever.
Here every shape AWS sends is recognised: a message either names the objects to read, or is a known
message with nothing to read (the caller counts and deletes it), or raises `NotificationError` with a
reason saying what was expected (the caller dead-letters and deletes it). So no message needs to stay
in the queue.

Pure functions without Beam, so the SQS reader can use them and tests need no pipeline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

NotificationKind = Literal[
    "cloudtrail-sns",  # CloudTrail -> SNS -> SQS: the SNS envelope around {s3Bucket, s3ObjectKey}
    "cloudtrail-raw",  # the same with SNS raw message delivery: {s3Bucket, s3ObjectKey} alone
    "s3-event",  # S3 event notification {Records: [...]} sent straight to SQS (or raw SNS delivery)
    "s3-event-sns",  # the same inside an SNS envelope
    "eventbridge",  # an EventBridge event from aws.s3 whose rule targets the queue
    "eventbridge-sns",  # the same inside an SNS envelope (an EventBridge rule targeting an SNS topic)
    "skipped",  # a known message that announces no object: test event, validation, Config, SNS control
]

#: What CloudTrail publishes once to a topic it is given, to check it may publish there.
CLOUDTRAIL_VALIDATION_MESSAGE = "CloudTrail validation message."

#: Default of `--s3_key_exclude`: CloudTrail digest files hold hashes for log file validation, not events.
DEFAULT_KEY_EXCLUDE = r"/CloudTrail-Digest/"

#: Said by every error, so a dead letter's reason tells the reader what would have been accepted.
EXPECTED = (
    "expected an S3 event notification {Records: [{eventSource: aws:s3, s3: {bucket, object}}]}, a"
    " CloudTrail notification {s3Bucket, s3ObjectKey: [...]}, an EventBridge event from aws.s3, an"
    " s3:TestEvent, an AWS Config notification, or any of these in an SNS envelope {Type, TopicArn, Message}"
)

_SNS_CONTROL_TYPES = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
_S3_CREATED = "ObjectCreated:"
_EVENTBRIDGE_CREATED = "Object Created"


class NotificationError(ValueError):
    """An SQS message that names no S3 object and is none of the known ones; the message says why."""


class KeyFilterError(ValueError):
    """A key filter option that is not a valid regular expression."""


@dataclass(frozen=True, slots=True)
class S3Object:
    """One object to download. `key` is the real key (URL-decoded where AWS encoded it)."""

    bucket: str
    key: str
    size: int | None = None
    #: The bucket's region when the notification says it (S3 events, EventBridge), so the reader can
    #: use a client of the right region; None for CloudTrail, whose notification does not say.
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """What one SQS message asks for: the objects to read, and why any part of it was skipped.

    `skipped` has one reason per part that announced nothing: the whole message for a known message
    of kind "skipped", or each S3 event record / EventBridge event that is not an object creation
    (an S3 event can mix ObjectCreated and ObjectRemoved records). A message with no objects always
    has at least one reason, so the caller can count it before deleting it.
    """

    kind: NotificationKind
    objects: tuple[S3Object, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def nothing_to_read(self) -> bool:
        """True when the message can be deleted at once: it announces no object."""
        return not self.objects


def parse_notification(body: str | bytes) -> Notification:
    """The objects announced by one SQS message body; NotificationError says why one is unusable."""
    text = _text(body)
    if _is_validation_message(text):
        return _skipped("CloudTrail validation message")
    document = _json_object(text, "the message body")
    if _is_sns_envelope(document):
        return _parse_sns(document)
    return _parse_payload(document, "the message body", in_sns=False)


def _text(body: str | bytes) -> str:
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotificationError(f"the message body is not UTF-8 text ({e}); {EXPECTED}") from None
    if not body.strip():
        raise NotificationError(f"the message body is empty; {EXPECTED}")
    return body


def _is_validation_message(text: str) -> bool:
    """CloudTrail's validation message is plain text, in an SNS Message or (raw delivery) the body."""
    return CLOUDTRAIL_VALIDATION_MESSAGE in text and not text.lstrip().startswith("{")


def _json_object(text: str, where: str) -> dict:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotificationError(f"{where} is not JSON ({e}; it starts {text[:40]!r}); {EXPECTED}") from None
    if not isinstance(document, dict):
        raise NotificationError(f"{where} is {_describe(document)}, not a JSON object; {EXPECTED}")
    return document


def _is_sns_envelope(document: Mapping) -> bool:
    return isinstance(document.get("Type"), str) and "TopicArn" in document


def _parse_sns(envelope: Mapping) -> Notification:
    sns_type = envelope["Type"]
    if sns_type in _SNS_CONTROL_TYPES:
        return _skipped(f"SNS {sns_type}")
    if sns_type != "Notification":
        raise NotificationError(
            f"SNS envelope of Type {sns_type!r}; expected Notification, SubscriptionConfirmation or"
            " UnsubscribeConfirmation"
        )
    message = envelope.get("Message")
    if not isinstance(message, str):
        raise NotificationError(
            f"SNS notification without a Message string (Message is {_describe(message)}); {EXPECTED}"
        )
    if _is_validation_message(message):
        return _skipped("CloudTrail validation message")
    payload = _json_object(message, "the SNS Message")
    return _parse_payload(payload, "the SNS Message", in_sns=True)


def _parse_payload(payload: Mapping, where: str, in_sns: bool) -> Notification:
    """Classify one notification (outside or inside SNS) by the keys only its sender writes."""
    if payload.get("Event") == "s3:TestEvent":
        return _skipped("s3:TestEvent")
    # Before s3Bucket: Config's delivery notifications carry s3Bucket and s3ObjectKey (a string) too.
    message_type = payload.get("messageType")
    if isinstance(message_type, str):
        return _skipped(f"AWS Config notification {message_type}")
    if "Records" in payload:
        return _parse_s3_event(payload["Records"], where, "s3-event-sns" if in_sns else "s3-event")
    if "detail-type" in payload and "source" in payload:
        return _parse_eventbridge(payload, where, "eventbridge-sns" if in_sns else "eventbridge")
    if "s3Bucket" in payload or "s3ObjectKey" in payload:
        return _parse_cloudtrail(payload, where, "cloudtrail-sns" if in_sns else "cloudtrail-raw")
    raise NotificationError(f"{where} is a JSON object of unknown shape (keys: {_keys(payload)}); {EXPECTED}")


def _parse_cloudtrail(payload: Mapping, where: str, kind: NotificationKind) -> Notification:
    bucket = _string(payload.get("s3Bucket"), f"{where}: CloudTrail notification s3Bucket")
    keys = payload.get("s3ObjectKey")
    if not isinstance(keys, list) or not keys:
        raise NotificationError(
            f"{where}: CloudTrail notification s3ObjectKey is {_describe(keys)}; expected a non-empty list"
            " of object keys"
        )
    objects = tuple(
        S3Object(bucket, _string(key, f"{where}: CloudTrail notification s3ObjectKey[{i}]"))
        for i, key in enumerate(keys)
    )
    return Notification(kind, objects)


def _parse_s3_event(records: object, where: str, kind: NotificationKind) -> Notification:
    if not isinstance(records, list) or not records:
        raise NotificationError(
            f"{where}: S3 event notification Records is {_describe(records)}; expected a non-empty list"
        )
    objects: list[S3Object] = []
    skipped: list[str] = []
    for i, record in enumerate(records):
        path = f"{where}: Records[{i}]"
        if not isinstance(record, dict):
            raise NotificationError(f"{path} is {_describe(record)}; expected an S3 event record object")
        source = record.get("eventSource")
        if source != "aws:s3":
            raise NotificationError(
                f"{path}.eventSource is {_describe(source)}; expected 'aws:s3' (an S3 event notification)"
            )
        event_name = _string(record.get("eventName"), f"{path}.eventName")
        if not event_name.startswith(_S3_CREATED):
            skipped.append(f"S3 event {event_name}")
            continue
        s3 = _mapping(record.get("s3"), f"{path}.s3")
        bucket = _string(
            _mapping(s3.get("bucket"), f"{path}.s3.bucket").get("name"), f"{path}.s3.bucket.name"
        )
        obj = _mapping(s3.get("object"), f"{path}.s3.object")
        key = _url_decoded(_string(obj.get("key"), f"{path}.s3.object.key"), f"{path}.s3.object.key")
        region = record.get("awsRegion")
        objects.append(S3Object(bucket, key, _size(obj.get("size")), region if _is_text(region) else None))
    return Notification(kind, tuple(objects), tuple(skipped))


def _parse_eventbridge(event: Mapping, where: str, kind: NotificationKind) -> Notification:
    source = event.get("source")
    detail_type = event.get("detail-type")
    if source != "aws.s3":
        raise NotificationError(
            f"{where} is an EventBridge event from {_describe(source)} ({_describe(detail_type)});"
            " expected source 'aws.s3': route only S3 events to this queue"
        )
    detail_type = _string(detail_type, f"{where}: EventBridge detail-type")
    if detail_type != _EVENTBRIDGE_CREATED:
        return Notification(kind, (), (f"EventBridge {detail_type}",))
    detail = _mapping(event.get("detail"), f"{where}: EventBridge detail")
    bucket = _string(
        _mapping(detail.get("bucket"), f"{where}: detail.bucket").get("name"), f"{where}: detail.bucket.name"
    )
    obj = _mapping(detail.get("object"), f"{where}: detail.object")
    # EventBridge writes the key as it is, unlike S3 event notifications: no URL decoding here.
    key = _string(obj.get("key"), f"{where}: detail.object.key")
    region = event.get("region")
    return Notification(
        kind, (S3Object(bucket, key, _size(obj.get("size")), region if _is_text(region) else None),)
    )


def _skipped(reason: str) -> Notification:
    return Notification("skipped", (), (reason,))


def _url_decoded(key: str, where: str) -> str:
    """S3 event notifications URL-encode keys, with `+` for a space ("red flower.jpg" -> "red+flower.jpg")."""
    try:
        decoded = unquote_plus(key, errors="strict")
    except UnicodeDecodeError:
        raise NotificationError(f"{where} {key!r} does not URL-decode to UTF-8 text") from None
    if not decoded:
        raise NotificationError(f"{where} {key!r} URL-decodes to an empty key")
    return decoded


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _string(value: object, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise NotificationError(f"{where} is {_describe(value)}; expected a non-empty string")


def _mapping(value: object, where: str) -> Mapping:
    if not isinstance(value, dict):
        raise NotificationError(f"{where} is {_describe(value)}; expected an object")
    return value


def _size(value: object) -> int | None:
    """The announced size is only informative: anything but a non-negative integer is left out."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _describe(value: object) -> str:
    """A value as a dead-letter reason shows it: short, in JSON terms."""
    if value is None:
        return "missing (or null)"
    if isinstance(value, str):
        return repr(value[:60]) if value else "an empty string"
    if isinstance(value, list):
        return f"a list of {len(value)} items" if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return f"the JSON value {json.dumps(value)}"


def _keys(document: Mapping, limit: int = 10) -> str:
    names = sorted(str(name) for name in document)
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


@dataclass(frozen=True)
class KeyFilter:
    """Which announced keys are read: those `include` finds (all when None) that `exclude` does not.

    Both are searched anywhere in the key (anchor with ^ and $ for whole keys). Applied before the
    download, so a CloudTrail digest file costs no GetObject and no parse error.
    """

    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = re.compile(DEFAULT_KEY_EXCLUDE)

    @classmethod
    def from_options(cls, include: str | None = None, exclude: str | None = DEFAULT_KEY_EXCLUDE) -> KeyFilter:
        """The filter of `--s3_key_include` / `--s3_key_exclude`; an empty or None pattern filters nothing."""
        return cls(_compile(include, "--s3_key_include"), _compile(exclude, "--s3_key_exclude"))

    def accepts(self, key: str) -> bool:
        if self.include is not None and self.include.search(key) is None:
            return False
        return self.exclude is None or self.exclude.search(key) is None

    def split(self, objects: Iterable[S3Object]) -> tuple[tuple[S3Object, ...], tuple[S3Object, ...]]:
        """(kept, filtered out), each in the announced order, so the caller can count what it skips."""
        kept: list[S3Object] = []
        filtered: list[S3Object] = []
        for obj in objects:
            (kept if self.accepts(obj.key) else filtered).append(obj)
        return tuple(kept), tuple(filtered)


def _compile(pattern: str | None, option: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise KeyFilterError(f"{option}: {pattern!r} is not a valid regular expression ({e})") from None
