"""What one autoscaling decision is made from: the replica count and its bounds, the metrics with their
per-replica samples, the tolerance, HPA's ``behavior``, and the history of earlier recommendations and
scale events.

These are frozen values checked on construction (``InvalidInput`` names the field, in the replay
format's words, so ``replay`` can prefix the JSON path). Counts are int32 and metric values int64
milli-units, as in Kubernetes. ``Behavior`` is HPA's ``spec.behavior`` with Kubernetes' defaults filled
in by ``scale_up_rules``/``scale_down_rules``; a ``DecisionInput`` without one takes HPA's legacy path
(``downscale_stabilization_seconds`` and the ``max(2 * current, 4)`` scale-up limit).

History times (``at``) are seconds on the caller's clock (the scheduler uses unix time); ``decide``
measures ages from its ``now``. A replayed file gives ages instead, read as times before ``now = 0``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from scheduler.autoscale.integers import MAX_INT32, MAX_INT64, MIN_INT64
from scheduler.errors import InvalidArgument
from scheduler.model import ReplicaId

DEFAULT_TOLERANCE = 0.1
DEFAULT_DOWNSCALE_STABILIZATION_SECONDS = 300  # kube-controller-manager's default (5 minutes)
DEFAULT_MIN_REPLICAS = 1
# The API's bounds on behavior (Kubernetes' validation of HPAScalingRules).
MAX_STABILIZATION_WINDOW_SECONDS = 3600
MAX_PERIOD_SECONDS = 1800


class InvalidInput(InvalidArgument):
    """A decision input that breaks a rule. ``field`` is the offending key (dotted within the value that
    raised), ``message`` what is wrong with it; ``str()`` is both."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, f"must be a whole number, not {value!r}")
    if value < low:
        raise InvalidInput(name, f"must be >= {low}" if low != 1 else "must be > 0")
    if value > high:
        raise InvalidInput(name, f"must be <= {high}")


def _check_int64(name: str, value: int) -> None:
    _check_range(name, value, MIN_INT64, MAX_INT64)


def _check_unique_ids(replicas: tuple[ReplicaSample, ...]) -> None:
    seen: set[str] = set()
    for i, r in enumerate(replicas):
        if r.id in seen:
            raise InvalidInput(f"replicas[{i}].id", f"{r.id!r} appears twice")
        seen.add(r.id)


class ReplicaState(enum.Enum):
    """Where a replica is in its life, as far as the autoscaler cares."""

    PENDING = "pending"  # placed, not running yet: "unready" (counted as idle when scaling up)
    RUNNING = "running"
    EXITED = "exited"  # Kubernetes' Failed phase: ignored
    TERMINATING = "terminating"  # Kubernetes' deletionTimestamp: ignored


class Resource(enum.Enum):
    """The resources whose utilization is measured against the replica's request."""

    CPU = "cpu"
    MEMORY = "memory"


@dataclass(frozen=True, kw_only=True)
class ReplicaSample:
    """One replica and its latest sample for one metric.

    ``value`` is the usage (cpu millicores, memory bytes) or the metric's value in milli-units; None
    means no sample. ``request`` is the replica's cpu (millicores) or memory (bytes) request, used by
    resource metrics only. ``ready`` and ``recently_started`` matter for cpu only: a cpu sample from a
    replica that is not ready, or that started so recently that its sample may cover its start-up, is
    left out of the average (Kubernetes' cpu initialization period).
    """

    id: ReplicaId
    state: ReplicaState = ReplicaState.RUNNING
    ready: bool = True
    recently_started: bool = False
    value: int | None = None
    request: int | None = None

    def __post_init__(self) -> None:
        if self.value is not None:
            _check_int64("value", self.value)
        if self.request is not None:
            _check_range("request", self.request, 0, MAX_INT64)


@dataclass(frozen=True, kw_only=True)
class ResourceMetric:
    """cpu or memory utilization: usage as a percentage of the replicas' requests (HPA's Resource
    metric with an ``averageUtilization`` target)."""

    resource: Resource
    target_utilization_percent: int
    replicas: tuple[ReplicaSample, ...]
    name: str = ""
    error: str | None = None  # the source failed (no usage stream): the metric gives no proposal

    def __post_init__(self) -> None:
        _check_range("target_utilization_percent", self.target_utilization_percent, 1, MAX_INT32)
        _check_unique_ids(self.replicas)
        for i, r in enumerate(self.replicas):
            if r.value is not None and r.value < 0:
                raise InvalidInput(f"replicas[{i}].value", "a usage cannot be negative")

    @property
    def kind(self) -> str:
        return self.resource.value


