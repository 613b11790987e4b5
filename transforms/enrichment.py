"""What each IP address is in the AWS estate, added to messages: options, a refreshed inventory per
worker process, and the `Enricher` the GELF-building DoFns call per record.

Not a Beam side input: on the DirectRunner a slowly changing side input fed by `PeriodicImpulse` holds
the main input back and duplicates itself (Beam #26465; shared/reference/beam.md §3), and on Flink it
adds checkpoint growth (#27648). Instead each worker process keeps one `InventoryRefresher` (through
`apache_beam.utils.shared.Shared`), which rebuilds the inventory in a background thread every
`--lookup_refresh_seconds` (with jitter, so workers do not call AWS in step). The number of Describe
calls per refresh is one set per process, whatever the number of bundles. A failed refresh keeps the
previous inventory and is counted; the inventory's age is a metric.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from transforms import metrics
from transforms.aws import AwsConfig
from transforms.entities import Inventory, Lookup, collect_inventory, entity_fields
from transforms.gelf import encode_fields, field_key

_LOG = logging.getLogger(__name__)

NAMESPACE = "entities"
#: How long a worker waits for its first inventory before processing without one.
FIRST_LOAD_TIMEOUT_SECONDS = 120.0
#: A refresh waits the interval times a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.1


class EntityOptions(PipelineOptions):
    """AWS entity lookups (the plugin's "AWS Instance Name Lookup"), off by default as in the plugin."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("AWS entity lookups")
        group.add_argument(
            "--entity_lookups",
            action="store_true",
            default=False,
            help="Add what each IP address is (EC2 instance, load balancer, RDS, Lambda, NAT gateway, …) "
            "as <field>_entity* fields. Needs the IAM actions listed by --print_iam_policy.",
        )
        group.add_argument(
            "--lookup_regions",
            default=None,
            help="Comma-separated regions to take the inventory from (default: --region).",
        )
        group.add_argument(
            "--lookup_role_arns",
            default=None,
            help="Comma-separated roles to assume, one per account to inventory (default: the "
            "pipeline's own credentials, one account). Assumed by the pipeline's identity: through "
            "--aws_role_arn's role when it is set.",
        )
        group.add_argument(
            "--lookup_refresh_seconds",
            type=float,
            default=60.0,
            help="How often each worker rebuilds the inventory (default 60).",
        )
        group.add_argument(
            "--lookup_tags",
            default=None,
            help="Comma-separated tag keys copied as <field>_entity_tag_<key> (e.g. Team,Environment).",
        )
        group.add_argument(
            "--print_iam_policy",
            action="store_true",
            default=False,
            help="Print the least-privilege IAM policy the lookups need, and exit.",
        )


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


@dataclass(frozen=True)
class LookupConfig:
    """Validated lookup settings; picklable, so it travels to the workers."""

    aws: AwsConfig
    regions: tuple[str, ...]
    role_arns: tuple[str, ...] = ()
    refresh_seconds: float = 60.0
    tag_keys: tuple[str, ...] = ()
    page_size: int = 1000


def lookup_config_from_options(options: PipelineOptions, aws: AwsConfig) -> LookupConfig | None:
    """The lookup settings, or None when `--entity_lookups` is off; a wrong value names its option."""
    lookups = options.view_as(EntityOptions)
    if not lookups.entity_lookups:
        for name in ("lookup_regions", "lookup_role_arns", "lookup_tags"):
            if getattr(lookups, name):
                raise ValueError(f"--{name} is set but --entity_lookups is not: add --entity_lookups.")
        return None
    regions = _split(lookups.lookup_regions) or (aws.region,)
    roles = _split(lookups.lookup_role_arns)
    for arn in roles:
        if not arn.startswith("arn:") or ":role/" not in arn:
            raise ValueError(
                f"--lookup_role_arns: {arn!r} is not a role ARN such as "
                "arn:aws:iam::123456789012:role/reader."
            )
    if lookups.lookup_refresh_seconds < 5:
        raise ValueError("--lookup_refresh_seconds must be at least 5 (default 60).")
    return LookupConfig(
        aws=aws,
        regions=regions,
        role_arns=roles,
        refresh_seconds=lookups.lookup_refresh_seconds,
        tag_keys=_split(lookups.lookup_tags),
    )


@dataclass
class RefreshTally:
    """What the refresh thread did, for the DoFns to report as metrics (a thread cannot)."""

    refreshes: int = 0
    failures: int = 0


class InventoryRefresher:
    """The current inventory of one worker process, rebuilt in a background thread."""

    def __init__(self, config: LookupConfig, collect: Callable[[LookupConfig], Inventory] | None = None):
        self._config = config
        self._collect = collect or _collect
        self._lock = threading.Lock()
        self._inventory: Inventory | None = None
        self._tally = RefreshTally()
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="entity-inventory", daemon=True)
        self._thread.start()

    def current(self, wait: float = 0.0) -> Inventory | None:
        """The latest inventory (None before the first successful refresh), waiting up to `wait` s."""
        if wait and not self._loaded.is_set():
            self._loaded.wait(wait)
        with self._lock:
            return self._inventory

    def take_tally(self) -> RefreshTally:
        with self._lock:
            tally, self._tally = self._tally, RefreshTally()
            return tally

    def close(self) -> None:
        self._stop.set()

    def refresh(self) -> bool:
        """One rebuild; the previous inventory stays in use when it fails."""
        started = time.monotonic()
        try:
            inventory = self._collect(self._config)
        except Exception as error:  # any AWS or network failure: keep what we have
            with self._lock:
                self._tally.failures += 1
                previous = self._inventory
            _LOG.warning(
                "Entity inventory refresh failed (%s: %s); %s",
                type(error).__name__,
                error,
                "keeping the previous one" if previous is not None else "no inventory yet",
            )
            self._loaded.set()
            return False
        with self._lock:
            self._inventory = inventory
            self._tally.refreshes += 1
        self._loaded.set()
        _LOG.info(
            "Entity inventory: %d addresses from %s in %.1f s",
            inventory.size,
            ", ".join(self._config.regions),
            time.monotonic() - started,
        )
        return True

    def _run(self) -> None:
        self.refresh()
        while True:
            pause = self._config.refresh_seconds * random.uniform(1 - JITTER, 1 + JITTER)
            if self._stop.wait(pause):
                return
            self.refresh()


