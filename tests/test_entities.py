"""Entity inventory: ENI decoding, lookups that survive overlapping private IPs, paginated collection
against moto (with the ENIs moto does not create for ELB/RDS made by hand), denied APIs."""

from __future__ import annotations

import logging
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field, replace

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from tests.conftest import REGION, aws_client
from tests.estate import LAMBDA_UUID, OTHER_REGION, fake_eni, large_estate, network, run
from tests.faultproxy import FaultPolicy, KinesisFaultProxy
from transforms.aws import AwsConfig
from transforms.entities import (
    REQUIRED_PERMISSIONS,
    DbInstance,
    Entity,
    Inventory,
    Lookup,
    LookupNames,
    Named,
    clear_clients,
    collect_inventory,
    collect_region,
    entities_of_instance,
    entity_fields,
    entity_of_interface,
    iam_policy,
)

ACCOUNT = "123456789012"  # moto's default account
OTHER_ACCOUNT = "210987654321"


def aws_config(endpoint: str) -> AwsConfig:
    return AwsConfig(
        region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    )


@dataclass(frozen=True)
class CountingAws(AwsConfig):
    """Counts the API calls of every client opened from its sessions (as `<iam prefix>:<Operation>`),
    also through the `dataclasses.replace` copies made for other accounts."""

    calls: Counter = field(default_factory=Counter, compare=False, repr=False)
    token: object = field(default_factory=object, repr=False)  # its own clients, never cached ones

    def session(self):
        session = super().session()

        def count(model, **_):
            self.calls[f"{model.service_model.signing_name}:{model.name}"] += 1

        session.events.register("before-call", count)
        return session


@dataclass(frozen=True)
class StubAws(AwsConfig):
    """Hands out prepared (stubbed) clients instead of opening real ones."""

    clients: dict = field(default_factory=dict, compare=False, repr=False)
    token: object = field(default_factory=object, repr=False)

    def session(self):
        clients = self.clients

        class Session:
            def client(self, service: str, **_):
                return clients[service]

        return Session()


@pytest.fixture(autouse=True)
def fresh_clients():
    """Clients are kept across collections (per account, region, service): not across tests."""
    clear_clients()
    yield
    clear_clients()


# --- AWS-shaped items -----------------------------------------------------------------------------


def eni(
    eni_id: str = "eni-0a1b2c3d4e5f60718",
    ip: str = "10.0.1.50",
    description: str = "",
    interface_type: str = "interface",
    requester: str | None = None,
    vpc: str = "vpc-0aaa",
    subnet: str = "subnet-0aaa",
    zone: str = "us-east-1a",
    owner: str = ACCOUNT,
    **extra,
) -> dict:
    """A DescribeNetworkInterfaces item as AWS returns it."""
    item = {
        "NetworkInterfaceId": eni_id,
        "Description": description,
        "InterfaceType": interface_type,
        "VpcId": vpc,
        "SubnetId": subnet,
        "AvailabilityZone": zone,
        "OwnerId": owner,
        "PrivateIpAddress": ip,
        "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": ip}],
        "Groups": [{"GroupId": "sg-0db", "GroupName": "db"}],
        "RequesterManaged": requester is not None,
        "Status": "in-use",
        "TagSet": [],
    }
    if requester is not None:
        item["RequesterId"] = requester
    item.update(extra)
    return item


