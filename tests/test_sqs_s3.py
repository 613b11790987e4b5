"""The pieces of transforms.sqs_s3 on their own: visibility kept while processing, up to its bound."""

from __future__ import annotations

import time

import pytest

from tests.conftest import aws_client
from tests.test_sqs import make_queue, send
from transforms.sqs import message_of
from transforms.sqs_s3 import ObjectSettings, VisibilityKeeper


def receive_one(client, url: str, visibility: int):
    response = client.receive_message(
        QueueUrl=url, WaitTimeSeconds=1, VisibilityTimeout=visibility, AttributeNames=["All"]
    )
    return message_of(url, response["Messages"][0], received_at=time.time())


def visible(client, url: str) -> int:
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_a_message_being_processed_stays_hidden_and_comes_back_once_released(moto):
    client = aws_client("sqs", moto)
    url = make_queue(client)
    send(client, url, ["big-object"])
    message = receive_one(client, url, visibility=2)
    keeper = VisibilityKeeper(client, visibility_timeout=2, max_processing_seconds=60)
    try:
        keeper.add(message)
        time.sleep(4.5)  # more than twice the timeout
        assert visible(client, url) == 0, "extended while processed"
        assert keeper.take_extensions() >= 2
        keeper.remove(message)
        time.sleep(2.5)
        assert visible(client, url) == 1, "no longer extended once released"
    finally:
        keeper.close()


def test_extensions_stop_at_the_processing_bound(moto):
    client = aws_client("sqs", moto)
    url = make_queue(client)
    send(client, url, ["endless"])
    message = receive_one(client, url, visibility=2)
    keeper = VisibilityKeeper(client, visibility_timeout=2, max_processing_seconds=3)
    try:
        keeper.add(message)
        deadline = time.monotonic() + 10
        while visible(client, url) == 0 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert visible(client, url) == 1, "let go after --sqs_max_processing_seconds"
        assert time.monotonic() < deadline
    finally:
        keeper.close()


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"visibility_timeout": 0}, "--sqs_visibility_timeout"),
        ({"max_processing_seconds": 50000}, "--sqs_max_processing_seconds"),
        ({"retry_delay": -1}, "--sqs_retry_delay_seconds"),
        ({"max_receive_count": 0}, "--max_receive_count"),
    ],
)
def test_bad_settings_name_their_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        ObjectSettings(**kwargs)
