"""The placement framework: filter and score plugins, the registry that makes them, the profile that
enables and weights them (kube-scheduler's framework, Nomad's feasibility and rank chains).

A replica to place is a ``PlacementRequest``. For each host, **filters** say whether it fits; a filter
that refuses gives short reasons a person understands ("insufficient memory", "cordoned", "port 8080 in
use", "constraint zone!=c"), which become the pending summary "0/3 hosts: 2 insufficient memory, 1
cordoned". Among the hosts that fit, **scorers** give each a number from 0 to ``MAX_SCORE``; the profile
multiplies it by the plugin's weight and the host with the highest sum wins.

Plugins come in two shapes, because a batch must not re-examine every host after every replica:

* ``FilterPlugin`` / ``ScorePlugin`` answer for one host from what the view holds about that host
  (``filter``/``score``), and for every host at once (``filter_all``/``score_all``, the batch's first
  look; the same answers, as one comprehension). Each says what it ``reads``: ``Reads.STATIC`` (record,
  status, labels, images — a batch never changes these, so the answer is computed once per batch) or
  ``Reads.HOST`` (the host's accounting: room, ports, replicas — recomputed only for the host a replica
  was just placed on).
* A ``Reads.HOST`` scorer whose score is the same on nearly every host may also answer
  ``score_sparse``: that score and the few hosts (view indices) that differ (``SparseScores``), so a
  batch builds its column without asking every host (service spread: only the hosts holding the
  service's replicas score less than the rest).
* ``DomainFilterPlugin`` / ``DomainScorePlugin`` answer for a whole topology domain (all hosts sharing
  one value of a label) from per-domain replica counts they prepare once per batch (``domains``); the
  batch re-asks them for a domain when its count changes, and for every domain when the global minimum
  does. Topology spread is one.

A plugin may declare that it does not apply to a request (``applies``: no constraints, no fixed host
ports...), and is then skipped for the whole batch. A host-level plugin names the part of the request
its answer depends on (``key``), so the answers of a ``STATIC`` filter are computed once per view and
shared by every batch and service with the same key (host state: once for all). A score plugin may
be tied to a strategy (least allocated to ``spread``, most allocated to ``binpack``): the service's
``placement.strategy`` picks which run. A score plugin may ask for ``normalize``: its raw scores are
scaled so the best feasible host gets ``MAX_SCORE``, with the factor fixed at the start of the batch
(so one placement still rescores one host).

Plugins are made by name from a ``Registry`` (name → factory taking the plugin's arguments); a
``ProfileConfig`` (the scheduler's configuration: filters in order, score weights, plugin arguments)
becomes a ``Profile`` with ``build_profile``. ``registry.default_profile()`` is Shoal's default.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from scheduler import model
from scheduler.model import ReplicaId, ServiceName, Strategy
from scheduler.placement.sampling import ADAPTIVE, Sampling
from scheduler.placement.view import ClusterView, DomainCounts, HostView, facts_of

MAX_SCORE = 100.0

Reasons = tuple[str, ...]  # why a host does not fit; empty: it fits


class PlacementError(ValueError):
    """Placement was asked something impossible: an unknown plugin, a bad weight or argument, a replica
    placed twice. A bug or a configuration mistake, never a full cluster (that is a pending outcome)."""


class Reads(enum.Enum):
    """What a host-level plugin's answer depends on, so a batch knows when to ask again."""

    STATIC = "static"  # the host's record, status, labels and images: never changed by a batch
    HOST = "host"      # the host's accounting (room, ports, replicas): changes when a replica lands there


@dataclass(frozen=True)
class PlacementRequest:
    """One replica to place, with what its template needs and its service's placement rules."""

    replica: ReplicaId
    service: ServiceName
    facts: model.TemplateFacts
    placement: model.Placement = field(default_factory=model.Placement)


def request_for(replica: model.Replica, service: model.Service) -> PlacementRequest:
    """The request for a replica of a service, with the template facts of the generation it runs."""
    return PlacementRequest(replica=replica.id, service=service.name, facts=facts_of(replica, service),
                            placement=service.spec.placement)