@pytest.mark.parametrize(
    ("item", "entity", "aws_type", "name"),
    [
        (
            eni(Attachment={"InstanceId": "i-0123456789abcdef0", "DeviceIndex": 1}),
            "ec2:i-0123456789abcdef0",
            "EC2",
            None,
        ),
        (eni(description="ELB my-classic", requester="amazon-elb"), "elb:my-classic", "ELB", "my-classic"),
        (
            eni(description="ELB app/my-alb/50dc6c495c0c9188", requester="amazon-elb"),
            "elb:my-alb",
            "ELB",
            "my-alb",
        ),
        (
            eni(
                description="ELB net/my-nlb/8a3c1f2e4d5b6a79",
                interface_type="network_load_balancer",
                requester="amazon-elb",
            ),
            "elb:my-nlb",
            "ELB",
            "my-nlb",
        ),
        (
            eni(description="ELB gwy/my-gwlb/1f2e3d4c5b6a7980", interface_type="gateway_load_balancer"),
            "elb:my-gwlb",
            "ELB",
            "my-gwlb",
        ),
        # Requester alone (the plugin's rule): an ELB, but which one is not written down.
        (eni(description="something else", requester="amazon-elb"), "eni:eni-0a1b2c3d4e5f60718", "ELB", None),
        (
            eni(description="RDSNetworkInterface", requester="amazon-rds"),
            "eni:eni-0a1b2c3d4e5f60718",
            "RDS",
            None,
        ),
        (
            eni(Association={"IpOwnerId": "amazon-rds", "PublicIp": "3.120.1.2"}),
            "eni:eni-0a1b2c3d4e5f60718",
            "RDS",
            None,
        ),
        (
            eni(description=f"AWS Lambda VPC ENI-orders-api-handler-{LAMBDA_UUID}", interface_type="lambda"),
            "lambda:orders-api-handler",
            "Lambda",
            "orders-api-handler",
        ),
        (
            eni(description="Interface for NAT Gateway nat-0f1e2d3c4b5a69788", interface_type="nat_gateway"),
            "nat:nat-0f1e2d3c4b5a69788",
            "NAT",
            None,
        ),
        (
            eni(description="VPC Endpoint Interface vpce-0a9b8c7d6e5f40312", interface_type="vpc_endpoint"),
            "vpce:vpce-0a9b8c7d6e5f40312",
            "VPCEndpoint",
            None,
        ),
        (
            eni(description="EFS mount target for fs-0c1d2e3f (fsmt-0a1b2c3d)"),
            "efs:fs-0c1d2e3f",
            "EFS",
            None,
        ),
        (
            eni(
                description="Network Interface for Transit Gateway Attachment tgw-attach-0a1b2c3d4e5f",
                interface_type="transit_gateway",
            ),
            "tgw:tgw-attach-0a1b2c3d4e5f",
            "TransitGateway",
            None,
        ),
        # The interface type alone names the kind when the description does not.
        (eni(interface_type="nat_gateway"), "eni:eni-0a1b2c3d4e5f60718", "NAT", None),
        (
            eni(interface_type="lambda", description="AWS Lambda VPC ENI"),
            "eni:eni-0a1b2c3d4e5f60718",
            "Lambda",
            None,
        ),
        (
            eni(description="my own", TagSet=[{"Key": "Name", "Value": "spare"}]),
            "eni:eni-0a1b2c3d4e5f60718",
            "ENI",
            "spare",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and ":" in value else None,
)
def test_interface_owner_is_decoded(item, entity, aws_type, name):
    decoded = entity_of_interface(item, REGION, None)
    assert (decoded.entity, decoded.aws_type, decoded.name) == (entity, aws_type, name)
    assert decoded.interface_id == item["NetworkInterfaceId"]
    assert (decoded.vpc_id, decoded.subnet_id, decoded.account_id, decoded.region) == (
        "vpc-0aaa",
        "subnet-0aaa",
        ACCOUNT,
        REGION,
    )
    assert item["PrivateIpAddress"] in decoded.addresses


def test_instance_attachment_wins_unless_aws_manages_the_interface():
    attached = {"InstanceId": "i-0123456789abcdef0"}
    # A user's interface described like a load balancer's, attached to an instance: the instance.
    assert (
        entity_of_interface(eni(description="ELB fake", Attachment=attached), REGION, None).aws_type == "EC2"
    )
    managed = eni(description="ELB app/my-alb/50dc6c495c0c9188", requester="amazon-elb", Attachment=attached)
    assert entity_of_interface(managed, REGION, None).entity == "elb:my-alb"


def test_description_is_the_eni_description_and_account_falls_back():
    item = eni(description="ELB app/my-alb/50dc6c495c0c9188", owner="")
    decoded = entity_of_interface(item, REGION, OTHER_ACCOUNT)
    assert decoded.description == "ELB app/my-alb/50dc6c495c0c9188"
    assert decoded.account_id == OTHER_ACCOUNT


def test_addresses_of_an_interface_secondary_public_and_ipv6():
    item = eni(
        ip="10.0.1.50",
        PrivateIpAddresses=[
            {"Primary": True, "PrivateIpAddress": "10.0.1.50", "Association": {"PublicIp": "3.5.6.7"}},
            {"Primary": False, "PrivateIpAddress": "10.0.1.51"},
        ],
        Association={"PublicIp": "3.5.6.7", "IpOwnerId": "amazon"},
        Ipv6Addresses=[{"Ipv6Address": "2a05:d018:0:0::0abc"}],
    )
    assert entity_of_interface(item, REGION, None).addresses == (
        "10.0.1.50",
        "3.5.6.7",
        "10.0.1.51",
        "2a05:d018::abc",
    )


def test_proper_names_from_the_load_balancer_nat_and_endpoint_apis():
    names = LookupNames(
        owners={
            "elb:application/my-alb": Named("my-alb", "internal-my-alb-1234.us-east-1.elb.amazonaws.com"),
            "elb:classic/my-alb": Named("my-alb", "classic.us-east-1.elb.amazonaws.com"),
            "nat:nat-0f1e2d3c4b5a69788": Named("egress-a", None, (("Name", "egress-a"), ("Team", "net"))),
            "vpce:vpce-0a9b8c7d6e5f40312": Named("com.amazonaws.us-east-1.s3"),
        }
    )
    alb = entity_of_interface(eni(description="ELB app/my-alb/50dc6c495c0c9188"), REGION, None, names)
    assert (alb.entity, alb.name, alb.description) == (
        "elb:my-alb",
        "my-alb",
        "internal-my-alb-1234.us-east-1.elb.amazonaws.com",
    )
    classic = entity_of_interface(eni(description="ELB my-alb"), REGION, None, names)
    assert classic.description == "classic.us-east-1.elb.amazonaws.com"
    nat = entity_of_interface(
        eni(description="Interface for NAT Gateway nat-0f1e2d3c4b5a69788"), REGION, None, names
    )
    assert (nat.name, nat.tags) == ("egress-a", (("Name", "egress-a"), ("Team", "net")))
    vpce = entity_of_interface(
        eni(description="VPC Endpoint Interface vpce-0a9b8c7d6e5f40312"), REGION, None, names
    )
    assert vpce.name == "com.amazonaws.us-east-1.s3"


def test_rds_interface_named_only_when_one_database_fits():
    orders = DbInstance(
        "orders-db",
        "vpc-0aaa",
        frozenset({"subnet-0aaa", "subnet-0bbb"}),
        frozenset({"us-east-1a"}),
        frozenset({"sg-0db"}),
        "orders-db.abc.us-east-1.rds.amazonaws.com",
        (("Team", "orders"),),
    )
    elsewhere = DbInstance("audit-db", "vpc-0aaa", frozenset({"subnet-0aaa"}), frozenset({"us-east-1b"}))
    item = eni(description="RDSNetworkInterface", requester="amazon-rds")
    found = entity_of_interface(item, REGION, None, LookupNames(db_instances=(orders, elsewhere)))
    assert (found.entity, found.aws_type, found.name, found.description, found.tags) == (
        "rds:orders-db",
        "RDS",
        "orders-db",
        "orders-db.abc.us-east-1.rds.amazonaws.com",
        (("Team", "orders"),),
    )
    twin = DbInstance("orders-replica", "vpc-0aaa", frozenset({"subnet-0aaa"}), frozenset({"us-east-1a"}))
    unsure = entity_of_interface(item, REGION, None, LookupNames(db_instances=(orders, twin)))
    assert (unsure.entity, unsure.aws_type, unsure.name) == ("eni:eni-0a1b2c3d4e5f60718", "RDS", None)


def instance(instance_id: str = "i-0123456789abcdef0", state: str = "running", **extra) -> dict:
    item = {
        "InstanceId": instance_id,
        "State": {"Name": state},
        "VpcId": "vpc-0aaa",
        "SubnetId": "subnet-0aaa",
        "PrivateIpAddress": "10.0.1.10",
        "PublicIpAddress": "54.1.2.3",
        "Tags": [{"Key": "Name", "Value": "web-01"}, {"Key": "Team", "Value": "shop"}],
        "NetworkInterfaces": [
            {
                "NetworkInterfaceId": "eni-0primary",
                "VpcId": "vpc-0aaa",
                "SubnetId": "subnet-0aaa",
                "Attachment": {"DeviceIndex": 0},
                "PrivateIpAddress": "10.0.1.10",
                "PrivateIpAddresses": [
                    {"PrivateIpAddress": "10.0.1.10", "Association": {"PublicIp": "54.1.2.3"}},
                    {"PrivateIpAddress": "10.0.1.11"},
                ],
            },
            {
                "NetworkInterfaceId": "eni-0second",
                "VpcId": "vpc-0aaa",
                "SubnetId": "subnet-0bbb",
                "Attachment": {"DeviceIndex": 1},
                "PrivateIpAddress": "10.0.2.10",
            },
        ],
    }
    item.update(extra)
    return item


def test_instance_entities_one_per_interface_with_name_tag():
    primary, second = entities_of_instance(instance(), REGION, ACCOUNT)
    assert (primary.entity, primary.aws_type, primary.name, primary.description) == (
        "ec2:i-0123456789abcdef0",
        "EC2",
        "web-01",
        "web-01",
    )
    assert primary.addresses == ("10.0.1.10", "54.1.2.3", "10.0.1.11")
    assert (second.interface_id, second.subnet_id, second.addresses) == (
        "eni-0second",
        "subnet-0bbb",
        ("10.0.2.10",),
    )
    assert primary.tags == (("Name", "web-01"), ("Team", "shop"))
    assert entities_of_instance(instance(state="terminated"), REGION, ACCOUNT) == []
    (bare,) = entities_of_instance(instance(NetworkInterfaces=[], Tags=[]), REGION, ACCOUNT)
    assert (bare.addresses, bare.name, bare.interface_id) == (("10.0.1.10", "54.1.2.3"), None, None)


# --- GELF fields ----------------------------------------------------------------------------------


def test_entity_fields_in_the_plugin_value_style():
    web = Entity(
        "ec2:i-0123456789abcdef0",
        "EC2",
        name="web-01",
        description="web-01",
        vpc_id="vpc-0aaa",
        subnet_id="subnet-0aaa",
        account_id=ACCOUNT,
        region=REGION,
        interface_id="eni-0primary",
        tags=(("Name", "web-01"), ("aws:cloudformation:stack-name", "shop"), ("Cost Center", "42")),
    )
    assert entity_fields(
        "src_addr", Lookup(web), ("Cost Center", "aws:cloudformation:stack-name", "Absent")
    ) == {
        "src_addr_entity": "ec2:i-0123456789abcdef0",
        "src_addr_entity_description": "web-01",
        "src_addr_entity_aws_type": "EC2",
        "src_addr_entity_name": "web-01",
        "src_addr_entity_vpc_id": "vpc-0aaa",
        "src_addr_entity_account_id": ACCOUNT,
        "src_addr_entity_tag_Cost_Center": "42",
        "src_addr_entity_tag_aws_cloudformation_stack-name": "shop",
    }
    lb = Entity("elb:my-alb", "ELB", name="my-alb")
    assert entity_fields("dst_addr", Lookup(lb, ambiguous=True)) == {
        "dst_addr_entity": "elb:my-alb",
        "dst_addr_entity_aws_type": "ELB",
        "dst_addr_entity_name": "my-alb",
        "dst_addr_entity_ambiguous": "true",
    }
    # The plugin's RDS: a type and no name; empty values are left out.
    db = Entity("eni:eni-0a1b2c3d", "RDS", name="", description=None, vpc_id="")
    assert entity_fields("dst_addr", Lookup(db)) == {
        "dst_addr_entity": "eni:eni-0a1b2c3d",
        "dst_addr_entity_aws_type": "RDS",
    }
    assert entity_fields("src_addr", None, ("Name",)) == {}


# --- inventory ------------------------------------------------------------------------------------


def holder(entity: str, vpc: str, eni_id: str, account: str = ACCOUNT, *addresses: str) -> Entity:
    return Entity(
        entity,
        "EC2",
        vpc_id=vpc,
        account_id=account,
        region=REGION,
        interface_id=eni_id,
        addresses=addresses or ("10.0.1.10",),
    )


@pytest.fixture
def overlapping() -> Inventory:
    """10.0.1.10 in three VPCs of two accounts; each instance also has a unique public address."""
    return Inventory(
        [
            holder("ec2:i-b", "vpc-b", "eni-b", ACCOUNT, "10.0.1.10", "54.0.0.2"),
            holder("ec2:i-c", "vpc-c", "eni-c", OTHER_ACCOUNT, "10.0.1.10", "54.0.0.3"),
            holder("ec2:i-a", "vpc-a", "eni-a", ACCOUNT, "10.0.1.10", "54.0.0.1", "10.9.0.1"),
        ],
        built_at=1_700_000_000.0,
    )


def test_overlapping_address_resolved_by_interface_and_by_vpc(overlapping):
    assert overlapping.lookup("10.0.1.10", interface_id="eni-b") == Lookup(
        overlapping.lookup("54.0.0.2").entity
    )
    assert overlapping.lookup("10.0.1.10", interface_id="eni-c").entity.entity == "ec2:i-c"
    assert overlapping.lookup("10.0.1.10", vpc_id="vpc-a") == Lookup(overlapping.lookup("54.0.0.1").entity)
    # The interface's VPC wins over a vpc_id; an unknown interface leaves the vpc_id to decide.
    assert overlapping.lookup("10.0.1.10", vpc_id="vpc-a", interface_id="eni-c").entity.entity == "ec2:i-c"
    assert overlapping.lookup("10.0.1.10", vpc_id="vpc-a", interface_id="eni-gone").entity.entity == "ec2:i-a"
    assert overlapping.vpc_of_interface("eni-b") == "vpc-b"
    assert overlapping.vpc_of_interface("eni-gone") is None


def test_overlapping_address_without_scope_is_ambiguous_never_an_error(overlapping):
    first = overlapping.lookup("10.0.1.10")
    # Stable order: account, region, VPC, interface.
    assert first == Lookup(overlapping.lookup("54.0.0.1").entity, ambiguous=True)
    assert overlapping.lookup("10.0.1.10", account_id=OTHER_ACCOUNT) == Lookup(
        overlapping.lookup("54.0.0.3").entity, ambiguous=True
    )
    # Several in the preferred account: the first of them, still ambiguous.
    assert overlapping.lookup("10.0.1.10", account_id=ACCOUNT).entity.entity == "ec2:i-a"
    assert overlapping.lookup("10.0.1.10", account_id="999999999999").ambiguous
    # A VPC that does not hold the address (a peered VPC's): everywhere, still marked.
    assert overlapping.lookup("10.0.1.10", vpc_id="vpc-z", account_id=OTHER_ACCOUNT) == Lookup(
        overlapping.lookup("54.0.0.3").entity, ambiguous=True
    )


def test_unique_and_unknown_addresses(overlapping):
    # A unique address is sure, whatever VPC the record came from.
    assert overlapping.lookup("10.9.0.1", vpc_id="vpc-b") == Lookup(overlapping.lookup("54.0.0.1").entity)
    assert overlapping.lookup("192.0.2.1") is None
    assert overlapping.lookup("") is None
    assert overlapping.lookup("not an address", vpc_id="vpc-a") is None
    assert (overlapping.size, overlapping.entity_count, overlapping.built_at) == (5, 3, 1_700_000_000.0)


def test_same_interface_listed_twice_keeps_the_named_owner():
    bare = Entity("eni:eni-x", "ENI", vpc_id="vpc-a", interface_id="eni-x", addresses=("10.0.0.5",))
    named = Entity("lambda:f", "Lambda", vpc_id="vpc-a", interface_id="eni-x", addresses=("10.0.0.5",))
    inventory = Inventory([bare, named, bare])
    assert inventory.lookup("10.0.0.5") == Lookup(named)
    assert inventory.entity_count == 1


def test_ipv6_found_whatever_its_spelling():
    entity = Entity("ec2:i-6", "EC2", addresses=("2a05:d018::abc",))
    inventory = Inventory([entity])
    assert inventory.lookup("2a05:d018:0000:0000:0000:0000:0000:0abc") == Lookup(entity)


def test_ten_thousand_addresses_are_cheap():
    tracemalloc.start()
    started = time.perf_counter()
    entities = [
        Entity(
            f"ec2:i-{n:017x}",
            "EC2",
            name=f"web-{n}",
            description=f"web-{n}",
            vpc_id=f"vpc-{n % 7}",
            subnet_id=f"subnet-{n % 50}",
            account_id=ACCOUNT,
            region=REGION,
            interface_id=f"eni-{n:017x}",
            tags=(("Name", f"web-{n}"),),
            addresses=(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}",),
        )
        for n in range(10_000)
    ]
    inventory = Inventory(entities)
    built = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    started = time.perf_counter()
    for n in range(10_000):
        assert inventory.lookup(f"10.0.{n // 256 % 256}.{n % 256}", vpc_id="vpc-3") is not None
    looked_up = time.perf_counter() - started
    assert inventory.size == 10_000
    assert built < 2 and looked_up < 2, (built, looked_up)
    assert peak < 30 * 1024 * 1024, peak  # entities and index together


# --- IAM ------------------------------------------------------------------------------------------


def test_iam_policy_is_least_privilege():
    own = iam_policy()
    (statement,) = own["Statement"]
    assert statement["Action"] == list(REQUIRED_PERMISSIONS)
    assert statement["Resource"] == "*"
    assert all(action.split(":")[1].startswith("Describe") for action in REQUIRED_PERMISSIONS)
    roles = [f"arn:aws:iam::{OTHER_ACCOUNT}:role/reader", f"arn:aws:iam::{ACCOUNT}:role/reader"]
    (assume,) = iam_policy(roles)["Statement"]
    assert (assume["Action"], assume["Resource"]) == (["sts:AssumeRole"], sorted(roles))


# --- against moto ---------------------------------------------------------------------------------


@dataclass
class Estate:
    """What a moto test created, to compare the inventory with."""

    vpc: str = ""
    other_vpc: str = ""
    web: dict = field(default_factory=dict)
    web_eni: str = ""
    web_eip: str = ""
    other_web: dict = field(default_factory=dict)
    other_eni: str = ""
    alb_arn: str = ""
    extra_eni: str = ""


@pytest.fixture
def estate(moto) -> Estate:
    """Two regions with the same private 10.0.1.10 in each; in us-east-1 also an Elastic IP, a second
    private address, a second interface, an ALB, an NLB, a classic ELB and a database."""
    made = Estate()
    ec2 = aws_client("ec2", moto)
    made.vpc, subnet = network(ec2, "10.0.0.0/20")
    second_subnet = ec2.create_subnet(
        VpcId=made.vpc, CidrBlock="10.0.200.0/24", AvailabilityZone="us-east-1b"
    )["Subnet"]["SubnetId"]
    (made.web,) = run(ec2, subnet, "10.0.1.10", "web-01")
    made.web_eni = made.web["NetworkInterfaces"][0]["NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=made.web_eni, PrivateIpAddresses=["10.0.1.11"])
    allocation = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=allocation["AllocationId"], NetworkInterfaceId=made.web_eni)
    made.web_eip = allocation["PublicIp"]
    made.extra_eni = fake_eni(ec2, subnet, "data plane", "10.0.1.12")
    ec2.attach_network_interface(
        NetworkInterfaceId=made.extra_eni, InstanceId=made.web["InstanceId"], DeviceIndex=1
    )

    elbv2 = aws_client("elbv2", moto)
    alb = elbv2.create_load_balancer(Name="shop-alb", Subnets=[subnet, second_subnet])["LoadBalancers"][0]
    made.alb_arn = alb["LoadBalancerArn"]
    alb_id = made.alb_arn.rsplit("/", 1)[1]
    fake_eni(ec2, subnet, f"ELB app/shop-alb/{alb_id}", "10.0.1.20")
    nlb = elbv2.create_load_balancer(Name="shop-nlb", Subnets=[subnet], Type="network")["LoadBalancers"][0]
    # moto writes app/ into every ELBv2 ARN; AWS writes net/ for an NLB, and so into its ENI.
    fake_eni(ec2, subnet, f"ELB net/shop-nlb/{nlb['LoadBalancerArn'].rsplit('/', 1)[1]}", "10.0.1.21")
    aws_client("elb", moto).create_load_balancer(
        LoadBalancerName="legacy",
        Listeners=[{"Protocol": "tcp", "LoadBalancerPort": 80, "InstancePort": 80}],
        Subnets=[subnet],
    )
    fake_eni(ec2, subnet, "ELB legacy", "10.0.1.22")

    rds = aws_client("rds", moto)
    group = ec2.create_security_group(GroupName="db", Description="db", VpcId=made.vpc)["GroupId"]
    rds.create_db_subnet_group(
        DBSubnetGroupName="db", DBSubnetGroupDescription="db", SubnetIds=[subnet, second_subnet]
    )
    rds.create_db_instance(
        DBInstanceIdentifier="orders-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="admin_user",
        MasterUserPassword="password-1234",
        AllocatedStorage=20,
        DBSubnetGroupName="db",
        VpcSecurityGroupIds=[group],
        AvailabilityZone="us-east-1a",
        Tags=[{"Key": "Team", "Value": "orders"}],
    )
    fake_eni(ec2, subnet, "RDSNetworkInterface", "10.0.1.30", [group])
    fake_eni(ec2, subnet, f"AWS Lambda VPC ENI-resize-images-{LAMBDA_UUID}", "10.0.1.40")

    other = aws_client("ec2", moto, OTHER_REGION)
    made.other_vpc, other_subnet = network(other)
    (made.other_web,) = run(other, other_subnet, "10.0.1.10", "web-eu")
    made.other_eni = made.other_web["NetworkInterfaces"][0]["NetworkInterfaceId"]
    return made


def test_collect_inventory_finds_instances_load_balancers_and_databases(moto, estate):
    aws = CountingAws(region=REGION, endpoint_url=moto, access_key_id="testing", secret_access_key="testing")
    inventory = collect_inventory(aws, [REGION, OTHER_REGION])

    web = inventory.lookup("10.0.1.10", interface_id=estate.web_eni)
    assert not web.ambiguous
    assert entity_fields("src_addr", web, ["Name"]) == {
        "src_addr_entity": f"ec2:{estate.web['InstanceId']}",
        "src_addr_entity_description": "web-01",
        "src_addr_entity_aws_type": "EC2",
        "src_addr_entity_name": "web-01",
        "src_addr_entity_vpc_id": estate.vpc,
        "src_addr_entity_account_id": ACCOUNT,
        "src_addr_entity_tag_Name": "web-01",
    }
    assert web.entity.region == REGION
    for address in ("10.0.1.11", estate.web_eip):
        assert inventory.lookup(address) == Lookup(web.entity)
    # The second interface is the same instance, with its name.
    extra = inventory.lookup("10.0.1.12")
    assert (extra.entity.entity, extra.entity.name, extra.entity.interface_id) == (
        f"ec2:{estate.web['InstanceId']}",
        "web-01",
        estate.extra_eni,
    )

    eu = inventory.lookup("10.0.1.10", interface_id=estate.other_eni)
    assert (eu.entity.entity, eu.entity.name, eu.entity.region, eu.ambiguous) == (
        f"ec2:{estate.other_web['InstanceId']}",
        "web-eu",
        OTHER_REGION,
        False,
    )
    assert inventory.lookup("10.0.1.10", vpc_id=estate.other_vpc) == eu
    assert inventory.lookup("10.0.1.10").ambiguous

    alb = inventory.lookup("10.0.1.20", vpc_id=estate.vpc).entity
    assert (alb.entity, alb.aws_type, alb.name, alb.description) == (
        "elb:shop-alb",
        "ELB",
        "shop-alb",
        "shop-alb-1.us-east-1.elb.amazonaws.com",  # from DescribeLoadBalancers
    )
    nlb = inventory.lookup("10.0.1.21").entity
    assert (nlb.entity, nlb.description) == ("elb:shop-nlb", "shop-nlb-1.us-east-1.elb.amazonaws.com")
    legacy = inventory.lookup("10.0.1.22").entity
    assert (legacy.entity, legacy.description) == ("elb:legacy", "legacy.us-east-1.elb.amazonaws.com")
    db = inventory.lookup("10.0.1.30").entity
    assert (db.entity, db.aws_type, db.name, db.tags) == (
        "rds:orders-db",
        "RDS",
        "orders-db",
        (("Team", "orders"),),
    )
    assert db.description.startswith("orders-db.")
    assert inventory.lookup("10.0.1.40").entity.entity == "lambda:resize-images"

    # Exactly the permissions it asks for, and no STS call for its own account.
    assert set(aws.calls) == set(REQUIRED_PERMISSIONS)


def test_every_describe_call_is_paginated(moto):
    ec2 = aws_client("ec2", moto)
    _, subnet = network(ec2)
    launched = [run(ec2, subnet)[0]["InstanceId"] for _ in range(30)]  # 30 reservations
    elbv2 = aws_client("elbv2", moto)
    elb = aws_client("elb", moto)
    for n in range(7):
        elbv2.create_load_balancer(Name=f"alb-{n}", Subnets=[subnet])
        elb.create_load_balancer(
            LoadBalancerName=f"clb-{n}",
            Listeners=[{"Protocol": "tcp", "LoadBalancerPort": 80, "InstancePort": 80}],
            Subnets=[subnet],
        )
    aws = CountingAws(region=REGION, endpoint_url=moto, access_key_id="testing", secret_access_key="testing")
    entities = collect_region(aws, REGION, page_size=5)

    assert {e.entity for e in entities} == {f"ec2:{i}" for i in launched}
    assert aws.calls["ec2:DescribeInstances"] == 6  # 30 reservations, 5 a page
    assert aws.calls["elasticloadbalancing:DescribeLoadBalancers"] == 4  # 7 of each kind, 5 a page


def test_lookup_roles_are_assumed_through_the_pipelines_own_role(moto):
    """--aws_role_arn and --lookup_role_arns together: the pipeline's role assumes the lookup roles
    (AWS's role chaining), it is not bypassed by the base credentials."""
    ec2 = aws_client("ec2", moto)
    _, subnet = network(ec2)
    run(ec2, subnet, "10.0.1.10", "web")
    pipeline_role = f"arn:aws:iam::{ACCOUNT}:role/pipeline"
    lookup_role = f"arn:aws:iam::{ACCOUNT}:role/reader"
    with KinesisFaultProxy(moto, FaultPolicy()) as proxy:
        aws = replace(aws_config(proxy.url), role_arn=pipeline_role, external_id="ext-1")
        inventory = collect_inventory(aws, [REGION], [lookup_role])
    assert [role for role, _ in proxy.assumed] == [pipeline_role, lookup_role]
    (_, base_key), (_, chained_key) = proxy.assumed
    assert base_key == "testing"
    assert chained_key != "testing" and chained_key.startswith("ASIA"), "signed with the role's credentials"
    assert aws.assuming(lookup_role).external_id is None, "the external id is the pipeline role's"
    assert inventory.lookup("10.0.1.10").entity.name == "web", "read with the lookup role"


def test_accounts_through_roles_with_the_same_private_address(moto, monkeypatch):
    roles = [f"arn:aws:iam::{ACCOUNT}:role/reader", f"arn:aws:iam::{OTHER_ACCOUNT}:role/reader"]
    ec2 = aws_client("ec2", moto)
    _, subnet = network(ec2)
    (mine,) = run(ec2, subnet, "10.0.1.10", "mine")
    credentials = aws_client("sts", moto).assume_role(RoleArn=roles[1], RoleSessionName="setup")[
        "Credentials"
    ]
    theirs_ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    their_vpc, their_subnet = network(theirs_ec2)
    (theirs,) = run(theirs_ec2, their_subnet, "10.0.1.10", "theirs")

    assumed = Counter()
    original = AwsConfig._assumed_role_session

    def counting(self, base):
        assumed[self.role_arn] += 1
        return original(self, base)

    monkeypatch.setattr(AwsConfig, "_assumed_role_session", counting)
    inventory = collect_inventory(aws_config(moto), [REGION, OTHER_REGION], roles)
    assert collect_inventory(aws_config(moto), [REGION, OTHER_REGION], roles).size == inventory.size

    # Once per account, not per region, client or refresh: the role's credentials refresh themselves.
    assert assumed == Counter(roles)
    both = inventory.lookup("10.0.1.10")
    assert both.ambiguous and both.entity.account_id == ACCOUNT
    preferred = inventory.lookup("10.0.1.10", account_id=OTHER_ACCOUNT)
    assert (preferred.entity.entity, preferred.entity.account_id, preferred.ambiguous) == (
        f"ec2:{theirs['InstanceId']}",
        OTHER_ACCOUNT,
        True,
    )
    exact = inventory.lookup("10.0.1.10", vpc_id=their_vpc)
    assert (exact.entity.name, exact.ambiguous) == ("theirs", False)
    assert inventory.lookup(
        "10.0.1.10", interface_id=mine["NetworkInterfaces"][0]["NetworkInterfaceId"]
    ) == Lookup(both.entity)


def test_a_role_that_cannot_be_assumed_names_the_option():
    @dataclass(frozen=True)
    class Refused(AwsConfig):
        def session(self):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "AssumeRole")

    with pytest.raises(
        ValueError, match=r"--lookup_role_arns: cannot assume arn:aws:iam::1:role/r \(AccessDenied\)"
    ):
        collect_inventory(Refused(region=REGION), [REGION], ["arn:aws:iam::1:role/r"])


# --- denied and failing APIs (stubbed) ------------------------------------------------------------


def stubbed_clients(
    regions: int, deny: dict[tuple[str, str], str], fail: str | None = None
) -> tuple[dict, list[Stubber]]:
    """Clients answering `regions` collections, ENIs and databases in two pages; `deny` maps
    (service, method) to an error code, `fail` is a method that fails with InternalError."""
    clients = {
        service: boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        for service in ("ec2", "elbv2", "elb", "rds")
    }
    stubbers = {service: Stubber(client) for service, client in clients.items()}
    pages = {
        ("ec2", "describe_instances"): [{"Reservations": []}],
        ("ec2", "describe_network_interfaces"): [
            {"NetworkInterfaces": [eni("eni-0001", "10.0.1.1", "ELB app/a/1")], "NextToken": "page2"},
            {"NetworkInterfaces": [eni("eni-0002", "10.0.1.2", "RDSNetworkInterface")]},
        ],
        ("ec2", "describe_nat_gateways"): [{"NatGateways": []}],
        ("ec2", "describe_vpc_endpoints"): [{"VpcEndpoints": []}],
        ("elbv2", "describe_load_balancers"): [{"LoadBalancers": []}],
        ("elb", "describe_load_balancers"): [{"LoadBalancerDescriptions": []}],
        ("rds", "describe_db_instances"): [
            {"DBInstances": [], "Marker": "m2"},
            {"DBInstances": [{"DBInstanceIdentifier": "x", "DBSubnetGroup": {"VpcId": "vpc-0aaa"}}]},
        ],
    }
    for _ in range(regions):
        for (service, method), responses in pages.items():
            if method == fail:
                stubbers[service].add_client_error(method, "InternalError", http_status_code=500)
                break
            if (service, method) in deny:
                stubbers[service].add_client_error(method, deny[service, method], http_status_code=403)
                continue
            for response in responses:
                stubbers[service].add_response(method, response)
    for stubber in stubbers.values():
        stubber.activate()
    return clients, list(stubbers.values())


def test_a_denied_api_is_skipped_with_one_warning_per_refresh(caplog):
    denied = {
        ("ec2", "describe_instances"): "UnauthorizedOperation",
        ("elbv2", "describe_load_balancers"): "AccessDenied",
    }
    clients, stubbers = stubbed_clients(2, denied)
    aws = StubAws(region=REGION, clients=clients)
    with caplog.at_level(logging.WARNING, logger="transforms.entities"):
        inventory = collect_inventory(aws, [REGION, OTHER_REGION], page_size=5)
    for stubber in stubbers:
        stubber.assert_no_pending_responses()  # every page of both regions was fetched
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "ec2:DescribeInstances (own account in us-east-1, own account in eu-west-1)" in warnings[0]
    assert "elasticloadbalancing:DescribeLoadBalancers (own account in us-east-1, own" in warnings[1]
    # Both ENI pages were read; the one database fits the RDS interface's VPC.
    assert inventory.lookup("10.0.1.1").entity.entity == "elb:a"
    assert inventory.lookup("10.0.1.2").entity.entity == "rds:x"


def test_collect_region_alone_warns_itself(caplog):
    clients, _ = stubbed_clients(1, {("rds", "describe_db_instances"): "AccessDenied"})
    with caplog.at_level(logging.WARNING, logger="transforms.entities"):
        entities = collect_region(StubAws(region=REGION, clients=clients), REGION, page_size=5)
    assert [r.getMessage() for r in caplog.records] == [
        "Entity lookups in us-east-1: not allowed to call rds:DescribeDBInstances; skipped"
    ]
    # Without the databases the RDS interface keeps its kind, not a name.
    assert {(e.entity, e.aws_type) for e in entities} == {("elb:a", "ELB"), ("eni:eni-0002", "RDS")}


def test_other_errors_raise():
    clients, _ = stubbed_clients(1, {}, fail="describe_network_interfaces")
    with pytest.raises(ClientError, match="InternalError"):
        collect_inventory(StubAws(region=REGION, clients=clients), [REGION])
    with pytest.raises(ValueError, match="--lookup_regions"):
        collect_inventory(StubAws(region=REGION, clients=clients), [])


# --- scale ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_twelve_hundred_instances_in_two_regions_all_resolve(moto, capsys):
    """1,200 instances and 120 Lambda ENIs in two regions (tests/estate.py), read in pages of 25:
    every address resolves to its holder within its VPC."""
    estate = large_estate(moto)
    aws = CountingAws(region=REGION, endpoint_url=moto, access_key_id="testing", secret_access_key="testing")
    started = time.perf_counter()
    inventory = collect_inventory(aws, [REGION, OTHER_REGION], page_size=25)
    collected = time.perf_counter() - started
    # 60 reservations a region in pages of 25: all instances are only found by following the pages.
    # (moto answers DescribeNetworkInterfaces in one page whatever MaxResults; its paging is proven
    # against botocore's Stubber in test_a_denied_api_is_skipped_with_one_warning_per_refresh.)
    assert aws.calls["ec2:DescribeInstances"] == 2 * 3, aws.calls

    assert len(estate.owners) == 2 * 660
    collisions = 0
    for interface, vpc, address in estate.addresses:
        found = inventory.lookup(address, interface_id=interface)
        sharing = estate.sharing(vpc, address)
        assert found.entity.interface_id in sharing, (address, found)
        assert found.entity.entity == estate.owners[found.entity.interface_id]
        assert found.ambiguous == (len(sharing) > 1), (address, sharing)
        collisions += len(sharing) > 1
    overlapping = estate.in_both_vpcs()
    assert all(inventory.lookup(address).ambiguous for address in overlapping)
    with capsys.disabled():
        print(
            f"\n  moto: {len(estate.addresses)} addresses of {len(estate.owners)} interfaces created in "
            f"{estate.seconds:.1f} s, collected in {collected:.1f} s; {inventory.size} distinct addresses, "
            f"{len(overlapping)} in both VPCs, {collisions} drawn twice within a VPC by moto; "
            f"{aws.calls['ec2:DescribeInstances']} DescribeInstances and "
            f"{aws.calls['ec2:DescribeNetworkInterfaces']} DescribeNetworkInterfaces calls"
        )