@dataclass(frozen=True, kw_only=True)
class ReplicaAverageMetric:
    """A per-replica metric (a PromQL query whose series carry the replica id) with a target average
    per replica: HPA's Pods metric. ``unmatched_samples_milli`` are series whose replica label matched
    no replica of the service; Kubernetes keeps such samples in the average, and so does Shoal."""

    target_average_milli: int
    replicas: tuple[ReplicaSample, ...]
    unmatched_samples_milli: tuple[int, ...] = ()
    name: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        _check_range("target_average_milli", self.target_average_milli, 1, MAX_INT64)
        _check_unique_ids(self.replicas)
        for i, v in enumerate(self.unmatched_samples_milli):
            _check_int64(f"unmatched_samples_milli[{i}]", v)

    @property
    def kind(self) -> str:
        return "replica_average"


@dataclass(frozen=True, kw_only=True)
class ValueMetric:
    """A service-level number compared with a target value (HPA's Object/External ``Value`` target):
    ``ceil(value / target * ready replicas)``, or ``ceil(value / target)`` from zero replicas."""

    target_milli: int
    value_milli: int | None  # None: no value (the query returned nothing)
    ready_replicas: int
    name: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        _check_range("target_milli", self.target_milli, 1, MAX_INT64)
        if self.value_milli is not None:
            _check_int64("value_milli", self.value_milli)
        _check_range("ready_replicas", self.ready_replicas, 0, MAX_INT32)

    @property
    def kind(self) -> str:
        return "value"


@dataclass(frozen=True, kw_only=True)
class AverageValueMetric:
    """A service-level number divided among the replicas (HPA's Object/External ``AverageValue``
    target): ``ceil(value / target_average)``."""

    target_average_milli: int
    value_milli: int | None
    name: str = ""
    error: str | None = None

    def __post_init__(self) -> None:
        _check_range("target_average_milli", self.target_average_milli, 1, MAX_INT64)
        if self.value_milli is not None:
            _check_int64("value_milli", self.value_milli)

    @property
    def kind(self) -> str:
        return "average_value"


Metric = ResourceMetric | ReplicaAverageMetric | ValueMetric | AverageValueMetric
SERVICE_LEVEL_METRICS = (ValueMetric, AverageValueMetric)


def metric_label(metric: Metric) -> str:
    """How a metric is called in reasons: its name, else its kind."""
    return metric.name or metric.kind


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How far the usage ratio may stray from 1.0 before a metric asks for a change: it asks for more
    replicas when ``ratio > 1 + scale_up`` and fewer when ``ratio < 1 - scale_down`` (float64)."""

    scale_up: float = DEFAULT_TOLERANCE
    scale_down: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        for name in ("scale_up", "scale_down"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidInput(name, f"must be a number >= 0, not {value!r}")

    def within(self, ratio: float) -> bool:
        """Kubernetes' ``Tolerances.isWithin``: the bounds are computed in float64, as written."""
        return (1.0 - self.scale_down) <= ratio <= (1.0 + self.scale_up)


class PolicyType(enum.Enum):
    REPLICAS = "replicas"  # Kubernetes' Pods policy: at most N replicas per period
    PERCENT = "percent"  # at most N% of the replicas at the start of the period


class SelectPolicy(enum.Enum):
    MAX = "max"  # the policy that allows the largest change
    MIN = "min"  # the policy that allows the smallest change
    DISABLED = "disabled"  # no change in this direction


@dataclass(frozen=True, kw_only=True)
class ScalingPolicy:
    """At most ``value`` replicas (or percent) of change per ``period_seconds``."""

    type: PolicyType
    value: int
    period_seconds: int

    def __post_init__(self) -> None:
        _check_range("value", self.value, 1, MAX_INT32)
        _check_range("period_seconds", self.period_seconds, 1, MAX_PERIOD_SECONDS)

    def describe(self) -> str:
        unit = "%" if self.type is PolicyType.PERCENT else (" replica" if self.value == 1 else " replicas")
        return f"{self.value}{unit} / {self.period_seconds} s"