@runtime_checkable
class FilterPlugin(Protocol):
    """Whether one host fits a request. Must be pure and answer the same for the same host state."""

    @property
    def name(self) -> str: ...
    @property
    def reads(self) -> Reads: ...

    def applies(self, request: PlacementRequest) -> bool:
        """False: this plugin has nothing to say about this request (skipped for the batch)."""
        ...

    def key(self, request: PlacementRequest) -> Hashable:
        """The part of the request the answer depends on: requests with equal keys get equal answers
        from equal hosts. A ``STATIC`` filter's answers are computed once per view and key."""
        ...

    def filter(self, request: PlacementRequest, host: HostView) -> Reasons:
        """() when the host fits; otherwise one or more short reasons, each a category a person reads
        in a count ("insufficient memory"), so hosts refused for the same cause add up."""
        ...

    def filter_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[Reasons]:
        """``filter`` for many hosts at once, in order: a batch's first look at every host. Written as
        one comprehension it costs a fraction of a call per host, which is most of a batch's cost."""
        ...


@runtime_checkable
class ScorePlugin(Protocol):
    """How good a fitting host is for a request, from 0 to ``MAX_SCORE`` (higher is better)."""

    @property
    def name(self) -> str: ...
    @property
    def reads(self) -> Reads: ...
    @property
    def strategy(self) -> Strategy | None:
        """The only strategy this scorer serves (None: every one)."""
        ...
    @property
    def normalize(self) -> bool:
        """Scale raw scores so the best feasible host of the batch's first look gets ``MAX_SCORE``."""
        ...

    def applies(self, request: PlacementRequest) -> bool: ...

    def key(self, request: PlacementRequest) -> Hashable: ...

    def score(self, request: PlacementRequest, host: HostView) -> float: ...

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        """``score`` for many hosts at once, in order (hosts that do not fit included)."""
        ...


@dataclass(frozen=True)
class SparseScores:
    """Scores of every host of a view: ``default`` but for some of the hosts (by view index) in ``where``,
    whose score is ``value(i)``. A sampled run asks ``value`` only for the hosts of ``where`` in its
    sample: at 5,000 hosts that is a tenth of them (a service's replicas' hosts, for service spread), and
    scoring them all was a tenth of a mass failure's marking pass (docs/scaling.md, part 28)."""

    default: float
    where: Collection[int]
    value: Callable[[int], float]


@runtime_checkable
class SparseScorePlugin(Protocol):
    """A score plugin that can also answer for a whole view as ``SparseScores`` (the same numbers as
    ``score``), with cost in what differs rather than in the hosts."""

    def score_sparse(self, request: PlacementRequest, view: ClusterView) -> SparseScores: ...


@runtime_checkable
class DomainFilterPlugin(Protocol):
    """Whether a topology domain may take one more replica of the request's service."""

    @property
    def name(self) -> str: ...

    def domains(self, request: PlacementRequest, view: ClusterView) -> DomainCounts | None:
        """The per-domain replica counts this plugin judges by (None: it does not apply). Each host
        belongs to the domain named by its value of ``DomainCounts.label`` (None when it lacks it)."""
        ...

    def filter_domain(self, request: PlacementRequest, counts: DomainCounts, domain: str | None) -> Reasons:
        ...


@runtime_checkable
class DomainScorePlugin(Protocol):
    """How good a topology domain is for one more replica, from 0 to ``MAX_SCORE``."""

    @property
    def name(self) -> str: ...

    def domains(self, request: PlacementRequest, view: ClusterView) -> DomainCounts | None: ...

    def score_domain(self, request: PlacementRequest, counts: DomainCounts, domain: str | None) -> float:
        ...


PluginArgs = Mapping[str, object]
Factory = Callable[[PluginArgs], object]
Registry = Mapping[str, Factory]


def check_args(plugin: str, args: PluginArgs, allowed: Mapping[str, type | tuple[type, ...]]) -> None:
    """Refuse arguments a plugin does not take or of the wrong type, naming the plugin and the key."""
    for key, value in args.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise PlacementError(f"plugin {plugin}: unknown argument {key!r} (it takes: {known})")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and allowed[key] is not bool):
            raise PlacementError(f"plugin {plugin}: argument {key!r} has the wrong type "
                                 f"({type(value).__name__})")


