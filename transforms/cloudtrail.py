"""CloudTrail log files (as CloudTrail writes them to S3) turned into GELF messages, one per record.

The Graylog plugin loaded and gunzipped each file whole, bound every record to a fixed model and failed
the whole file when one value did not fit it (e.g. `responseElements.status` as an object), dropped
`errorCode`, and wrote nested parts as Java map text. Here a file is streamed record by record, a record
that cannot be used fails alone (the caller dead-letters it), the plugin's field names are kept (with its
2025/26 rework's `session_issuer_*` fields and `user_name` fallback) so existing searches keep working,
and nested parts are compact JSON text. No Beam in here: the DoFns wrap these functions.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO

import ijson

from transforms.gelf import build_message, compact_json

#: GELF host (Graylog `source`) unless the caller overrides it; the plugin's default.
DEFAULT_SOURCE = "aws-cloudtrail"

#: The user part of the short message when a record names no user (the plugin's text since 5.1).
UNKNOWN_USER = "<unknown user_name>"

#: Stands in the short message for another part the record lacks.
ABSENT = "-"

GZIP_MAGIC = b"\x1f\x8b"

#: Bytes of a file's JSON kept until its first record comes out, to tell why a file has no records
#: (`{"Records": []}` is a valid, empty log file; a digest file is not a log file at all).
HEAD_BYTES = 1 << 20

#: Top-level scalars copied as text: record key -> GELF field name (the plugin's names first).
TOP_LEVEL_FIELDS: dict[str, str] = {
    "eventSource": "event_source",
    "eventName": "event_name",
    "awsRegion": "aws_region",
    "sourceIPAddress": "source_address",
    "userAgent": "user_agent",
    "requestID": "request_id",
    "eventID": "event_id",
    "eventType": "event_type",
    "recipientAccountId": "recipient_account_id",
    "errorCode": "error_code",
    "errorMessage": "error_message",
    "eventVersion": "event_version",
    "eventCategory": "event_category",
    "readOnly": "read_only",
    "managementEvent": "management_event",
    "sharedEventID": "shared_event_id",
    "vpcEndpointId": "vpc_endpoint_id",
    "vpcEndpointAccountId": "vpc_endpoint_account_id",
    "apiVersion": "api_version",
    "sessionCredentialFromConsole": "session_credential_from_console",
}

#: Nested parts sent as compact JSON text: record key -> GELF field name.
JSON_FIELDS: dict[str, str] = {
    "requestParameters": "request_parameters",
    "responseElements": "response_elements",
    "additionalEventData": "additional_event_data",
    "resources": "resources",
    "tlsDetails": "tls_details",
    "serviceEventDetails": "service_event_details",
}

#: `userIdentity` scalars: key -> GELF field name (the plugin's names).
USER_IDENTITY_FIELDS: dict[str, str] = {
    "type": "user_type",
    "userName": "user_name",
    "principalId": "user_principal_id",
    "arn": "user_principal_arn",
    "accountId": "user_account_id",
    "accessKeyId": "user_access_key_id",
    "invokedBy": "user_invoked_by",
}

#: `userIdentity.sessionContext.sessionIssuer` scalars: key -> GELF field name (the rework's names).
SESSION_ISSUER_FIELDS: dict[str, str] = {
    "type": "session_issuer_user_type",
    "userName": "session_issuer_user_name",
    "principalId": "session_issuer_user_principal_id",
    "arn": "session_issuer_user_principal_arn",
    "accountId": "session_issuer_user_account_id",
}


class CloudTrailRecordError(ValueError):
    """A record that cannot become a GELF message; the message says why. Only that record is lost."""


class CloudTrailFileError(ValueError):
    """A file that is not a readable CloudTrail log file; the message says why."""


def _json_type(value: object) -> str:
    """The JSON name of `value`'s type, for error messages that speak the file's language."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(value: object) -> str | None:
    """A scalar as GELF text: booleans as "true"/"false" (Graylog drops booleans), an unexpected object
    or list as JSON text so one odd value never fails the record; None and "" as None (left out)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return compact_json(value)
    return str(value)


def _json_text(value: object) -> str | None:
    """Compact JSON text of a nested part; None, `{}` and `[]` say nothing and are left out."""
    if value is None or value == {} or value == []:
        return None
    return compact_json(value)


def _copy(fields: dict[str, object], source: Mapping[str, Any], names: Mapping[str, str]) -> None:
    for key, name in names.items():
        text = _text(source.get(key))
        if text is not None:
            fields[name] = text


def _object(value: object) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one: a missing or odd part only loses its fields."""
    return value if isinstance(value, dict) else {}


