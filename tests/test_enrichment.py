"""Entity lookups: the per-process refresher, the options, and flow logs enriched end to end."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.sample_data import ACCOUNT, create_flow_log_stream, deliver_through_cloudwatch
from tests.conftest import REGION, NodeReceiver, aws_client
from tests.estate import OTHER_REGION, large_estate, network, run
from tests.faultproxy import FaultPolicy, KinesisFaultProxy
from tests.test_pipelines import LOG_GROUP, STREAM, pipeline_args, run_cli, start_cli
from transforms.aws import AwsConfig
from transforms.enrichment import Enricher, InventoryRefresher, LookupConfig, lookup_config_from_options
from transforms.entities import REQUIRED_PERMISSIONS, Entity, Inventory
from transforms.gelf import encode_message

AWS = AwsConfig(region=REGION)


def inventory_of(*pairs: tuple[str, str]) -> Inventory:
    return Inventory(Entity(entity=f"ec2:{name}", aws_type="EC2", addresses=(ip,)) for ip, name in pairs)


class Collector:
    """Answers each refresh with the next of `answers` (an Inventory, or an exception to raise)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, config):
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_failed_refresh_keeps_the_previous_inventory_and_is_counted():
    first, second = inventory_of(("10.0.0.1", "i-1")), inventory_of(("10.0.0.2", "i-2"))
    collect = Collector(first, RuntimeError("Throttling"), second)
    refresher = InventoryRefresher(LookupConfig(AWS, (REGION,), refresh_seconds=3600), collect)
    try:
        assert refresher.current(wait=10) is first
        assert refresher.refresh() is False
        assert refresher.current() is first, "kept after the failure"
        assert refresher.refresh() is True
        assert refresher.current() is second
        tally = refresher.take_tally()
        assert (tally.refreshes, tally.failures) == (2, 1)
        assert collect.calls == 3
    finally:
        refresher.close()


def test_refreshes_run_in_the_background_on_schedule():
    collect = Collector(inventory_of(("10.0.0.1", "i-1")))
    config = LookupConfig(AWS, (REGION,), refresh_seconds=0.5)
    refresher = InventoryRefresher(config, collect)
    try:
        time.sleep(2.2)
        assert 3 <= collect.calls <= 6, collect.calls
    finally:
        refresher.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lookup_regions=eu-west-1"], "--entity_lookups is not"),
        (["--entity_lookups", "--lookup_role_arns=reader"], "--lookup_role_arns"),
        (["--entity_lookups", "--lookup_refresh_seconds=1"], "--lookup_refresh_seconds"),
    ],
)
def test_bad_lookup_options_name_the_option(args, message):
    with pytest.raises(ValueError, match=message):
        lookup_config_from_options(PipelineOptions(args), AWS)


def test_lookups_are_off_by_default_and_default_to_the_pipeline_region():
    assert lookup_config_from_options(PipelineOptions([]), AWS) is None
    config = lookup_config_from_options(PipelineOptions(["--entity_lookups", "--lookup_tags=Team, Env"]), AWS)
    assert config.regions == (REGION,) and config.tag_keys == ("Team", "Env")


def web_in(vpc: str, index: int, address: str = "10.0.1.10") -> Entity:
    return Entity(
        entity=f"ec2:i-{index}",
        aws_type="EC2",
        name=f"web-{index}",
        vpc_id=vpc,
        account_id="111122223333",
        interface_id=f"eni-{index}",
        addresses=(address,),
    )


def as_message(encoded: bytes) -> dict:
    return json.loads(encode_message({"version": "1.1"}, encoded))


def test_encoded_fields_are_the_fields_a_message_would_get():
    enricher = Enricher(Inventory([web_in("vpc-a", 1), web_in("vpc-a", 2, "10.0.1.11")]), ("Team",))
    record = {"src_addr": "10.0.1.10", "dst_addr": "10.0.1.11", "interface_id": "eni-1"}
    expected = {"version": "1.1"} | enricher.fields(record, ("src_addr", "dst_addr"), interface_id="eni-1")
    assert expected["_src_addr_entity"] == "ec2:i-1" and expected["_dst_addr_entity_name"] == "web-2"
    for _ in range(2):  # worked out, then remembered
        assert as_message(enricher.encoded(record, ("src_addr", "dst_addr"))) == expected
    assert enricher.enriched == 2 + 4


