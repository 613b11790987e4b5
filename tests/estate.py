"""AWS estates built in moto for the entity-lookup tests: the helpers, and a large estate of 1,200
instances and 120 other interfaces in two regions (more than a page of every Describe call)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from tests.conftest import REGION, aws_client

OTHER_REGION = "eu-west-1"
AMI = "ami-12c6146b"
LAMBDA_UUID = "4a1b2c3d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


def network(ec2, subnet_cidr: str = "10.0.0.0/16", public: bool = False) -> tuple[str, str]:
    """A VPC 10.0.0.0/16 and one subnet in zone a."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    zone = f"{ec2.meta.region_name}a"
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=subnet_cidr, AvailabilityZone=zone)["Subnet"]
    if public:
        ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True})
    return vpc, subnet["SubnetId"]


def run(
    ec2, subnet: str, ip: str | None = None, name: str | None = None, count: int = 1, **extra
) -> list[dict]:
    kwargs = {"ImageId": AMI, "MinCount": count, "MaxCount": count, "SubnetId": subnet, **extra}
    if ip:
        kwargs["PrivateIpAddress"] = ip
    if name:
        kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}]
    return ec2.run_instances(**kwargs)["Instances"]


def fake_eni(ec2, subnet: str, description: str, ip: str, groups: list[str] | None = None) -> str:
    """The interface AWS would have made for a load balancer or database (moto makes none)."""
    kwargs = {"SubnetId": subnet, "Description": description, "PrivateIpAddress": ip}
    if groups:
        kwargs["Groups"] = groups
    return ec2.create_network_interface(**kwargs)["NetworkInterface"]["NetworkInterfaceId"]


@dataclass
class LargeEstate:
    """Every address created, with what it should resolve to."""

    addresses: list[tuple[str, str, str]] = field(default_factory=list)  # (interface, vpc, address)
    owners: dict[str, str] = field(default_factory=dict)  # interface -> the entity it resolves to
    holders: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    seconds: float = 0.0

    def sharing(self, vpc: str, address: str) -> set[str]:
        """The interfaces holding `address` in `vpc`: moto draws addresses at random and may hand one
        out twice in a VPC, and only then is an answer within the VPC ambiguous."""
        return self.holders[(vpc, address)]

    def in_both_vpcs(self) -> list[str]:
        """Addresses held in both regions' VPCs (both use 10.0.0.0/16)."""
        vpcs_of: dict[str, set[str]] = defaultdict(set)
        for _, vpc, address in self.addresses:
            vpcs_of[address].add(vpc)
        return [address for address, vpcs in vpcs_of.items() if len(vpcs) > 1]


def large_estate(endpoint: str) -> LargeEstate:
    """600 instances (RunInstances in batches of 10) and 60 Lambda ENIs in each of two regions, the
    first region's instances with public addresses too: 1,920 addresses of 1,320 interfaces."""
    started = time.perf_counter()
    estate = LargeEstate()
    for region, public in ((REGION, True), (OTHER_REGION, False)):
        ec2 = aws_client("ec2", endpoint, region)
        vpc, subnet = network(ec2, public=public)
        for _ in range(60):  # moto pages DescribeInstances by reservation: 60 of them
            run(ec2, subnet, count=10)
        for n in range(60):
            fake_eni(ec2, subnet, f"AWS Lambda VPC ENI-fn-{n}-{LAMBDA_UUID}", f"10.0.255.{n + 1}")
        for page in ec2.get_paginator("describe_network_interfaces").paginate():
            for item in page["NetworkInterfaces"]:
                interface = item["NetworkInterfaceId"]
                instance_id = (item.get("Attachment") or {}).get("InstanceId")
                function = (
                    item["Description"].removeprefix("AWS Lambda VPC ENI-").removesuffix(f"-{LAMBDA_UUID}")
                )
                estate.owners[interface] = f"ec2:{instance_id}" if instance_id else f"lambda:{function}"
                for address in (item["PrivateIpAddress"], (item.get("Association") or {}).get("PublicIp")):
                    if address:
                        estate.holders[(vpc, address)].add(interface)
                        estate.addresses.append((interface, vpc, address))
    estate.seconds = time.perf_counter() - started
    return estate