def event_timestamp(record: Mapping[str, Any]) -> float:
    """`eventTime` (ISO-8601, e.g. `2026-11-27T08:00:00Z`) as epoch seconds; a time without an offset is
    taken as UTC, which is what CloudTrail writes."""
    value = record.get("eventTime")
    if value is None:
        raise CloudTrailRecordError("eventTime is missing")
    if not isinstance(value, str):
        raise CloudTrailRecordError(f"eventTime is {_json_type(value)}, not an ISO-8601 time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CloudTrailRecordError(f"eventTime {value!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def user_name(record: Mapping[str, Any]) -> str | None:
    """`userIdentity.userName`, else the session issuer's (the role's name, for assumed roles)."""
    identity = _object(record.get("userIdentity"))
    name = _text(identity.get("userName"))
    if name is None:
        issuer = _object(_object(identity.get("sessionContext")).get("sessionIssuer"))
        name = _text(issuer.get("userName"))
    return name


def short_message(record: Mapping[str, Any]) -> str:
    """The plugin's summary line, e.g. `signin.amazonaws.com:ConsoleLogin in us-east-1 by 127.0.0.1 / bob`.

    A record without a user name says `<unknown user_name>` as the plugin does; other missing parts
    are written `-` (the plugin wrote `null`).
    """
    source, name, region, address = (
        _text(record.get(key)) or ABSENT
        for key in ("eventSource", "eventName", "awsRegion", "sourceIPAddress")
    )
    return f"{source}:{name} in {region} by {address} / {user_name(record) or UNKNOWN_USER}"


def cloudtrail_fields(record: Any) -> dict[str, object]:
    """The additional GELF fields of one CloudTrail record (names without the GELF `_` prefix).

    Raises CloudTrailRecordError for a record that is not a JSON object. Parts that are missing,
    null or empty are left out, so a record without `userIdentity` still has its other fields.
    """
    if not isinstance(record, dict):
        raise CloudTrailRecordError(f"record is {_json_type(record)}, not a JSON object")
    fields: dict[str, object] = {}
    _copy(fields, record, TOP_LEVEL_FIELDS)
    for key, name in JSON_FIELDS.items():
        text = _json_text(record.get(key))
        if text is not None:
            fields[name] = text
    # The login result, so failed console logins can be searched without parsing response_elements.
    console_login = _object(record.get("responseElements")).get("ConsoleLogin")
    if isinstance(console_login, str) and console_login:
        fields["console_login"] = console_login

    identity = _object(record.get("userIdentity"))
    _copy(fields, identity, USER_IDENTITY_FIELDS)
    session = _object(identity.get("sessionContext"))
    attributes = _object(session.get("attributes"))
    creation_date = _text(attributes.get("creationDate"))
    if creation_date is not None:
        fields["user_session_creation_date"] = creation_date
    mfa = attributes.get("mfaAuthenticated")
    if mfa is not None:
        # As the plugin: true only for "true". A string, as every boolean this project sends.
        fields["user_session_mfa_authenticated"] = "true" if str(mfa).lower() == "true" else "false"
    _copy(fields, _object(session.get("sessionIssuer")), SESSION_ISSUER_FIELDS)
    if "user_name" not in fields and "session_issuer_user_name" in fields:
        fields["user_name"] = fields["session_issuer_user_name"]

    # A string: Graylog drops boolean fields, and the plugin's lookups key on aws_source.
    fields["aws_source"] = "true"
    return fields


def cloudtrail_gelf(
    record: Any,
    source: str | None = None,
    extra_fields: Mapping[str, object] | None = None,
) -> dict:
    """The GELF message of one CloudTrail record: the plugin's short message, host `source` (default
    `aws-cloudtrail`), eventTime as timestamp, the whole record as compact JSON in `full_message`.

    `extra_fields` (e.g. the S3 bucket and key the file came from) are added and win on a name clash.
    Raises CloudTrailRecordError for a record that is not a JSON object or lacks a usable eventTime.
    """
    fields = cloudtrail_fields(record)
    timestamp = event_timestamp(record)
    if extra_fields:
        fields.update(extra_fields)
    return build_message(
        short_message=short_message(record),
        host=source or DEFAULT_SOURCE,
        timestamp=timestamp,
        fields=fields,
        full_message=compact_json(record),
    )


# --------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------


class _Unread(io.RawIOBase):
    """`stream` with `head` (bytes already read from it) put back in front, for streams that cannot seek
    (an S3 response body)."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._stream.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        return size


class _HeadRecorder:
    """Passes reads through, keeping the first HEAD_BYTES until `forget` (called at the first record).

    Only a file that yields no record is kept, and at most HEAD_BYTES of it: enough to say why.
    """

    def __init__(self, stream: BinaryIO | io.BufferedIOBase) -> None:
        self._stream = stream
        self._head: bytearray | None = bytearray()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if self._head is not None:
            if len(self._head) + len(data) <= HEAD_BYTES:
                self._head += data
            else:
                self._head = None
        return data

    def forget(self) -> None:
        self._head = None

    def head(self) -> bytes | None:
        """The whole JSON text read, or None if it was longer than HEAD_BYTES or forgotten."""
        return None if self._head is None else bytes(self._head)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end of the stream (a socket may return short reads)."""
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _first_line(error: Exception) -> str:
    """ijson's yajl messages carry a multi-line excerpt with a caret; the first line says it."""
    detail = error.args[0] if len(error.args) == 1 else str(error)
    if isinstance(detail, bytes):  # yajl2_c passes some messages as bytes
        detail = detail.decode("utf-8", "replace")
    lines = str(detail).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _check_without_records(head: bytes | None) -> None:
    """Returns for a valid empty log file (`{"Records": []}`); raises CloudTrailFileError otherwise."""
    if head is None:
        raise CloudTrailFileError(
            f"no CloudTrail records: more than {HEAD_BYTES} bytes of JSON without a Records array item"
        )
    try:
        document = json.loads(head)
    except (ValueError, RecursionError):
        raise CloudTrailFileError("no CloudTrail records: no Records array found") from None
    if not isinstance(document, dict):
        kind = _json_type(document)
        raise CloudTrailFileError(
            f"not a CloudTrail log file: the JSON is {kind}, not an object with a Records array"
        )
    records = document.get("Records", None)
    if isinstance(records, list):
        return
    if "Records" in document:
        raise CloudTrailFileError(
            f"not a CloudTrail log file: Records is {_json_type(records)}, not an array"
        )
    if "digestStartTime" in document or "logFiles" in document:
        raise CloudTrailFileError("a CloudTrail-Digest file, not a log file: it has no Records array")
    keys = ", ".join(sorted(str(key) for key in document)[:10]) or "none"
    raise CloudTrailFileError(f"not a CloudTrail log file: no Records array (top-level keys: {keys})")


def iter_records(stream: BinaryIO) -> Iterator[Any]:
    """The records of one CloudTrail log file (`{"Records": [...]}`, gzip-compressed or plain), one by one.

    Streams: neither the file nor its records are ever all in memory, so any file size works and a
    file-like object that cannot seek (an S3 response body) is enough. Gzip is recognised by its magic
    bytes 1f 8b. Numbers come out as int/float, so records serialise with `json.dumps`. Records are
    yielded as found: a non-object element of Records is yielded too, for `cloudtrail_gelf` to reject
    on its own.

    Raises CloudTrailFileError when the file is empty, not gzip-or-JSON, corrupt or truncated, or has
    no Records array (e.g. a CloudTrail-Digest file; `{"Records": []}` yields nothing and is fine).
    The error comes when the parser reaches the problem, so records before a corruption point may
    already have been yielded; the message says how many. Errors reading `stream` itself (OSError,
    e.g. a dropped connection) pass through unchanged: they are worth a retry, the file is not.
    """
    magic = _read_up_to(stream, len(GZIP_MAGIC))
    if not magic:
        raise CloudTrailFileError("the file is empty")
    raw = io.BufferedReader(_Unread(magic, stream))
    compressed = magic == GZIP_MAGIC
    content = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    recorder = _HeadRecorder(content)
    records = ijson.items(recorder, "Records.item", use_float=True)
    count = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except ijson.JSONError as error:
            if recorder.head() == b"":
                raise CloudTrailFileError("the file is empty once decompressed") from error
            raise CloudTrailFileError(
                f"not valid JSON (after {count} records): {_first_line(error)}"
            ) from error
        except UnicodeDecodeError as error:
            raise CloudTrailFileError(f"not valid UTF-8 (after {count} records): {error}") from error
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            what = "truncated" if isinstance(error, EOFError) else "corrupt"
            raise CloudTrailFileError(f"{what} gzip data (after {count} records): {error}") from error
        if count == 0:
            recorder.forget()
        count += 1
        yield record
    if count == 0:
        _check_without_records(recorder.head())