def _collect(config: LookupConfig) -> Inventory:
    return collect_inventory(config.aws, config.regions, config.role_arns, page_size=config.page_size)


@dataclass
class Enricher:
    """Adds `<field>_entity*` fields for the address fields of one record, from one inventory.

    `fields` gives them keyed as GELF stores them (`_src_addr_entity`), to add to a built message;
    `encoded` gives them already encoded, for `encode_message(message, encoded_fields)`. Both are
    worked out once per address field and entity, and reused while the inventory is: the per-record
    cost is a dictionary lookup per address."""

    inventory: Inventory | None
    tag_keys: Sequence[str] = ()
    memo: dict = field(default_factory=dict)
    enriched: int = 0
    #: Answers remembered at most (addresses outside the inventory, the Internet's, are unbounded).
    max_memo: int = 100_000

    def _known(self, name: str, lookup: Lookup) -> tuple[dict[str, str], bytes]:
        """The fields of `name` naming `lookup`'s entity, as GELF-keyed values and encoded."""
        key = (name, id(lookup.entity), lookup.ambiguous)  # entities live as long as the memo
        known = self.memo.get(key)
        if known is None:
            fields = {
                field_key(field_name): value
                for field_name, value in entity_fields(name, lookup, self.tag_keys).items()
                if not value.isspace()
            }
            known = self.memo[key] = (fields, encode_fields(fields))
        return known

    def fields(
        self,
        record: Mapping[str, object],
        address_fields: Sequence[str],
        vpc_id: str | None = None,
        interface_id: str | None = None,
        account_id: str | None = None,
    ) -> dict[str, str]:
        """The entity fields of `record`'s addresses, resolved within the record's VPC or interface."""
        inventory = self.inventory
        if inventory is None:
            return {}
        added: dict[str, str] = {}
        for name in address_fields:
            address = record.get(name)
            if not address or type(address) is not str:
                continue
            lookup = inventory.lookup(address, vpc_id, interface_id, account_id)
            if lookup is not None:
                added.update(self._known(name, lookup)[0])
                self.enriched += 1
        return added

    def _scoped(self, inventory: Inventory, name: str, address: str, record: Mapping[str, object]) -> bytes:
        """`encoded`'s answer for an address it has not seen, or that several entities hold: then the
        answer depends on where the record was seen from, and is remembered with that scope."""
        scope = (record.get("interface_id"), record.get("vpc_id"), record.get("account_id"))
        memo = self.memo
        fragment = memo.get((name, address, scope))
        if fragment is not None:
            return fragment
        lookup = inventory.lookup(address, scope[1], scope[0], scope[2])
        if lookup is None:
            fragment, key = b"", (name, address)
        else:
            fragment = self._known(name, lookup)[1]
            key = (name, address) if inventory.sure(address) is lookup else (name, address, scope)
        if len(memo) < self.max_memo:
            memo[key] = fragment
        return fragment

    def encoded(self, record: Mapping[str, object], address_fields: Sequence[str]) -> bytes:
        """The entity fields of `record`'s addresses encoded for `encode_message`, resolved within the
        record's own `interface_id` / `vpc_id` / `account_id` fields (a flow log record's names).

        Called for every flow log record, so answers are remembered as encoded fields: by address when
        one entity or none holds it, by address and the record's scope when several do."""
        inventory = self.inventory
        if inventory is None:
            return b""
        memo = self.memo
        encoded = b""
        enriched = 0
        for name in address_fields:
            address = record.get(name)
            if not address or type(address) is not str:
                continue
            fragment = memo.get((name, address))
            if fragment is None:
                fragment = self._scoped(inventory, name, address, record)
            if not fragment:
                continue
            encoded += fragment
            enriched += 1
        self.enriched += enriched
        return encoded


