"""What an IP address is in the AWS estate: an inventory of instances, load balancers, databases and
other network interfaces, by address, for the `<field>_entity*` fields (the plugin's "lookups").

The Graylog AWS plugin made one unpaginated DescribeInstances and DescribeNetworkInterfaces call per
region, and a private IP seen in two VPCs made the whole table fail to build. Here every Describe call
is paginated, several accounts (through roles) and regions are read, and an address may belong to
several entities: a lookup resolves it within the VPC of the record's interface, and says when the
answer is a guess (`ambiguous`) instead of failing or silently picking one.

Entities follow the plugin's value style: `ec2:<instance-id>` with type `EC2` and the Name tag as the
description, `elb:<name>` with type `ELB`, type `RDS` for databases; other owners are decoded from
what AWS writes into their network interfaces (description, interface type, requester), e.g.
`lambda:<function>`, `nat:<nat-id>`, `vpce:<endpoint-id>`, `efs:<fs-id>`, and `eni:<eni-id>` when
the interface's owner cannot be named. No Beam here: `transforms.enrichment` refreshes and applies it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from botocore.config import Config
from botocore.exceptions import ClientError

from transforms.aws import USER_AGENT, AwsConfig

_LOG = logging.getLogger(__name__)

Tags = tuple[tuple[str, str], ...]

#: The IAM actions `collect_inventory` calls in every account it reads (each role needs them; without
#: roles the pipeline's own identity does). Classic ELB and ELBv2 share `DescribeLoadBalancers`.
REQUIRED_PERMISSIONS: tuple[str, ...] = (
    "ec2:DescribeInstances",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeNatGateways",
    "ec2:DescribeVpcEndpoints",
    "elasticloadbalancing:DescribeLoadBalancers",
    "rds:DescribeDBInstances",
)
#: The only action the pipeline's own identity needs when it reads through `--lookup_role_arns`.
ASSUME_ROLE_PERMISSION = "sts:AssumeRole"

#: Error codes of a call the credentials may not make: that API is skipped, the rest still counts.
DENIED_ERRORS = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})

#: Page size bounds of each paginated call (AWS rejects a size outside them).
_PAGE_LIMITS: dict[str, tuple[int, int]] = {
    "ec2": (5, 1000),
    "elbv2": (1, 400),
    "elb": (1, 400),
    "rds": (20, 100),
}
_RETRIES = {"mode": "standard", "total_max_attempts": 5}

_ELB = re.compile(r"^ELB (?:(?P<kind>app|net|gwy)/(?P<v2>[^/\s]+)/\S+|(?P<classic>[^/\s]+))$")
_ELB_KINDS = {"app": "application", "net": "network", "gwy": "gateway"}
_LAMBDA = re.compile(
    r"^AWS Lambda VPC ENI-(?P<function>.+)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
_ID_DESCRIPTIONS = (
    (re.compile(r"^Interface for NAT Gateway (?P<id>nat-[0-9a-f]+)"), "nat", "NAT"),
    (re.compile(r"^VPC Endpoint Interface (?P<id>vpce-[0-9a-f]+)"), "vpce", "VPCEndpoint"),
    (re.compile(r"^EFS mount target for (?P<id>fs-[0-9a-f]+)"), "efs", "EFS"),
    (
        re.compile(r"^Network Interface for Transit Gateway Attachment (?P<id>tgw-attach-[0-9a-f]+)"),
        "tgw",
        "TransitGateway",
    ),
)
#: Interface types of AWS-managed interfaces whose description did not name the owner.
_INTERFACE_TYPES = {
    "nat_gateway": "NAT",
    "vpc_endpoint": "VPCEndpoint",
    "gateway_load_balancer_endpoint": "VPCEndpoint",
    "transit_gateway": "TransitGateway",
}
_RDS_DESCRIPTION = "RDSNetworkInterface"
_TAG_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# --- entities -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entity:
    """One owner of addresses, as seen through one network interface (an instance with two interfaces
    is two entities with the same `entity` value): what a lookup of any of `addresses` answers."""

    entity: str  # the plugin's style: ec2:i-…, elb:<name>, rds:<db-id>, …, eni:eni-… when unknown
    aws_type: str  # EC2, ELB, RDS (the plugin's), Lambda, NAT, VPCEndpoint, EFS, TransitGateway, ENI
    name: str | None = None  # Name tag, load balancer name, DB instance id, function name, service name
    description: str | None = None  # EC2: the Name tag (as the plugin); else DNS name or ENI description
    vpc_id: str | None = None
    subnet_id: str | None = None
    account_id: str | None = None
    region: str | None = None
    interface_id: str | None = None
    tags: Tags = ()
    addresses: tuple[str, ...] = ()  # private, public (EIP or auto-assigned) and IPv6 addresses


@dataclass(frozen=True, slots=True)
class DbInstance:
    """What DescribeDBInstances told about one database: enough to tell which one an RDS ENI serves."""

    identifier: str
    vpc_id: str | None
    subnet_ids: frozenset[str] = frozenset()
    availability_zones: frozenset[str] = frozenset()  # its zone, and a Multi-AZ standby's
    security_group_ids: frozenset[str] = frozenset()
    endpoint: str | None = None
    tags: Tags = ()


@dataclass(frozen=True, slots=True)
class Named:
    """A proper name for the owner of an interface, from its own API (load balancer, NAT gateway, …)."""

    name: str | None = None
    description: str | None = None  # a DNS name or service name
    tags: Tags = ()


@dataclass(frozen=True)
class LookupNames:
    """What the ELB, RDS and VPC APIs of one account and region told, so that an ENI, which only says
    "ELB app/web/…" or "RDSNetworkInterface", gets its owner's proper name.

    `owners` is keyed by the entity value (`nat:nat-…`, `vpce:vpce-…`), load balancers by
    `elb:<kind>/<name>` (kind `classic`, `application`, `network`, `gateway`: classic and ELBv2 names
    are separate namespaces)."""

    owners: Mapping[str, Named] = field(default_factory=dict)
    db_instances: tuple[DbInstance, ...] = ()

    def db_instance_for(self, eni: dict) -> DbInstance | None:
        """The one database an RDS interface can belong to (same VPC, subnet, zone and security
        groups), or None when none or several fit: RDS does not write the instance into its ENIs."""
        vpc_id, subnet_id, zone = eni.get("VpcId"), eni.get("SubnetId"), eni.get("AvailabilityZone")
        groups = frozenset(g["GroupId"] for g in eni.get("Groups", ()) if g.get("GroupId"))
        fits = [
            db
            for db in self.db_instances
            if db.vpc_id == vpc_id
            and (not db.subnet_ids or subnet_id in db.subnet_ids)
            and (not zone or not db.availability_zones or zone in db.availability_zones)
            and (not groups or not db.security_group_ids or db.security_group_ids == groups)
        ]
        return fits[0] if len(fits) == 1 else None


NO_NAMES = LookupNames()


def _tags(items: Iterable[dict] | None) -> Tags:
    return tuple(sorted((t["Key"], t.get("Value") or "") for t in items or () if t.get("Key")))


def _tag(tags: Tags, key: str) -> str | None:
    return next((value for k, value in tags if k == key and value), None)


def _address_key(address: str) -> str:
    """The form addresses are stored and looked up in: IPv6 compressed (AWS and flow logs agree on
    IPv4's form, but an IPv6 address may be written several ways)."""
    address = address.strip()
    if ":" in address:
        try:
            return ipaddress.ip_address(address).compressed
        except ValueError:
            return address
    return address


def _interface_addresses(interface: dict) -> tuple[str, ...]:
    """Every address of one interface (DescribeNetworkInterfaces or an instance's NetworkInterfaces)."""
    found: list[str] = []
    for item in interface.get("PrivateIpAddresses") or ():
        found.append(item.get("PrivateIpAddress"))
        found.append((item.get("Association") or {}).get("PublicIp"))
    found.append(interface.get("PrivateIpAddress"))
    found.append((interface.get("Association") or {}).get("PublicIp"))
    found.extend(item.get("Ipv6Address") for item in interface.get("Ipv6Addresses") or ())
    return tuple(dict.fromkeys(_address_key(a) for a in found if a))


def _interface_base(eni: dict, region: str | None, account_id: str | None) -> dict:
    return {
        "vpc_id": eni.get("VpcId"),
        "subnet_id": eni.get("SubnetId"),
        "account_id": eni.get("OwnerId") or account_id,
        "region": region,
        "interface_id": eni.get("NetworkInterfaceId"),
        "addresses": _interface_addresses(eni),
    }


def entity_of_interface(
    eni: dict, region: str | None, account_id: str | None, names: LookupNames = NO_NAMES
) -> Entity:
    """The owner of one DescribeNetworkInterfaces item, decoded from what AWS writes into it.

    An instance attachment wins (unless AWS manages the interface); then the interface type, the
    description and the requester (or public IP owner) `amazon-elb` / `amazon-rds`, as the plugin
    did. The description alone suffices: emulators (moto) report every interface as `interface`."""
    base = _interface_base(eni, region, account_id)
    eni_id = eni.get("NetworkInterfaceId") or "unknown"
    description = (eni.get("Description") or "").strip()
    kind = eni.get("InterfaceType") or "interface"
    owners = {eni.get("RequesterId"), (eni.get("Association") or {}).get("IpOwnerId")}
    eni_tags = _tags(eni.get("TagSet"))
    instance_id = (eni.get("Attachment") or {}).get("InstanceId")
    unknown = f"eni:{eni_id}"

    def owned(entity: str, aws_type: str, name: str | None, key: str | None = None) -> Entity:
        named = names.owners.get(key or entity) or Named()
        return Entity(
            entity=entity,
            aws_type=aws_type,
            name=named.name or name,
            description=named.description or description or None,
            tags=named.tags or eni_tags,
            **base,
        )

    if instance_id and not eni.get("RequesterManaged"):
        return Entity(f"ec2:{instance_id}", "EC2", tags=eni_tags, **base)
    is_elb = kind in ("network_load_balancer", "gateway_load_balancer") or description.startswith("ELB ")
    if is_elb or "amazon-elb" in owners:
        match = _ELB.match(description)
        if match is None:
            return owned(unknown, "ELB", None)
        name = match["v2"] or match["classic"]
        lb_kind = _ELB_KINDS[match["kind"]] if match["kind"] else "classic"
        return owned(f"elb:{name}", "ELB", name, key=f"elb:{lb_kind}/{name}")
    if description == _RDS_DESCRIPTION or "amazon-rds" in owners:
        db = names.db_instance_for(eni)
        if db is None:
            return owned(unknown, "RDS", None)
        return Entity(
            f"rds:{db.identifier}", "RDS", db.identifier, db.endpoint or description, tags=db.tags, **base
        )
    if kind == "lambda" or description.startswith("AWS Lambda VPC ENI"):
        # Lambda shares one interface among the functions with the same subnets and security groups;
        # its description names the function that created it.
        match = _LAMBDA.match(description)
        if match is None:
            return owned(unknown, "Lambda", None)
        return owned(f"lambda:{match['function']}", "Lambda", match["function"])
    for pattern, prefix, aws_type in _ID_DESCRIPTIONS:
        match = pattern.match(description)
        if match:
            return owned(f"{prefix}:{match['id']}", aws_type, None)
    if kind in _INTERFACE_TYPES:
        return owned(unknown, _INTERFACE_TYPES[kind], None)
    if instance_id:
        return Entity(f"ec2:{instance_id}", "EC2", tags=eni_tags, **base)
    return owned(unknown, "ENI", _tag(eni_tags, "Name"))


def entities_of_instance(instance: dict, region: str | None, account_id: str | None) -> list[Entity]:
    """One entity per network interface of a DescribeInstances item: `ec2:<id>`, its Name tag as
    name and description (the plugin's), its tags; a terminated instance has none."""
    if (instance.get("State") or {}).get("Name") == "terminated":
        return []
    instance_id = instance["InstanceId"]
    tags = _tags(instance.get("Tags"))
    name = _tag(tags, "Name")
    common = {"entity": f"ec2:{instance_id}", "aws_type": "EC2", "name": name, "description": name}
    common.update(account_id=account_id, region=region, tags=tags)
    interfaces = instance.get("NetworkInterfaces") or ()
    if not interfaces:
        found = (
            instance.get("PrivateIpAddress"),
            instance.get("PublicIpAddress"),
            instance.get("Ipv6Address"),
        )
        addresses = tuple(dict.fromkeys(_address_key(a) for a in found if a))
        return [
            Entity(
                vpc_id=instance.get("VpcId"),
                subnet_id=instance.get("SubnetId"),
                addresses=addresses,
                **common,
            )
        ]
    entities = []
    for interface in interfaces:
        addresses = _interface_addresses(interface)
        public = instance.get("PublicIpAddress")
        if public and (interface.get("Attachment") or {}).get("DeviceIndex") == 0:
            addresses = tuple(dict.fromkeys((*addresses, _address_key(public))))
        entities.append(
            Entity(
                vpc_id=interface.get("VpcId") or instance.get("VpcId"),
                subnet_id=interface.get("SubnetId") or instance.get("SubnetId"),
                interface_id=interface.get("NetworkInterfaceId"),
                addresses=addresses,
                **common,
            )
        )
    return entities


# --- inventory ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup:
    """The entity an address resolved to; `ambiguous` when several held it and this one was chosen
    by account preference or by order, not by the record's VPC."""

    entity: Entity
    ambiguous: bool = False


def _order(entity: Entity) -> tuple[str, ...]:
    return (
        entity.account_id or "",
        entity.region or "",
        entity.vpc_id or "",
        entity.interface_id or "",
        entity.entity,
    )


class Inventory:
    """Entities by address, swapped in whole on each refresh; lookups never raise.

    Lean on purpose: one dict of address → tuple of the entities holding it (almost always one),
    and one of interface id → VPC, sharing the entity objects."""

    __slots__ = ("_by_address", "_sure", "_vpc_of_interface", "built_at", "entity_count")

    def __init__(self, entities: Iterable[Entity], built_at: float | None = None):
        unique: dict[object, Entity] = {}
        for entity in entities:
            # The same interface may be listed twice (a shared VPC seen from two accounts, or an
            # interface both of an instance and in the ENI list): the named owner wins.
            key = entity.interface_id or entity
            known = unique.get(key)
            if known is None or (known.entity.startswith("eni:") and not entity.entity.startswith("eni:")):
                unique[key] = entity
        by_address: dict[str, list[Entity]] = {}
        vpc_of_interface: dict[str, str] = {}
        for entity in sorted(unique.values(), key=_order):
            for address in entity.addresses:
                by_address.setdefault(address, []).append(entity)
            if entity.interface_id and entity.vpc_id:
                vpc_of_interface[entity.interface_id] = entity.vpc_id
        self._by_address: dict[str, tuple[Entity, ...]] = {a: tuple(e) for a, e in by_address.items()}
        # The answer for an address only one entity holds, made once: most lookups end here.
        self._sure: dict[str, Lookup] = {a: Lookup(e[0]) for a, e in by_address.items() if len(e) == 1}
        self._vpc_of_interface = vpc_of_interface
        self.entity_count = len(unique)
        self.built_at = time.time() if built_at is None else built_at

    @property
    def size(self) -> int:
        """The number of addresses known."""
        return len(self._by_address)

    def sure(self, ip: str) -> Lookup | None:
        """The entity of an address only one entity holds, whatever the record: None otherwise."""
        return self._sure.get(ip)

    def vpc_of_interface(self, interface_id: str) -> str | None:
        return self._vpc_of_interface.get(interface_id)

    def lookup(
        self,
        ip: str,
        vpc_id: str | None = None,
        interface_id: str | None = None,
        account_id: str | None = None,
    ) -> Lookup | None:
        """The entity holding `ip`, seen from a record of `interface_id` / `vpc_id` / `account_id`.

        Within the VPC of `interface_id` when known, else within `vpc_id`: private addresses repeat
        across VPCs. An address that VPC does not hold (a peered VPC's, another account's public
        address) is looked up everywhere: one holder is a sure answer; among several, those of
        `account_id` come first, and the answer is marked ambiguous."""
        sure = self._sure.get(ip)
        if sure is not None:
            return sure
        holders = self._by_address.get(_address_key(ip)) if ip else None
        if not holders:
            return None
        if len(holders) == 1:
            return Lookup(holders[0])
        scope = (self._vpc_of_interface.get(interface_id) if interface_id else None) or vpc_id
        if scope:
            local = [e for e in holders if e.vpc_id == scope]
            if len(local) == 1:
                return Lookup(local[0])
            holders = local or holders
        if account_id:
            holders = [e for e in holders if e.account_id == account_id] or holders
        return Lookup(holders[0], ambiguous=True)


# --- collection -----------------------------------------------------------------------------------


_CLIENTS_LOCK = threading.Lock()


@lru_cache(maxsize=32)
def _session(account: AwsConfig):
    return account.session()


@lru_cache(maxsize=512)
def _cached_client(account: AwsConfig, region: str, service: str):
    config = Config(user_agent_extra=USER_AGENT, retries=_RETRIES)
    return _session(account).client(
        service, region_name=region, endpoint_url=account.endpoint_url, config=config
    )


def _client(account: AwsConfig, region: str, service: str):
    """A client kept across refreshes: one session per account (a role is assumed once, then refreshed
    by its credentials before they expire; the service models load once), one client per region and
    service. Clients are thread-safe, sessions are not: made under a lock."""
    with _CLIENTS_LOCK:
        return _cached_client(account, region, service)


def clear_clients() -> None:
    """Forgets the kept sessions and clients (the next collection opens new ones)."""
    with _CLIENTS_LOCK:
        _cached_client.cache_clear()
        _session.cache_clear()


def _page_size(service: str, page_size: int) -> int:
    low, high = _PAGE_LIMITS[service]
    return max(low, min(high, page_size))


def _list(client, service: str, operation: str, key: str, page_size: int, denied: set[str]) -> list[dict]:
    """Every item of a paginated Describe call; [] when the credentials may not call it (recorded in
    `denied` as the IAM action), any other error raises."""
    paginator = client.get_paginator(operation)
    items: list[dict] = []
    try:
        for page in paginator.paginate(PaginationConfig={"PageSize": _page_size(service, page_size)}):
            items.extend(page.get(key) or ())
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in DENIED_ERRORS:
            raise
        denied.add(f"{client.meta.service_model.signing_name}:{error.operation_name}")
        return []
    return items


def _names(
    load_balancers: list[dict],
    classic_load_balancers: list[dict],
    db_instances: list[dict],
    nat_gateways: list[dict],
    vpc_endpoints: list[dict],
) -> LookupNames:
    owners: dict[str, Named] = {}
    for lb in load_balancers:
        name = lb["LoadBalancerName"]
        owners[f"elb:{lb.get('Type') or 'application'}/{name}"] = Named(name, lb.get("DNSName"))
    for lb in classic_load_balancers:
        name = lb["LoadBalancerName"]
        owners[f"elb:classic/{name}"] = Named(name, lb.get("DNSName"))
    for nat in nat_gateways:
        tags = _tags(nat.get("Tags"))
        owners[f"nat:{nat['NatGatewayId']}"] = Named(_tag(tags, "Name"), None, tags)
    for endpoint in vpc_endpoints:
        tags = _tags(endpoint.get("Tags"))
        owners[f"vpce:{endpoint['VpcEndpointId']}"] = Named(endpoint.get("ServiceName"), None, tags)
    databases = []
    for db in db_instances:
        group = db.get("DBSubnetGroup") or {}
        zones = {db.get("AvailabilityZone"), db.get("SecondaryAvailabilityZone")}
        databases.append(
            DbInstance(
                identifier=db["DBInstanceIdentifier"],
                vpc_id=group.get("VpcId"),
                subnet_ids=frozenset(s["SubnetIdentifier"] for s in group.get("Subnets") or ()),
                availability_zones=frozenset(z for z in zones if z),
                security_group_ids=frozenset(
                    g["VpcSecurityGroupId"] for g in db.get("VpcSecurityGroups") or ()
                ),
                endpoint=(db.get("Endpoint") or {}).get("Address"),
                tags=_tags(db.get("TagList")),
            )
        )
    return LookupNames(owners, tuple(databases))


def collect_region(
    aws: AwsConfig, region: str, page_size: int = 1000, denied: set[str] | None = None
) -> list[Entity]:
    """The entities of one account (`aws`'s credentials, and role if any) in `region`, every Describe
    call paginated (`page_size` items a page, within each API's bounds).

    An API the credentials may not call is skipped: its IAM action is added to `denied` (for the
    caller to warn once per refresh), or warned about here when `denied` is None."""
    skipped: set[str] = set() if denied is None else denied
    ec2 = _client(aws, region, "ec2")
    reservations = _list(ec2, "ec2", "describe_instances", "Reservations", page_size, skipped)
    interfaces = _list(ec2, "ec2", "describe_network_interfaces", "NetworkInterfaces", page_size, skipped)
    nat_gateways = _list(ec2, "ec2", "describe_nat_gateways", "NatGateways", page_size, skipped)
    vpc_endpoints = _list(ec2, "ec2", "describe_vpc_endpoints", "VpcEndpoints", page_size, skipped)
    elbv2 = _client(aws, region, "elbv2")
    load_balancers = _list(elbv2, "elbv2", "describe_load_balancers", "LoadBalancers", page_size, skipped)
    elb = _client(aws, region, "elb")
    classic = _list(elb, "elb", "describe_load_balancers", "LoadBalancerDescriptions", page_size, skipped)
    rds = _client(aws, region, "rds")
    db_instances = _list(rds, "rds", "describe_db_instances", "DBInstances", page_size, skipped)
    if denied is None:
        for action in sorted(skipped):
            _LOG.warning("Entity lookups in %s: not allowed to call %s; skipped", region, action)

    names = _names(load_balancers, classic, db_instances, nat_gateways, vpc_endpoints)
    # Interfaces seen through an instance carry its name and tags: they replace the bare ENI's view,
    # keeping any address only the ENI listed.
    by_interface: dict[str, Entity] = {}
    loose: list[Entity] = []
    for eni in interfaces:
        entity = entity_of_interface(eni, region, None, names)
        if entity.interface_id:
            by_interface[entity.interface_id] = entity
        else:
            loose.append(entity)
    for reservation in reservations:
        for instance in reservation.get("Instances") or ():
            for entity in entities_of_instance(instance, region, reservation.get("OwnerId")):
                seen = by_interface.get(entity.interface_id) if entity.interface_id else None
                if seen is not None:
                    entity = replace(
                        entity,
                        addresses=tuple(dict.fromkeys((*entity.addresses, *seen.addresses))),
                        account_id=entity.account_id or seen.account_id,
                    )
                if entity.interface_id:
                    by_interface[entity.interface_id] = entity
                else:
                    loose.append(entity)
    return [*by_interface.values(), *loose]


def collect_inventory(
    aws: AwsConfig, regions: Sequence[str], role_arns: Sequence[str] = (), page_size: int = 1000
) -> Inventory:
    """The inventory of every account (the pipeline's own without `role_arns`, else each role's,
    assumed with `aws`'s identity, so through `--aws_role_arn`'s role when set) in every region.

    An API some account may not call is skipped with one warning per refresh; a role that cannot be
    assumed raises ValueError naming its option; any other error raises as is. The caller keeps its
    previous inventory on any error. No STS call but AssumeRole: the account of each entity is the
    OwnerId that DescribeInstances and DescribeNetworkInterfaces report."""
    if not regions:
        raise ValueError("--lookup_regions: give at least one region to take the inventory from.")
    entities: list[Entity] = []
    denied: dict[str, list[str]] = {}
    for role_arn in role_arns or (None,):
        account = aws.assuming(role_arn) if role_arn else aws
        for region in regions:
            skipped: set[str] = set()
            try:
                entities.extend(collect_region(account, region, page_size, skipped))
            except ClientError as error:
                if error.operation_name != "AssumeRole":
                    raise
                code = error.response.get("Error", {}).get("Code", "")
                raise ValueError(
                    f"{'--lookup_role_arns' if role_arn else '--aws_role_arn'}: cannot assume "
                    f"{account.role_arn} ({code}): check the role's trust policy and that the pipeline's "
                    "identity (--aws_role_arn's role, when set) may call sts:AssumeRole on it."
                ) from None
            for action in skipped:
                denied.setdefault(action, []).append(f"{role_arn or 'own account'} in {region}")
    for action, where in sorted(denied.items()):
        _LOG.warning(
            "Entity lookups: not allowed to call %s (%s); those entities are missing. "
            "Grant it (see --print_iam_policy).",
            action,
            ", ".join(where),
        )
    return Inventory(entities)


# --- GELF fields and IAM --------------------------------------------------------------------------


def entity_fields(field: str, lookup: Lookup | None, tag_keys: Sequence[str] = ()) -> dict[str, str]:
    """The `<field>_entity*` GELF fields of one address field: the plugin's three (`_entity`,
    `_entity_description`, `_entity_aws_type`) and ours; empty values are left out, as Graylog would
    store no field for them."""
    if lookup is None:
        return {}
    entity = lookup.entity
    values = {
        f"{field}_entity": entity.entity,
        f"{field}_entity_description": entity.description,
        f"{field}_entity_aws_type": entity.aws_type,
        f"{field}_entity_name": entity.name,
        f"{field}_entity_vpc_id": entity.vpc_id,
        f"{field}_entity_account_id": entity.account_id,
        f"{field}_entity_ambiguous": "true" if lookup.ambiguous else None,
    }
    if tag_keys:
        tags = dict(entity.tags)
        for key in tag_keys:
            values[f"{field}_entity_tag_{_TAG_KEY_UNSAFE.sub('_', key)}"] = tags.get(key)
    return {name: value for name, value in values.items() if value}


def iam_policy(role_arns: Sequence[str] = ()) -> dict:
    """The least-privilege policy of the pipeline's identity: the Describe actions, or, reading
    through roles, only `sts:AssumeRole` on them (each role then needs `iam_policy()` itself)."""
    if role_arns:
        statement = {
            "Sid": "AssumeEntityLookupRoles",
            "Effect": "Allow",
            "Action": [ASSUME_ROLE_PERMISSION],
            "Resource": sorted(set(role_arns)),
        }
    else:
        statement = {
            "Sid": "DescribeEntitiesForLookups",
            "Effect": "Allow",
            "Action": list(REQUIRED_PERMISSIONS),
            # These Describe actions support no resource-level permissions.
            "Resource": "*",
        }
    return {"Version": "2012-10-17", "Statement": [statement]}