def test_an_address_in_two_vpcs_is_answered_per_record_scope_even_when_remembered():
    enricher = Enricher(Inventory([web_in("vpc-a", 1), web_in("vpc-b", 2)]))
    seen_from = {"eni-1": "ec2:i-1", "eni-2": "ec2:i-2"}
    for _ in range(3):
        for interface, entity in seen_from.items():
            record = {"dst_addr": "10.0.1.10", "interface_id": interface}
            message = as_message(enricher.encoded(record, ("dst_addr",)))
            assert message["_dst_addr_entity"] == entity and "_dst_addr_entity_ambiguous" not in message
    unscoped = as_message(enricher.encoded({"dst_addr": "10.0.1.10"}, ("dst_addr",)))
    assert unscoped["_dst_addr_entity_ambiguous"] == "true"


def test_addresses_outside_the_inventory_get_nothing_and_the_memo_stays_bounded():
    enricher = Enricher(Inventory([web_in("vpc-a", 1)]), max_memo=50)
    for index in range(200):
        assert enricher.encoded({"src_addr": f"52.0.0.{index}"}, ("src_addr",)) == b""
    assert len(enricher.memo) == 50
    assert Enricher(None).encoded({"src_addr": "10.0.1.10"}, ("src_addr",)) == b""
    assert enricher.encoded({"src_addr": "10.0.1.10"}, ("src_addr",)) != b"", "still answered past the bound"


def two_vpcs_with_the_same_address(ec2) -> list[dict]:
    """An instance at 10.0.1.10 in each of two VPCs (same CIDR), and a database host in the first."""
    instances = []
    for team in ("payments", "search"):
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        for name, address in ((f"{team}-web", "10.0.1.10"), (f"{team}-db", "10.0.1.20")):
            (instance,) = ec2.run_instances(
                ImageId="ami-12c6146b",
                MinCount=1,
                MaxCount=1,
                SubnetId=subnet,
                PrivateIpAddress=address,
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": "Name", "Value": name}, {"Key": "Team", "Value": team}],
                    }
                ],
            )["Instances"]
            instances.append(instance | {"Name": name, "Team": team, "Vpc": vpc})
    return instances


@pytest.mark.slow
def test_flow_logs_are_enriched_within_their_own_vpc(moto, subprocess_env, tmp_path):
    ec2 = aws_client("ec2", moto)
    instances = two_vpcs_with_the_same_address(ec2)
    web = {i["Team"]: i for i in instances if i["Name"].endswith("-web")}
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=1)
    lines = []
    for instance in web.values():
        eni = instance["NetworkInterfaces"][0]["NetworkInterfaceId"]
        lines.append(
            f"2 123456789012 {eni} 10.0.1.10 10.0.1.20 443 50000 6 10 840 1700000000 1700000060 ACCEPT OK"
        )
        lines.append(f"2 123456789012 {eni} 10.0.1.10 8.8.8.8 443 53 17 1 80 1700000000 1700000060 ACCEPT OK")
    deliver_through_cloudwatch(logs, LOG_GROUP, lines)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = pipeline_args(moto, receiver.port, tmp_path / "dl", "--stop_at_latest", "--gelf_protocol=tcp")
        result = run_cli(
            "flowlogs",
            [*args, "--entity_lookups", "--lookup_tags=Team", "--lookup_refresh_seconds=5"],
            subprocess_env,
        )
        messages = receiver.wait_for(len(lines))
    finally:
        receiver.stop()

    assert result.returncode == 0, result.stderr[-3000:]
    assert len(messages) == 4
    for message in messages:
        team = next(
            t
            for t, i in web.items()
            if i["NetworkInterfaces"][0]["NetworkInterfaceId"] == message["_interface_id"]
        )
        source = web[team]
        assert message["_src_addr_entity"] == f"ec2:{source['InstanceId']}"
        assert message["_src_addr_entity_aws_type"] == "EC2"
        assert message["_src_addr_entity_description"] == f"{team}-web"
        assert message["_src_addr_entity_vpc_id"] == source["Vpc"]
        assert message["_src_addr_entity_tag_Team"] == team
        assert "_src_addr_entity_ambiguous" not in message, "resolved within the record's VPC"
        if message["_dst_addr"] == "10.0.1.20":
            assert message["_dst_addr_entity_description"] == f"{team}-db"
        else:
            assert not any(key.startswith("_dst_addr_entity") for key in message), "a public IP outside"
    assert "entities/addresses_enriched=6" in result.stderr


