"""Reading positions and leases in a DynamoDB table, for runs without a persistent disk (a container, a
Kubernetes Deployment), as the Graylog plugin's KCL kept its checkpoints.

One item per shard (partition key `pk` = pipeline and stream, sort key `sk` = `shard|<id>`) and one
lease item (`sk` = `lease`). Every write is conditional: a position only moves forward, a lease is taken
only from nobody, from the holder last seen (expired or dead), or by its owner, and renewed or given back
only by its owner. Kinesis sequence numbers have up to 129 digits, more than a DynamoDB number holds, so
they are stored zero-padded as strings, which then compare as numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from botocore.exceptions import BotoCoreError, ClientError

from transforms.aws import AwsConfig
from transforms.positions import LeaseHeld, StoredShard, holder_is_dead

_LOG = logging.getLogger(__name__)

SEQUENCE_DIGITS = 129  # AWS: "0|([1-9]\d{0,128})"
LEASE = "lease"
SHARD = "shard|"
#: The IAM actions the store needs on its table (CreateTable only when it may create it).
TABLE_ACTIONS = (
    "dynamodb:DescribeTable",
    "dynamodb:Query",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
)
CREATE_ACTION = "dynamodb:CreateTable"
_KEY_SCHEMA = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
_REFUSED = {
    "AccessDeniedException": "the credentials may not use it",
    "UnrecognizedClientException": "the AWS credentials were refused",
    "InvalidSignatureException": "the AWS credentials were refused",
    "ExpiredTokenException": "the AWS credentials have expired",
}


def padded(sequence: str) -> str:
    return sequence.rjust(SEQUENCE_DIGITS, "0")


def unpadded(stored: str) -> str:
    return stored.lstrip("0") or "0"


def _failed_condition(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def table_policy_statement(region: str, table: str, create: bool) -> dict:
    """The --print_iam_policy statement of the position table."""
    actions = list(TABLE_ACTIONS) + ([CREATE_ACTION] if create else [])
    return {
        "Sid": "ReadingPositionsTable",
        "Effect": "Allow",
        "Action": actions,
        "Resource": f"arn:aws:dynamodb:{region}:*:table/{table}",
    }


def ensure_table(aws: AwsConfig, table: str, create: bool) -> None:
    """Checks the table at start (or creates it, on demand billing): a wrong table or missing permission
    is a configuration error named here, not a failure on the first delivered bundle."""
    client = aws.client("dynamodb", retries={"mode": "standard", "total_max_attempts": 3})
    try:
        description = client.describe_table(TableName=table)["Table"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code != "ResourceNotFoundException":
            hint = _REFUSED.get(code, code)
            raise ValueError(
                f"--position_table={table}: cannot read the table ({hint}); the pipeline needs "
                f"{', '.join(TABLE_ACTIONS)} on it (see --print_iam_policy)."
            ) from None
        if not create:
            raise ValueError(
                f"--position_table={table} does not exist. Create it (partition key pk, sort key sk, both "
                "strings) or drop --no_create_position_table to let the pipeline create it."
            ) from None
        _create(client, table)
        return
    except BotoCoreError as error:
        raise ValueError(f"--position_table={table}: cannot reach DynamoDB ({error}).") from None
    keys = sorted((k["AttributeName"], k["KeyType"]) for k in description.get("KeySchema", []))
    if keys != sorted((k["AttributeName"], k["KeyType"]) for k in _KEY_SCHEMA):
        raise ValueError(
            f"--position_table={table} has the key schema {keys}, not the store's (pk HASH, sk RANGE): "
            "name another table."
        )


def _create(client, table: str) -> None:
    try:
        client.create_table(
            TableName=table,
            KeySchema=_KEY_SCHEMA,
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code != "ResourceInUseException":  # another process created it meanwhile
            raise ValueError(
                f"--position_table={table} does not exist and could not be created "
                f"({_REFUSED.get(code, code)}): grant {CREATE_ACTION} or create it (partition key pk, "
                "sort key sk, both strings)."
            ) from None
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 60})
    _LOG.warning("Created the DynamoDB table %s for reading positions (on-demand billing).", table)


class DynamoPositionStore:
    """The position store's interface (see FilePositionStore) on a DynamoDB table."""

    def __init__(self, aws: AwsConfig, table: str, pipeline: str):
        self.table = table
        self.pipeline = pipeline
        self._client = aws.client("dynamodb", retries={"mode": "standard", "total_max_attempts": 5})

    def close(self) -> None:
        self._client.close()

    def _pk(self, stream: str) -> dict:
        return {"S": f"{self.pipeline}|{stream}"}

    def _key(self, stream: str, sort_key: str) -> dict:
        return {"pk": self._pk(stream), "sk": {"S": sort_key}}

    def _shard_items(self, stream: str):
        pages = self._client.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :shard)",
            ExpressionAttributeValues={":pk": self._pk(stream), ":shard": {"S": SHARD}},
            ConsistentRead=True,
        )
        for page in pages:
            yield from page.get("Items", [])

    def load(self, stream: str) -> dict[str, StoredShard]:
        stored = {}
        for item in self._shard_items(stream):
            sequence = item.get("sequence", {}).get("S")
            stored[item["sk"]["S"][len(SHARD) :]] = StoredShard(
                unpadded(sequence) if sequence else None, item.get("finished", {}).get("BOOL", False)
            )
        return stored

    def save(self, stream: str, sequences: Mapping[str, str], finished: Iterable[str] = ()) -> None:
        """A position moves only forward (a conditional write), a finished shard stays finished."""
        finished = set(finished)
        now = {"N": f"{time.time():.3f}"}
        for shard in set(sequences) | finished:
            key = self._key(stream, SHARD + shard)
            done = "finished = :true, " if shard in finished else ""
            if shard in sequences:
                try:
                    self._client.update_item(
                        TableName=self.table,
                        Key=key,
                        UpdateExpression=f"SET {done}#s = :s, updated_at = :now",
                        ConditionExpression="attribute_not_exists(#s) OR #s < :s",
                        ExpressionAttributeNames={"#s": "sequence"},
                        ExpressionAttributeValues={
                            ":s": {"S": padded(sequences[shard])},
                            ":now": now,
                            **({":true": {"BOOL": True}} if done else {}),
                        },
                    )
                    continue
                except ClientError as error:
                    if not _failed_condition(error):
                        raise
                    if not done:
                        continue  # a late finalizer of an earlier bundle: the stored one is further
            self._client.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET finished = :true, updated_at = :now",
                ExpressionAttributeValues={":true": {"BOOL": True}, ":now": now},
            )

    def reset(self, stream: str) -> int:
        keys = [item["sk"] for item in self._shard_items(stream)]
        for start in range(0, len(keys), 25):
            batch = keys[start : start + 25]
            requests = [{"DeleteRequest": {"Key": {"pk": self._pk(stream), "sk": sk}}} for sk in batch]
            while requests:
                answer = self._client.batch_write_item(RequestItems={self.table: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table, [])
                if requests:
                    time.sleep(0.2)
        return len(keys)

    def acquire(self, stream: str, owner: str, seconds: float) -> None:
        now = time.time()
        key = self._key(stream, LEASE)
        item = self._client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        seen = item["owner"]["S"] if item else None
        expires_at = float(item["expires_at"]["N"]) if item else 0.0
        if seen is not None and seen != owner and expires_at > now and not holder_is_dead(seen):
            raise LeaseHeld(
                f"{self.pipeline} on {stream} is being read by {seen} (its lease in the DynamoDB table "
                f"{self.table} expires in {expires_at - now:.0f} s unless renewed). Stop that process, or "
                "wait for its lease to expire if it died."
            )
        condition = "attribute_not_exists(#o)" if seen is None else "#o = :seen"
        try:
            self._client.put_item(
                TableName=self.table,
                Item={**key, "owner": {"S": owner}, "expires_at": {"N": f"{now + seconds:.3f}"}},
                ConditionExpression=condition,
                ExpressionAttributeNames={"#o": "owner"},
                **({"ExpressionAttributeValues": {":seen": {"S": seen}}} if seen is not None else {}),
            )
        except ClientError as error:
            if not _failed_condition(error):
                raise
            raise LeaseHeld(
                f"{self.pipeline} on {stream}: another reader took the lease in the DynamoDB table "
                f"{self.table} at the same moment. Stop it, or start this one again once it has ended."
            ) from None

    def renew(self, stream: str, owner: str, seconds: float) -> bool:
        try:
            self._client.update_item(
                TableName=self.table,
                Key=self._key(stream, LEASE),
                UpdateExpression="SET expires_at = :e",
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":e": {"N": f"{time.time() + seconds:.3f}"}, ":me": {"S": owner}},
            )
        except ClientError as error:
            if _failed_condition(error):
                return False
            raise
        return True

    def release(self, stream: str, owner: str) -> None:
        try:
            self._client.delete_item(
                TableName=self.table,
                Key=self._key(stream, LEASE),
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": owner}},
            )
        except ClientError as error:
            if not _failed_condition(error):
                raise