@dataclass(frozen=True)
class ProfileConfig:
    """Which plugins run and how much each score counts: what the scheduler's configuration sets.

    ``filters`` run in this order (a host is refused by the first that refuses it); ``scores`` maps a
    score plugin to its weight (0 turns it off); ``args`` gives plugins their arguments by name.
    """

    filters: tuple[str, ...]
    scores: tuple[tuple[str, float], ...]
    args: Mapping[str, PluginArgs] = field(default_factory=dict)

    def with_weights(self, weights: Mapping[str, float]) -> ProfileConfig:
        """This profile with some score weights changed or added (0 turns a scorer off)."""
        merged = dict(self.scores)
        merged.update(weights)
        return ProfileConfig(filters=self.filters, scores=tuple(merged.items()), args=self.args)


@dataclass(frozen=True)
class Profile:
    """Plugin instances, split by shape, in the order the configuration gave them, and how many hosts a
    run looks at in a large cluster (``scheduler.placement.sampling``)."""

    host_filters: tuple[FilterPlugin, ...] = ()
    domain_filters: tuple[DomainFilterPlugin, ...] = ()
    host_scorers: tuple[tuple[ScorePlugin, float], ...] = ()
    domain_scorers: tuple[tuple[DomainScorePlugin, float], ...] = ()
    sampling: Sampling = ADAPTIVE


def build_profile(config: ProfileConfig, registry: Registry) -> Profile:
    """Make each named plugin once (a plugin both filtering and scoring is one instance) and sort them by
    shape. Unknown names, plugins of the wrong kind and bad weights are refused."""
    for name in config.args:
        if name not in config.filters and name not in dict(config.scores):
            raise PlacementError(f"arguments given for plugin {name!r}, which is not enabled")
    made: dict[str, object] = {}

    def make(name: str) -> object:
        if name not in made:
            factory = registry.get(name)
            if factory is None:
                known = ", ".join(sorted(registry))
                raise PlacementError(f"unknown placement plugin {name!r} (known: {known})")
            made[name] = factory(config.args.get(name, {}))
        return made[name]

    if len(set(config.filters)) != len(config.filters):
        raise PlacementError(f"a filter is listed twice: {', '.join(config.filters)}")
    host_filters: list[FilterPlugin] = []
    domain_filters: list[DomainFilterPlugin] = []
    for name in config.filters:
        plugin = make(name)
        if isinstance(plugin, DomainFilterPlugin):
            domain_filters.append(plugin)
        elif isinstance(plugin, FilterPlugin):
            host_filters.append(plugin)
        else:
            raise PlacementError(f"placement plugin {name!r} is not a filter")
    host_scorers: list[tuple[ScorePlugin, float]] = []
    domain_scorers: list[tuple[DomainScorePlugin, float]] = []
    seen: set[str] = set()
    for name, weight in config.scores:
        if name in seen:
            raise PlacementError(f"score plugin {name!r} is weighted twice")
        seen.add(name)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
                or weight < 0:
            raise PlacementError(f"score plugin {name!r}: the weight must be a number >= 0, got {weight!r}")
        plugin = make(name)
        if weight == 0:
            continue
        if isinstance(plugin, DomainScorePlugin):
            domain_scorers.append((plugin, float(weight)))
        elif isinstance(plugin, ScorePlugin):
            host_scorers.append((plugin, float(weight)))
        else:
            raise PlacementError(f"placement plugin {name!r} is not a scorer")
    return Profile(host_filters=tuple(host_filters), domain_filters=tuple(domain_filters),
                   host_scorers=tuple(host_scorers), domain_scorers=tuple(domain_scorers))


__all__ = [
    "MAX_SCORE", "DomainFilterPlugin", "DomainScorePlugin", "Factory", "FilterPlugin", "PlacementError",
    "PlacementRequest", "PluginArgs", "Profile", "ProfileConfig", "Reads", "Reasons", "Registry",
    "ScorePlugin", "SparseScorePlugin", "SparseScores", "build_profile", "check_args", "request_for",
]
