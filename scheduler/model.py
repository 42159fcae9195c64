"""The scheduler's domain: services, replicas and hosts as frozen values.

Everything the scheduler decides works on these; protobuf stops at the API edge (``scheduler.server``)
and JSON at the store (``scheduler.store.records``). The container template is the one exception: it is
the agent's own ``ContainerSpec`` and travels to agents unchanged, so a service keeps it as canonical
JSON (``template_json``, the protobuf JSON mapping with sorted keys) plus the few facts placement needs,
extracted once when the spec is parsed (``TemplateFacts``). Two templates are the same exactly when their
canonical JSON is.

Ids are ``NewType``s. Times are unix seconds (floats). ``revision`` fields are the etcd mod revision the
value was read at (0 for a value not read from etcd), which is what a compare-and-swap write names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import NewType

ServiceName = NewType("ServiceName", str)
ReplicaId = NewType("ReplicaId", str)
HostId = NewType("HostId", str)

# Labels the scheduler puts on every container it creates: how a host's containers are matched to
# replicas, and how one left behind is recognised as Shoal's.
LABEL_SERVICE = "shoal.service"
LABEL_REPLICA = "shoal.replica"
LABEL_GENERATION = "shoal.generation"

# Field metadata: a string that many records repeat (a service's name, a host id, a common reason).
# Decoded records share one copy of each (``scheduler.store.records``): a decoded replica held 1.59 KiB
# with a copy each, 0.77 KiB with them shared and its decisions in slots (docs/scaling.md, part 14).
SHARED = {"shared": True}

# The fence owner every scheduler instance uses on agents; the epoch is the leader's term.
FENCE_OWNER = "scheduler"


# -- services ----------------------------------------------------------------------------------------

class Strategy(enum.Enum):
    SPREAD = "spread"    # least allocated host first
    BINPACK = "binpack"  # most allocated host first


class ConstraintOp(enum.Enum):
    EQ = "="
    NE = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"          # "gpu": the label is present
    NOT_EXISTS = "notexists"   # "!gpu"


@dataclass(frozen=True)
class Constraint:
    """A label constraint on hosts, parsed from ``zone=a``, ``zone!=c``, ``zone in (a,b)``, ``gpu``."""

    key: str
    op: ConstraintOp
    values: tuple[str, ...] = ()
    text: str = ""  # as the user wrote it, for messages

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op is ConstraintOp.EXISTS:
            return present
        if self.op is ConstraintOp.NOT_EXISTS:
            return not present
        if self.op is ConstraintOp.EQ or self.op is ConstraintOp.IN:
            return present and value in self.values
        return not present or value not in self.values  # NE, NOT_IN: a host without the label passes


@dataclass(frozen=True)
class TopologySpread:
    label: str
    max_skew: int = 1


@dataclass(frozen=True)
class Placement:
    strategy: Strategy = Strategy.SPREAD
    constraints: tuple[Constraint, ...] = ()
    topology_spread: TopologySpread | None = None


@dataclass(frozen=True)
class UpdatePolicy:
    """How far a rollout may go above and below ``replicas``. A percentage ("25%" in the service file) is
    kept as such and resolved against the replica count of the moment by ``counts``; the plain count
    beside it is then 0 and unused."""

    max_surge: int = 1
    max_unavailable: int = 0
    max_surge_percent: int | None = None
    max_unavailable_percent: int | None = None

    def counts(self, replicas: int) -> tuple[int, int]:
        """(max surge, max unavailable) for ``replicas``: percentages of it, surge rounded up and
        unavailable down; if both come to 0 the rollout could never move, so unavailable is 1
        (Kubernetes' rules)."""
        surge = self.max_surge
        if self.max_surge_percent is not None:
            surge = -(-replicas * self.max_surge_percent // 100)
        unavailable = self.max_unavailable
        if self.max_unavailable_percent is not None:
            unavailable = replicas * self.max_unavailable_percent // 100
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable


@dataclass(frozen=True)
class PortRequest:
    """A published port of the template: ``host_port`` 0 means the host picks a free one."""

    container_port: int
    host_port: int = 0
    protocol: str = "tcp"


@dataclass(frozen=True)
class TemplateFacts:
    """What placement needs from the container template, extracted when the spec is parsed."""

    image: str
    cpu_millis: int = 0      # the request (or the limit when no request is given)
    memory_bytes: int = 0    # likewise
    ports: tuple[PortRequest, ...] = ()
    has_health_check: bool = False
    # The template's restart policy: whether a replica whose container exited for good is replaced
    # ("always"; "on-failure" only after a non-zero exit; "no" never). Services default to "always".
    restart: str = "always"


# -- autoscaling ---------------------------------------------------------------------------------------

class MetricKind(enum.Enum):
    CPU = "cpu"                 # utilization of the replica's cpu request, in percent
    MEMORY = "memory"           # utilization of its memory request, in percent
    PROMETHEUS = "prometheus"   # a PromQL query: per replica, or one number for the service


@dataclass(frozen=True)
class MetricTarget:
    """One metric of an autoscale policy and its target. Values are integer milli-units (0.5 → 500), as
    Kubernetes' quantities, so the decision arithmetic is exact."""

    kind: MetricKind
    target_utilization_percent: int = 0  # cpu, memory
    query: str = ""                      # prometheus
    # prometheus per replica: the label whose value is the replica id (target_average_value_milli only)
    per_replica_label: str = ""
    target_value_milli: int = 0          # prometheus service-level: the number itself vs this
    target_average_value_milli: int = 0  # prometheus: per replica, or the number / replicas

    @property
    def per_replica(self) -> bool:
        return self.kind is not MetricKind.PROMETHEUS or bool(self.per_replica_label)


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` replicas (``type`` "replicas") or percent of the current count ("percent") per
    ``period_seconds``."""

    type: str
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """One direction of HPA's ``behavior``."""

    stabilization_window_seconds: int = 0
    select_policy: str = "max"   # max | min | disabled
    policies: tuple[ScalingPolicy, ...] = ()


def default_scale_up() -> ScalingRules:
    """Kubernetes' default: no window; at most max(4 replicas, 100 %) per 15 s."""
    return ScalingRules(stabilization_window_seconds=0, select_policy="max",
                        policies=(ScalingPolicy("replicas", 4, 15), ScalingPolicy("percent", 100, 15)))


def default_scale_down() -> ScalingRules:
    """Kubernetes' default: a 300 s window; at most 100 % per 15 s."""
    return ScalingRules(stabilization_window_seconds=300, select_policy="max",
                        policies=(ScalingPolicy("percent", 100, 15),))


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = field(default_factory=default_scale_up)
    scale_down: ScalingRules = field(default_factory=default_scale_down)


@dataclass(frozen=True)
class Autoscale:
    """A service's autoscale policy: the count stays within ``min_replicas``..``max_replicas`` and
    follows the metrics (the largest proposal wins), by HPA's rules (scheduler.autoscale)."""

    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricTarget, ...]
    tolerance_up: float = 0.1
    tolerance_down: float = 0.1
    behavior: Behavior = field(default_factory=Behavior)


@dataclass(frozen=True)
class ServiceSpec:
    name: ServiceName
    replicas: int
    template_json: str  # the agent ContainerSpec, canonical protobuf JSON
    facts: TemplateFacts
    placement: Placement = field(default_factory=Placement)
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    labels: tuple[tuple[str, str], ...] = ()
    metrics_port: int = 0
    autoscale: Autoscale | None = None  # None: the count is only what people set


@dataclass(frozen=True)
class TemplateRevision:
    """A template a service ran before, for ``rollout undo``."""

    template_generation: int
    template_json: str
    facts: TemplateFacts


@dataclass(frozen=True)
class Service:
    spec: ServiceSpec
    generation: int = 1            # bumps on every spec change, replicas included
    template_generation: int = 1   # the generation of the last template change
    created_at: float = 0.0
    updated_at: float = 0.0
    deleting: bool = False
    history: tuple[TemplateRevision, ...] = ()  # newest last, bounded
    revision: int = 0

    @property
    def name(self) -> ServiceName:
        return self.spec.name

    def scaled(self, replicas: int, *, now: float) -> Service:
        """This service with ``replicas`` declared: a spec change, so its generation bumps (``shoal
        scale`` and the autoscaler alike)."""
        return replace(self, spec=replace(self.spec, replicas=replicas), generation=self.generation + 1,
                       updated_at=now)


# -- replicas ----------------------------------------------------------------------------------------

class ReplicaPhase(enum.Enum):
    PENDING = "pending"     # not placed (no host fits, or not decided yet)
    STARTING = "starting"   # placed; its container is being created/started on the host
    RUNNING = "running"
    FAILED = "failed"       # exited or could not start; retried after a backoff
    STOPPING = "stopping"   # being stopped and removed


@dataclass(frozen=True, slots=True)  # slots: every replica record keeps several
class Decision:
    """Something the scheduler did to a replica, and why (kept with the replica, newest last)."""

    time: float
    action: str = field(metadata=SHARED)  # "placed", "pending", "created", "replaced", "stopped", ...
    reason: str = field(metadata=SHARED)


@dataclass(frozen=True)
class HostPort:
    """A port the replica's container publishes on its host (known once the agent assigned it)."""

    container_port: int
    host_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Replica:
    id: ReplicaId
    service: ServiceName = field(metadata=SHARED)
    generation: int                   # the template_generation it runs
    host: HostId | None = field(default=None, metadata=SHARED)  # None while pending
    phase: ReplicaPhase = ReplicaPhase.PENDING
    ready: bool = False
    reason: str = field(default="", metadata=SHARED)
    created_at: float = 0.0
    updated_at: float = 0.0
    restarts: int = 0                 # times its container was replaced
    next_attempt_at: float = 0.0      # a failed replica is retried at this time (backoff)
    ports: tuple[HostPort, ...] = ()
    decisions: tuple[Decision, ...] = ()
    revision: int = 0


# -- the autoscaler's record ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Recommendation:
    """What the autoscaler's rules proposed at ``time`` before stabilization (HPA's recommendation
    history: the stabilization windows look back over these)."""

    time: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    """A change the autoscaler made (``change`` replicas added or removed), for the rate-limit policies."""

    time: float
    change: int


@dataclass(frozen=True)
class AutoscaleDecision:
    """One decision, with what it was made from: ``input_json`` is the replay input
    (``shoal autoscale replay``), ``reason`` the outcome in plain words."""

    time: float
    current_replicas: int
    desired_replicas: int
    reason: str
    error: str = ""
    input_json: str = ""


@dataclass(frozen=True)
class AutoscaleStatus:
    """The autoscaler's memory of one service: written by the leader only, when it scales or when what
    it decides changes, so a new leader resumes the same windows and rate limits."""

    service: ServiceName
    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()
    decisions: tuple[AutoscaleDecision, ...] = ()   # the latest last
    revision: int = 0


# -- hosts -------------------------------------------------------------------------------------------

class HostAdmin(enum.Enum):
    """What an operator asked of a host."""

    ACTIVE = "active"
    CORDONED = "cordoned"   # no new replicas
    DRAINING = "draining"   # replicas move away; then drained


@dataclass(frozen=True)
class Capacity:
    """What a host offers and has promised, as its agent last reported (requests, not limits)."""

    cpu_allocatable_millis: int = 0
    memory_allocatable_bytes: int = 0
    cpu_committed_millis: int = 0
    memory_committed_bytes: int = 0
    disk_free_bytes: int = 0


@dataclass(frozen=True)
class HostRecord:
    """A host as registered (by its agent) and administered (by operators)."""

    id: HostId
    name: str
    address: str                       # the agent's API, HOST:PORT
    labels: tuple[tuple[str, str], ...] = ()
    capacity: Capacity = field(default_factory=Capacity)
    metrics_address: str = ""
    boot_id: str = ""
    agent_version: str = ""
    conditions: tuple[str, ...] = ()   # the agent's condition types (MemoryPressure, DiskPressure, ...)
    admin: HostAdmin = HostAdmin.ACTIVE
    registered_at: float = 0.0
    last_registered_at: float = 0.0
    info_json: str = ""                # the agent's last HostInfo, protobuf JSON, for `describe host`
    revision: int = 0

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class HostStatus:
    """Whether the leader can reach a host and trusts its report; written by the leader only, apart from
    the registration (which agents write), so the two never contend."""

    id: HostId
    ready: bool = False
    reason: str = ""       # why not ready, for a person
    since: float = 0.0     # when ``ready`` last changed
    # (Until part 39 of docs/scaling.md also ``complete``: whether the leader's session had listed the
    # host's containers. Nothing read it, and every new term wrote it false and then true again for every
    # host; records that still carry it decode without it.)
    # Launches on this host that failed for a host-side reason, in a row (scheduler.start_health), the
    # last one's time and reason, and whether placement avoids the host for it now.
    start_failures: int = 0
    last_start_failure: float = 0.0
    start_failure_reason: str = ""
    start_failing: bool = False
    revision: int = 0


# -- host groups (elastic hosts: docs/elastic-hosts.md) --------------------------------------------------

GroupName = NewType("GroupName", str)

# The host label that makes a host a member of a group (`group=workers`).
LABEL_GROUP = "group"


@dataclass(frozen=True)
class HostShape:
    """What one new host of a group offers: its allocatable cpu and memory and its labels (``group`` is
    always among them). Declared, or learned from the group's existing hosts."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WebhookProvider:
    """POST the request's JSON to ``url``; 2xx accepts it. Authenticated by a bearer token read from
    ``token_file`` and/or a client certificate (mTLS); ``ca_file`` verifies the provider."""

    url: str
    token_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class CommandProvider:
    """Run ``argv`` with the request's JSON on stdin; exit status 0 accepts it."""

    argv: tuple[str, ...]
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class HostGroupSpec:
    """A host group as declared (``kind: hostgroup`` in a service file)."""

    name: GroupName
    max_hosts: int
    min_hosts: int = 0
    shape: HostShape | None = None          # None: learned from member hosts
    pending_for_seconds: float = 5.0        # replicas pending for lack of room this long ask for hosts
    max_per_request: int = 10
    scale_out_cooldown_seconds: float = 60.0   # between two scale-out requests of this group
    provision_timeout_seconds: float = 600.0   # requested hosts not joined by then are no longer expected
    scale_in: bool = True
    scale_in_utilization_percent: int = 50  # a host below this (requests / allocatable, cpu and memory)
    scale_in_after_seconds: float = 600.0   # ... for this long is unneeded
    scale_in_delay_after_scale_out_seconds: float = 600.0
    max_concurrent_drains: int = 1
    webhook: WebhookProvider | None = None
    command: CommandProvider | None = None


@dataclass(frozen=True)
class HostGroup:
    """A declared group, as stored under ``hostgroups/{name}`` (written by the API)."""

    spec: HostGroupSpec
    generation: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    revision: int = 0


class ProviderRequestKind(enum.Enum):
    SCALE_OUT = "scale_out"   # start ``count`` hosts of the group's shape
    SCALE_IN = "scale_in"     # these drained hosts may be removed


class DeliveryState(enum.Enum):
    PENDING = "pending"       # not yet accepted by the provider; retried with backoff
    DELIVERED = "delivered"   # accepted (2xx, or exit 0)


@dataclass(frozen=True)
class ProviderRequest:
    """One request to the provider. Its id is chosen and stored before the first attempt and never
    changes, so a retry (by this leader or the next) cannot buy twice."""

    id: str
    kind: ProviderRequestKind
    created_at: float
    count: int = 0                          # scale_out: hosts asked for
    shape: HostShape | None = None          # scale_out
    hosts: tuple[HostId, ...] = ()          # scale_in: the hosts to remove; scale_out: the ones that joined
    reason: str = ""
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    delivered_at: float = 0.0


@dataclass(frozen=True)
class GroupDecision:
    """Why the elastic loop did (or did not do) something for a group, for `describe hostgroup`."""

    time: float
    action: str      # "scale_out", "wait", "drain", "release", "forget", "at_max", ...
    reason: str


@dataclass(frozen=True)
class HostGroupStatus:
    """The leader's state for a group (``hostgroup-status/{name}``): requests, drains, timers, decisions."""

    group: GroupName
    desired_hosts: int = 0
    pending_replicas: int = 0                 # pending for lack of room that this group could take
    requests: tuple[ProviderRequest, ...] = ()  # undelivered ones, and the latest delivered ones
    expected_hosts: int = 0                   # asked for, not yet joined (until the provision timeout)
    expected_until: float = 0.0
    last_scale_out_at: float = 0.0
    underused_since: tuple[tuple[HostId, float], ...] = ()  # hosts below the utilization threshold
    draining: tuple[tuple[HostId, float], ...] = ()         # scale-in drains in flight, since when
    released: tuple[tuple[HostId, float], ...] = ()         # told to the provider; forgotten when gone
    next_request_number: int = 1
    decisions: tuple[GroupDecision, ...] = ()  # the latest last, bounded
    revision: int = 0


__all__ = [
    "FENCE_OWNER", "LABEL_GENERATION", "LABEL_GROUP", "LABEL_REPLICA", "LABEL_SERVICE", "Autoscale",
    "AutoscaleDecision", "AutoscaleStatus", "Behavior", "Capacity", "CommandProvider", "Constraint",
    "ConstraintOp", "Decision", "DeliveryState", "GroupDecision", "GroupName", "HostAdmin", "HostGroup",
    "HostGroupSpec", "HostGroupStatus", "HostId", "HostPort", "HostRecord", "HostShape", "HostStatus",
    "MetricKind", "MetricTarget", "Placement", "PortRequest", "ProviderRequest", "ProviderRequestKind",
    "Recommendation", "Replica", "ReplicaId", "ReplicaPhase", "ScaleEvent", "ScalingPolicy", "ScalingRules",
    "Service", "ServiceName", "ServiceSpec", "Strategy", "TemplateFacts", "TemplateRevision",
    "TopologySpread", "UpdatePolicy", "WebhookProvider", "default_scale_down", "default_scale_up",
]