@pytest.mark.slow
def test_cloudtrail_source_addresses_are_enriched(moto, subprocess_env, tmp_path):
    from pipelines.cloudtrail_samples import (
        cloudtrail_file,
        cloudtrail_notification,
        cloudtrail_records,
        create_notification_queue,
        put_cloudtrail_files,
    )
    from tests.test_cloudtrail_pipeline import BUCKET, START, cli_args, day_of
    from tests.test_cloudtrail_pipeline import run_cli as run_cloudtrail

    ec2, s3, sqs = aws_client("ec2", moto), aws_client("s3", moto), aws_client("sqs", moto)
    databases = [i for i in two_vpcs_with_the_same_address(ec2) if i["Name"].endswith("-db")]
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    (bastion,) = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        PrivateIpAddress="10.9.1.5",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "bastion"}]}],
    )["Instances"]
    records = list(cloudtrail_records(4, seed=2, start_time=START))
    records[0]["sourceIPAddress"] = "10.9.1.5"  # held by one instance only: a sure answer
    records[1]["sourceIPAddress"] = "10.0.1.20"  # held in two VPCs, and CloudTrail names no VPC
    records[2]["sourceIPAddress"] = "ec2.amazonaws.com"
    records[3]["sourceIPAddress"] = "203.0.113.9"
    key = f"AWSLogs/123456789012/CloudTrail/us-east-1/{day_of(START, sep='/')}/enriched.json.gz"
    put_cloudtrail_files(s3, BUCKET, [(key, cloudtrail_file(records))])
    queue_url, _ = create_notification_queue(sqs, "cloudtrail")
    sqs.send_message(QueueUrl=queue_url, MessageBody=cloudtrail_notification(BUCKET, [key]))
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = cli_args(queue_url, moto, receiver.port, tmp_path / "dl") + [
            "--stop_when_idle=2",
            "--entity_lookups",
        ]
        result = run_cloudtrail(args, subprocess_env)
        messages = {m["_event_id"]: m for m in receiver.wait_for(4)}
    finally:
        receiver.stop()

    assert result.returncode == 0, result.stderr[-3000:]
    sure = messages[records[0]["eventID"]]
    assert sure["_source_address_entity"] == f"ec2:{bastion['InstanceId']}"
    assert sure["_source_address_entity_aws_type"] == "EC2"
    assert sure["_source_address_entity_description"] == "bastion"
    assert "_source_address_entity_ambiguous" not in sure
    either = messages[records[1]["eventID"]]
    assert either["_source_address_entity"] in {f"ec2:{db['InstanceId']}" for db in databases}
    assert either["_source_address_entity_ambiguous"] == "true", "never mis-labelled silently"
    for record in records[2:]:
        assert not any(key.startswith("_source_address_entity") for key in messages[record["eventID"]])


def flow_line(interface: str, source: str, destination: str) -> str:
    return (
        f"2 {ACCOUNT} {interface} {source} {destination} 443 50000 6 10 840 1700000000 1700000060 ACCEPT OK"
    )


@pytest.mark.slow
def test_every_address_of_twelve_hundred_instances_in_two_regions_is_enriched(
    moto, subprocess_env, tmp_path, capsys
):
    """One flow log record from every address of tests/estate.py's 1,200 instances and 120 Lambda
    interfaces, each seen from its own interface: each is resolved to its holder in its own VPC."""
    estate = large_estate(moto)
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=2)
    lines = [flow_line(interface, address, "8.8.8.8") for interface, _, address in estate.addresses]
    deliver_through_cloudwatch(logs, LOG_GROUP, lines)
    receiver = NodeReceiver(tmp_path, "tcp")
    try:
        args = pipeline_args(moto, receiver.port, tmp_path / "dl", "--stop_at_latest", "--gelf_protocol=tcp")
        started = time.monotonic()
        lookups = ["--entity_lookups", f"--lookup_regions={REGION},{OTHER_REGION}"]
        result = run_cli("flowlogs", [*args, *lookups], subprocess_env)
        seconds = time.monotonic() - started
        messages = receiver.wait_for(len(lines))
    finally:
        receiver.stop()

    assert result.returncode == 0, result.stderr[-3000:]
    by_record = {(m["_interface_id"], m["_src_addr"]): m for m in messages}
    assert len(messages) == len(by_record) == len(lines) == 1920
    ambiguous = 0
    for interface, vpc, address in estate.addresses:
        message = by_record[(interface, address)]
        sharing = estate.sharing(vpc, address)
        assert message["_src_addr_entity"] in {estate.owners[i] for i in sharing}, (address, message)
        assert message["_src_addr_entity_vpc_id"] == vpc, "resolved within the record's own VPC"
        assert message["_src_addr_entity_account_id"] == ACCOUNT
        if estate.owners[interface].startswith("ec2:"):
            assert message["_src_addr_entity_aws_type"] == "EC2"
        assert ("_src_addr_entity_ambiguous" in message) == (len(sharing) > 1)
        ambiguous += len(sharing) > 1
        assert not any(key.startswith("_dst_addr_entity") for key in message), "8.8.8.8 is not ours"
    assert "entities/addresses_enriched=1920" in result.stderr
    with capsys.disabled():
        print(
            f"\n  {len(lines)} records enriched from {len(estate.owners)} interfaces in two regions "
            f"({len(estate.in_both_vpcs())} addresses in both VPCs, {ambiguous} drawn twice within a VPC "
            f"by moto), pipeline {seconds:.1f} s"
        )