@dataclass(frozen=True, kw_only=True)
class ScalingRules:
    """One direction of HPA's behavior. A scale-down window of None means the service-wide
    ``downscale_stabilization_seconds`` (Kubernetes fills it from its controller flag the same way)."""

    stabilization_window_seconds: int | None
    select_policy: SelectPolicy
    policies: tuple[ScalingPolicy, ...]

    def __post_init__(self) -> None:
        if self.stabilization_window_seconds is not None:
            _check_range("stabilization_window_seconds", self.stabilization_window_seconds, 0,
                         MAX_STABILIZATION_WINDOW_SECONDS)
        if not self.policies:
            raise InvalidInput("policies", "must have at least one policy")

    @property
    def longest_period_seconds(self) -> int:
        return max(p.period_seconds for p in self.policies)


DEFAULT_SCALE_UP_POLICIES = (ScalingPolicy(type=PolicyType.REPLICAS, value=4, period_seconds=15),
                             ScalingPolicy(type=PolicyType.PERCENT, value=100, period_seconds=15))
DEFAULT_SCALE_DOWN_POLICIES = (ScalingPolicy(type=PolicyType.PERCENT, value=100, period_seconds=15),)


def scale_up_rules(*, stabilization_window_seconds: int | None = None,
                   select_policy: SelectPolicy | None = None,
                   policies: tuple[ScalingPolicy, ...] | None = None) -> ScalingRules:
    """Scale-up rules with Kubernetes' defaults for what is not given: no window, ``max`` of 4 replicas
    or 100% per 15 s."""
    window = 0 if stabilization_window_seconds is None else stabilization_window_seconds
    return ScalingRules(
        stabilization_window_seconds=window,
        select_policy=select_policy or SelectPolicy.MAX,
        policies=DEFAULT_SCALE_UP_POLICIES if policies is None else policies)


def scale_down_rules(*, stabilization_window_seconds: int | None = None,
                     select_policy: SelectPolicy | None = None,
                     policies: tuple[ScalingPolicy, ...] | None = None) -> ScalingRules:
    """Scale-down rules with Kubernetes' defaults for what is not given: the service's downscale window
    (300 s unless set), 100% per 15 s."""
    return ScalingRules(stabilization_window_seconds=stabilization_window_seconds,
                        select_policy=select_policy or SelectPolicy.MAX,
                        policies=DEFAULT_SCALE_DOWN_POLICIES if policies is None else policies)


@dataclass(frozen=True, kw_only=True)
class Behavior:
    """HPA's ``spec.behavior``: how fast each direction may go."""

    scale_up: ScalingRules = field(default_factory=scale_up_rules)
    scale_down: ScalingRules = field(default_factory=scale_down_rules)


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """A recommendation made at ``at``: the metrics' replica count before stabilization and limits."""

    replicas: int
    at: float

    def __post_init__(self) -> None:
        _check_range("replicas", self.replicas, 0, MAX_INT32)


@dataclass(frozen=True, kw_only=True)
class ScaleEvent:
    """A scale by ``change`` replicas (always >= 0; the list says the direction) made at ``at``."""

    change: int
    at: float

    def __post_init__(self) -> None:
        _check_range("change", self.change, 0, MAX_INT32)


@dataclass(frozen=True, kw_only=True)
class History:
    """What the stabilization windows and rate policies look back at. Empty recommendations mean the
    service has none yet: the decision then uses the current count, made now (as Kubernetes seeds it)."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DecisionInput:
    """Everything one decision for one service is made from."""

    current_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    min_replicas: int = DEFAULT_MIN_REPLICAS
    tolerance: Tolerance = field(default_factory=Tolerance)
    behavior: Behavior | None = None  # None: HPA's legacy path
    downscale_stabilization_seconds: int = DEFAULT_DOWNSCALE_STABILIZATION_SECONDS
    history: History = field(default_factory=History)

    def __post_init__(self) -> None:
        _check_range("current_replicas", self.current_replicas, 0, MAX_INT32)
        _check_range("min_replicas", self.min_replicas, 0, MAX_INT32)
        _check_range("max_replicas", self.max_replicas, 1, MAX_INT32)
        _check_range("downscale_stabilization_seconds", self.downscale_stabilization_seconds, 0, MAX_INT32)
        if self.min_replicas > self.max_replicas:
            raise InvalidInput("min_replicas", f"must be <= max_replicas ({self.max_replicas})")
        if not self.metrics:
            raise InvalidInput("metrics", "must have at least one metric")
        if self.min_replicas == 0 and not any(isinstance(m, SERVICE_LEVEL_METRICS) for m in self.metrics):
            # HPA allows minReplicas 0 only with Object/External metrics: the replicas' own usage says
            # nothing once there are none, so nothing could ever wake the service.
            raise InvalidInput("min_replicas", "0 needs a service-level metric (value or average_value) "
                                               "to wake the service from zero replicas")