class EntityLookups:
    """The piece a DoFn holds: `setup()` in its setup, `enricher()` at each bundle's start, `report()`
    at its end (metrics), `teardown()` in its teardown. Picklable until `setup`."""

    def __init__(self, config: LookupConfig):
        self._config = config
        self._shared = Shared()
        self._refresher: InventoryRefresher | None = None
        self._memo: tuple[Inventory | None, dict] = (None, {})
        self._refreshes = metrics.counter(NAMESPACE, "refreshes")
        self._failures = metrics.counter(NAMESPACE, "refresh_failures")
        self._enriched = metrics.counter(NAMESPACE, "addresses_enriched")
        self._size = metrics.gauge(NAMESPACE, "inventory_addresses")
        self._age = metrics.gauge(NAMESPACE, "inventory_age_seconds")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_refresher"] = None
        state["_memo"] = (None, {})
        return state

    def setup(self) -> None:
        config = self._config
        self._refresher = self._shared.acquire(lambda: InventoryRefresher(config), tag=repr(config))
        self._refresher.current(wait=FIRST_LOAD_TIMEOUT_SECONDS)

    def enricher(self) -> Enricher:
        inventory = self._refresher.current() if self._refresher is not None else None
        if self._memo[0] is not inventory:  # a new inventory: its entities' fields are worked out anew
            self._memo = (inventory, {})
        return Enricher(inventory, self._config.tag_keys, self._memo[1])

    def report(self, enricher: Enricher) -> None:
        if enricher.enriched:
            self._enriched.inc(enricher.enriched)
            enricher.enriched = 0
        if self._refresher is None:
            return
        tally = self._refresher.take_tally()
        if tally.refreshes:
            self._refreshes.inc(tally.refreshes)
        if tally.failures:
            self._failures.inc(tally.failures)
        inventory = enricher.inventory
        if inventory is not None:
            self._size.set(inventory.size)
            self._age.set(int(time.time() - inventory.built_at))