class OutputLines:
    """A process's output lines, read as they come."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.1)
        return False


class DestinationProbe:
    """Sends a record from the instance `web` (named "web") to 10.0.1.99 through CloudWatch Logs, and
    reads what its message says 10.0.1.99 is."""

    def __init__(self, logs, receiver: NodeReceiver, web: dict):
        self.logs = logs
        self.receiver = receiver
        self.interface = web["NetworkInterfaces"][0]["NetworkInterfaceId"]
        self.sent = 0

    def name(self, timeout: float = 30) -> str | None:
        self.sent += 1
        line = flow_line(self.interface, "10.0.1.10", "10.0.1.99")
        deliver_through_cloudwatch(self.logs, LOG_GROUP, [line], log_stream=f"probe-{self.sent}")
        messages = self.receiver.wait_for(self.sent, timeout=timeout)
        assert len(messages) == self.sent, "the pipeline goes on"
        message = messages[-1]
        assert message["_src_addr_entity_name"] == "web"
        return message.get("_dst_addr_entity_name")

    def until(self, expected: str, timeout: float) -> float:
        """Seconds until 10.0.1.99 is named `expected`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.name() == expected:
                return time.monotonic() - started
            time.sleep(0.5)
        pytest.fail(f"10.0.1.99 was not named {expected!r} within {timeout} s")


@pytest.mark.slow
def test_a_streaming_pipeline_picks_up_new_entities_and_rides_out_failed_refreshes(
    moto, subprocess_env, tmp_path, capsys
):
    """Streaming, refreshing every 5 s, with the Describe calls going through a proxy that can make
    them fail: an instance created while the pipeline runs is named after the next refresh; while the
    refreshes fail, records are still enriched from the last inventory and keep flowing; once AWS
    answers again, changes show."""
    ec2 = aws_client("ec2", moto)
    _, subnet = network(ec2)
    (web,) = run(ec2, subnet, "10.0.1.10", "web")
    kinesis, logs = aws_client("kinesis", moto), aws_client("logs", moto)
    create_flow_log_stream(kinesis, logs, STREAM, LOG_GROUP, shards=1)
    receiver = NodeReceiver(tmp_path, "tcp")
    probe = DestinationProbe(logs, receiver, web)

    with KinesisFaultProxy(moto, FaultPolicy()) as proxy:
        args = pipeline_args(proxy.url, receiver.port, tmp_path / "dl", "--gelf_protocol=tcp")
        lookups = ["--entity_lookups", "--lookup_refresh_seconds=5"]
        proc = start_cli("flowlogs", [*args, *lookups], subprocess_env)
        started = time.monotonic()
        output = OutputLines(proc.stdout)
        try:
            assert probe.name(timeout=90) is None, "10.0.1.99 is nobody yet"

            (late,) = run(ec2, subnet, "10.0.1.99", "late")
            picked_up = probe.until("late", timeout=30)

            proxy.policy.fail_describe = True
            ec2.create_tags(Resources=[late["InstanceId"]], Tags=[{"Key": "Name", "Value": "renamed"}])
            assert output.wait_for("Entity inventory refresh failed", timeout=60), "".join(output.lines)
            during_failures = [probe.name() for _ in range(3)]
            assert during_failures == ["late"] * 3, "the last inventory is kept"
            failed_calls = proxy.injected["RequestLimitExceeded"]

            proxy.policy.fail_describe = False
            recovered = probe.until("renamed", timeout=60)
            answered = proxy.describe_calls - proxy.injected["RequestLimitExceeded"]
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                receiver.stop()
    assert proc.returncode == 0, "".join(output.lines[-50:])
    log = "".join(output.lines)
    assert "keeping the previous one" in log and "RequestLimitExceeded" in log
    # One refresh (7 Describe calls) per process every 5 s ± 10 %, however many bundles ran.
    refreshes = answered / (len(REQUIRED_PERMISSIONS) + 1)  # DescribeLoadBalancers: v2 and classic
    assert refreshes <= elapsed / 4.5 + 1, (answered, elapsed)
    with capsys.disabled():
        print(
            f"\n  new instance named {picked_up:.1f} s after it was created; {failed_calls} Describe calls "
            f"refused, records still enriched; change seen {recovered:.1f} s after AWS answered again; "
            f"{probe.sent} records, {refreshes:.0f} refreshes answered in {elapsed:.0f} s"
        )
