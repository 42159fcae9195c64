"""Batch placement: a batch of replicas placed in one pass over the hosts, each decision explained.

``place(batch, view, profile)`` takes replicas to place (usually N of one service) and returns, per
replica, the host chosen or none, a summary a person reads ("on node-2: 3/5 hosts fit, score 187.5;
1 cordoned, 1 insufficient memory", or when pending "0/3 hosts: 2 insufficient memory, 1 cordoned",
kube-scheduler's message shape) and, on demand, the verdict of every host as that decision saw it.

How one pass stays cheap (Nomad's and kube-scheduler's ideas, arranged for batches). Replicas with the
same service, template and placement rules form a *run*. For a run:

* every host is filtered and scored once, by plugins' ``filter_all``/``score_all`` comprehensions
  over all hosts; and the view keeps those answers, so the next run with the same request shape (the
  plugins' ``key``) re-asks only for the hosts placements changed since (``ClusterView.tracked``),
  static filters answer once per view, and a sparse scorer (``framework.SparseScorePlugin``: service
  spread) is asked only about the hosts whose score differs from the rest;
* hosts that fit sit in a heap per topology domain (one domain when the service has no topology spread),
  ordered by score; the domains sit in a heap ordered by their best host's score plus the domain's own
  score, and only domains the domain filters allow are in it;
* placing a replica changes only the chosen host's accounting, so only that host is filtered and
  scored again (its static answers are kept), and only its domain's count changes, so only that domain
  is judged again — every domain only when the global minimum of topology spread moves, which happens
  once per "round" over the domains.

Scaling 0 → N on H hosts therefore costs H + N evaluations and O(N log H) heap work, not N * H. In a large
cluster a run looks at a sample instead of all H (``scheduler.placement.sampling``): the hosts it takes are
filtered until enough fit, from what the view already keeps where it can (the view keeps its hosts in the
order samples take them, so that is a slice), and the rest of the run costs the sample's size; when the
sample runs out of room, the run goes on over every host.

Ties. Hosts with equal scores are ordered by a stable hash of the host id mixed with the run's first
replica id, then by host id: deterministic for the same inputs, but a different order per batch, so equal
hosts do not all receive the first replica of every batch. (Hashing each replica with each host would
reorder every host for every replica and cost the N * H this module avoids.) Scores are not rounded, so a
placement always changes its host's score and the next equal host comes first.

Explanations. Each evaluation is recorded with the step from which it held, so ``Placements.verdicts``
rebuilds exactly what the decision for any replica saw — every host feasible or not, its reasons, its
weighted score per plugin — at O(hosts) on request, without storing hosts * replicas verdicts.
``explain`` gives the same for one replica against a view without placing it.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import operator
import zlib
from bisect import bisect_right
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from scheduler.model import HostId, ReplicaId
from scheduler.placement.framework import (
    MAX_SCORE,
    DomainFilterPlugin,
    DomainScorePlugin,
    FilterPlugin,
    PlacementError,
    PlacementRequest,
    Profile,
    Reads,
    Reasons,
    SparseScores,
)
from scheduler.placement.view import ClusterView, DomainCounts, HostView

_T = TypeVar("_T")


@dataclass(frozen=True)
class HostVerdict:
    """One host as a placement decision saw it."""

    host: HostId
    host_name: str
    feasible: bool
    reasons: Reasons = ()                                  # why it was filtered out
    score: float = 0.0                                     # the weighted sum (feasible hosts only)
    scores: dict[str, float] = field(default_factory=dict)  # per score plugin, weighted


@dataclass(frozen=True)
class Outcome:
    """The decision for one replica."""

    replica: ReplicaId
    host: HostId | None            # None: pending
    host_name: str = ""
    feasible: int = 0              # hosts that fit when it was decided
    hosts: int = 0                 # hosts considered
    reasons: tuple[tuple[str, int], ...] = ()  # why the others did not fit: (reason, hosts), most first
    score: float = 0.0             # the chosen host's score
    sampled_from: int = 0          # the cluster's hosts, when only a sample of them was considered

    @property
    def summary(self) -> str:
        """What a person reads: "on node-2: 3/5 hosts fit, score 187.5; 1 cordoned, 1 insufficient
        memory" or, pending, "0/3 hosts: 2 insufficient memory, 1 cordoned"."""
        if self.host is None:
            return self.why
        return f"on {self.host_name}: {self.why}"

    @property
    def why(self) -> str:
        """The summary without the host: "3/5 hosts fit, score 187.5; 1 cordoned" (the whole summary
        when pending), for callers that name the host themselves."""
        if self.host is None:
            return pending_summary(self.hosts, self.reasons)
        return placed_reason(score=self.score, feasible=self.feasible, hosts=self.hosts, reasons=self.reasons,
                             sampled_from=self.sampled_from)


@dataclass(frozen=True)
class Explanation:
    outcome: Outcome
    verdicts: tuple[HostVerdict, ...]  # feasible hosts best first, then the others by name


def pending_summary(hosts: int, reasons: Sequence[tuple[str, int]]) -> str:
    """ "0/3 hosts: 2 insufficient memory, 1 cordoned" """
    if hosts == 0:
        return "0/0 hosts: no host has joined"
    return f"0/{hosts} hosts: " + ", ".join(f"{n} {reason}" for reason, n in reasons)


def placed_reason(*, score: float, feasible: int, hosts: int, reasons: Sequence[tuple[str, int]],
                  sampled_from: int = 0) -> str:
    """ "3/5 hosts fit, score 187.5; 1 cordoned, 1 insufficient memory"; when a sample was considered,
    "480/500 hosts fit (sampled from 5000), score 187.5" """
    text = f"{feasible}/{hosts} hosts fit"
    if sampled_from:
        text += f" (sampled from {sampled_from})"
    text += f", score {score:.1f}"
    if reasons:
        text += "; " + ", ".join(f"{n} {reason}" for reason, n in reasons)
    return text


_Part = tuple[Reasons, tuple[float, ...]]  # a host's or a domain's reasons and weighted scores


class _History:
    """A value that changes at some steps: the value at step k is the last one set at a step <= k."""

    __slots__ = ("steps", "values")

    def __init__(self, value: _Part) -> None:
        self.steps = [0]
        self.values = [value]

    def set(self, step: int, value: _Part) -> None:
        if self.steps[-1] == step:
            self.values[-1] = value
        else:
            self.steps.append(step)
            self.values.append(value)

    def at(self, step: int) -> _Part:
        return self.values[bisect_right(self.steps, step) - 1]


class _Group:
    """The hosts of one topology domain (one group when the service has no topology spread)."""

    __slots__ = ("heap", "history", "key", "n_ok", "reasons", "scores", "total", "version")

    def __init__(self, key: tuple[str | None, ...]) -> None:
        self.key = key
        self.heap: list[tuple[float, int, int]] = []  # (-host score, tie-break, host index)
        self.n_ok = 0           # hosts that pass the host-level filters
        self.reasons: Reasons = ()
        self.scores: tuple[float, ...] = ()
        self.total = 0.0
        self.version = 0
        self.history = _History(((), ()))


_Scorer = tuple[Callable[[PlacementRequest, HostView], float], float, float | None]  # score, weight, factor


def _first_refusals(filters: Sequence[FilterPlugin], request: PlacementRequest, hosts: Sequence[HostView],
                    reasons: list[Reasons] | None = None) -> list[Reasons]:
    """For each host, the reasons of the first filter that refuses it (after those in ``reasons``)."""
    if reasons is None:
        reasons = [()] * len(hosts)
    for f in filters:
        found = f.filter_all(request, hosts)
        reasons = [earlier or refusal for earlier, refusal in zip(reasons, found, strict=True)]
    return reasons


class _Window:
    """A sample: ``size`` consecutive hosts of the view from ``start`` on, wrapping around. The view keeps
    its hosts in the order samples take them (``ClusterView``), so a sample's values are one or two
    slices of the view's columns, not a lookup per host (about 14 % of a sampled run, before)."""

    __slots__ = ("n", "size", "start")

    def __init__(self, start: int, size: int, n: int) -> None:
        self.start, self.size, self.n = start, size, n

    def __len__(self) -> int:
        return self.size

    def take(self, values: Sequence[_T]) -> list[_T]:
        """The sample's entries of ``values`` (one per host of the view), in the sample's order."""
        start, end = self.start, self.start + self.size
        if end <= self.n:
            return list(values[start:end])
        return [*values[start:], *values[:end - self.n]]

    def indices(self) -> list[int]:
        return self.take(range(self.n))

    def position(self, i: int) -> int:
        """Where host ``i`` of the view is in the sample (>= ``size``: not in it)."""
        return (i - self.start) % self.n


def _or_reasons(reasons: list[Reasons], found: list[Reasons]) -> list[Reasons]:
    """``reasons``, with ``found``'s where a host had none yet: a copy, unless nothing was found. Nearly
    every host passes nearly every filter, so the hosts refused are found by a C-level scan and only those
    are visited, not every sampled host (docs/scaling.md, part 19: within the noise of a marking pass)."""
    refused = list(itertools.compress(range(len(found)), found))
    if not refused:
        return reasons
    merged = list(reasons)
    for i in refused:
        if not merged[i]:
            merged[i] = found[i]
    return merged


class _Looks:
    """How a run gets its hosts' filter answers and per-host values: for every host (computed once per
    view and kept current: ``ClusterView.memo``, ``ClusterView.tracked``), or for a sample of hosts
    (picked from what the view already keeps, else computed for the sample alone: a sampled run must
    not cost what a run over every host costs)."""

    def __init__(self, view: ClusterView, request: PlacementRequest, active: Sequence[FilterPlugin]) -> None:
        self.view = view
        self.request = request
        self.static = [f for f in active if f.reads is Reads.STATIC]
        self.static_key = ("placement.static_filters", tuple((f, f.key(request)) for f in self.static))
        self.dynamic = [f for f in active if f.reads is not Reads.STATIC]

    def host_values(self, key: Hashable, sample: _Window | None, hosts: Sequence[HostView] | None,
                    every: Callable[[Sequence[HostView]], list[_T]],
                    one: Callable[[HostView], _T]) -> list[_T]:
        """A tracked value for each of the run's hosts: every host of the view, or the sample's (``hosts``,
        None to have them picked only if needed). A sampled run computes a value nobody asked for only
        for its sample; the second run to ask (the value is shared, as resources fit is by every service
        with the same requests) has it kept for every host."""
        view = self.view
        if sample is None:
            return view.tracked(key, functools.partial(every, view.hosts), one)
        known = view.known(key, one)
        if known is None and view.asked(key):
            known = view.tracked(key, functools.partial(every, view.hosts), one)
        if known is not None:
            return sample.take(known)
        return every(hosts if hosts is not None else sample.take(view.hosts))

    def sparse(self, scores: SparseScores, sample: _Window | None) -> list[float]:
        """The column of ``scores`` for every host of the view (``sample`` None) or for the sample's, in
        its order: no plugin call per host, and a host asked only where its score may differ (and, for a
        sample, only if it is in it)."""
        where, value = scores.where, scores.value
        column = [scores.default] * (len(self.view.hosts) if sample is None else len(sample))
        if sample is None:
            for i in where:
                column[i] = value(i)
            return column
        if len(where) >= len(sample):  # (a set: ``in`` is a lookup)
            default = scores.default
            return [value(i) if i in where else default for i in sample.indices()]
        size, position = len(sample), sample.position
        for i in where:
            if (p := position(i)) < size:
                column[p] = value(i)
        return column

    def refusals(self, sample: _Window | None) -> list[Reasons]:
        """For each of the run's hosts (every host, or the sample's), the reasons of the first filter that
        refuses it. Static answers are computed once per view for every host, sampled or not: most are
        shared by every run."""
        request, view = self.request, self.view
        reasons: list[Reasons] | None = None
        if self.static:
            every = view.memo(self.static_key, lambda: _first_refusals(self.static, request, view.hosts))
            reasons = every if sample is None else sample.take(every)
        for f in self.dynamic:
            found = self.host_values(("placement.filter", f, f.key(request)), sample, None,
                                     functools.partial(f.filter_all, request),
                                     functools.partial(f.filter, request))
            reasons = found if reasons is None else _or_reasons(reasons, found)
        if reasons is None:
            return [()] * (len(view.hosts) if sample is None else len(sample))
        return reasons

    def every_host(self) -> list[Reasons]:
        return self.refusals(None)

    def static_values(self, key: Hashable, sample: _Window | None, hosts: Sequence[HostView],
                      every: Callable[[Sequence[HostView]], list[_T]]) -> list[_T]:
        """A static value for each of the run's hosts (``hosts``: the view's, or the sample's). Kept for
        every host once a second run asks for the same ``key`` (one image, for image locality: most
        services share a few), at most ``STATIC_COLUMNS`` keys per view; else computed for the run's
        hosts alone."""
        view = self.view
        if sample is None:
            return every(hosts)
        kept: dict[Hashable, list[_T]] = view.memo("placement.static_columns", dict)
        column = kept.get(key)
        if column is None and view.asked(key) and len(kept) < STATIC_COLUMNS:
            column = kept[key] = every(view.hosts)
        return every(hosts) if column is None else sample.take(column)

    def sample(self, salt: int, wanted: int) -> tuple[_Window | None, list[Reasons]]:
        """Hosts holding ``wanted`` that fit (or every host), taken in the view's order (their ids'
        hashes) from a point ``salt`` picks, and their refusals in that order; None when that is every
        host."""
        n = len(self.view.hosts)
        start = salt % n
        taken = 0
        reasons: list[Reasons] = []
        fitting, size = 0, wanted
        while fitting < wanted and taken < n:
            found = self.refusals(_Window((start + taken) % n, min(size, n - taken), n))
            taken += len(found)
            reasons += found
            fitting += found.count(())
            # The rest at the rate hosts fitted so far, a quarter more (a few refused hosts must not
            # double the sample); doubling when none fitted yet. Integer ceiling: a float one can overshoot.
            short = wanted - fitting
            size = -(-short * taken * 5 // (4 * fitting)) if fitting else taken
        if taken == n:
            # every host after all: in view order, as a run over every host has them
            return None, [*reasons[n - start:], *reasons[:n - start]]
        return _Window(start, taken, n), reasons


_FEW_DOMAINS = 16  # up to this many domains, hosts are sorted into them by one mask each
# Static score columns a view keeps for sampled runs (``_Looks.static_values``): 40 KiB each at 5,000
# hosts, so a pass over services of many images holds at most a few MiB of them.
STATIC_COLUMNS = 64

_Domain = tuple[str | None, ...]  # a host's values of the domain labels (None: it lacks that label)


def _domains_of(hosts: Sequence[HostView], labels: tuple[str, ...]) -> tuple[list[_Domain], list[int]]:
    """The distinct domains (values of ``labels``) in host order, and each host's index among them."""
    index_of: dict[_Domain, int] = {}
    group_of = []
    for host in hosts:
        key = tuple(host.labels.get(label) for label in labels)
        group_of.append(index_of.setdefault(key, len(index_of)))
    return list(index_of), group_of


def _weighted(scorers: Sequence[_Scorer], request: PlacementRequest, host: HostView) -> tuple[float, ...]:
    values = []
    for score, weight, factor in scorers:
        raw = score(request, host)
        if factor is not None:
            raw = min(MAX_SCORE, raw * factor)
        values.append(raw * weight)
    return tuple(values)


class _Run:
    """One run of identical requests over a view: the heaps, counters and history of its decisions."""

    def __init__(self, view: ClusterView, profile: Profile, request: PlacementRequest,
                 wanted: int | None = None) -> None:
        """``wanted``: look at a sample of hosts holding that many that fit (None: every host)."""
        self.view = view
        self.step = 0
        strategy = request.placement.strategy
        active = [f for f in profile.host_filters if f.applies(request)]
        self.dynamic_filters = [f.filter for f in active if f.reads is not Reads.STATIC]
        scorers = [(p, w) for p, w in profile.host_scorers
                   if (p.strategy is None or p.strategy is strategy) and p.applies(request)]
        static_scorers = [(p, w) for p, w in scorers if p.reads is Reads.STATIC]
        dynamic_scorers = [(p, w) for p, w in scorers if p.reads is not Reads.STATIC]
        self.n_static_scores = len(static_scorers)
        self.n_host_scores = len(scorers)

        # Domain plugins: each distinct plugin prepares its counts once; hosts group by their domains.
        self.domain_filters: list[tuple[DomainFilterPlugin, int]] = []
        self.domain_scorers: list[tuple[DomainScorePlugin, float, int]] = []
        self.counts: list[DomainCounts] = []
        prepared: dict[int, int | None] = {}

        def counts_index(plugin: DomainFilterPlugin | DomainScorePlugin) -> int | None:
            if id(plugin) not in prepared:
                counts = plugin.domains(request, view)
                prepared[id(plugin)] = None if counts is None else len(self.counts)
                if counts is not None:
                    self.counts.append(counts)
            return prepared[id(plugin)]

        for f in profile.domain_filters:
            index = counts_index(f)
            if index is not None:
                self.domain_filters.append((f, index))
        for s, w in profile.domain_scorers:
            index = counts_index(s)
            if index is not None:
                self.domain_scorers.append((s, w, index))
        self.score_names = tuple(p.name for p, _ in static_scorers + dynamic_scorers) + tuple(
            s.name for s, _, _ in self.domain_scorers)

        salt = zlib.crc32(request.replica.encode())
        # The per-host work below is written as comprehensions and map/zip over columns: it runs over
        # every host (or every sampled host) for every run, and per-host Python calls would be most of a
        # batch's cost.
        self.salt = salt
        all_hosts = view.hosts
        all_key_hashes: list[int] = view.memo("placement.key_hashes", lambda: [h.key_hash for h in all_hosts])
        looks = _Looks(view, request, active)
        self.hosts_in_cluster = len(all_hosts)
        self.sample: _Window | None = None
        hosts: list[HostView]
        if wanted is None:
            hosts = all_hosts
            self.key_hashes: Sequence[int] = all_key_hashes
            reasons = looks.every_host()
        else:
            self.sample, reasons = looks.sample(salt, wanted)
            if self.sample is None:
                hosts, self.key_hashes = all_hosts, all_key_hashes
            else:
                hosts = self.sample.take(all_hosts)
                self.key_hashes = self.sample.take(all_key_hashes)
        self.hosts: list[HostView] = hosts
        self.reasons: list[Reasons] = list(reasons)

        # Scores as one column per scorer; a scorer that normalizes gets a factor fixed from this first
        # look at the hosts that fit.
        self.columns: list[list[float]] = []
        factors: dict[int, float | None] = {}
        for p, weight in static_scorers + dynamic_scorers:
            # A ``SparseScorePlugin``: asked by attribute, since a runtime Protocol check per scorer per
            # run cost 1.4 % of a mass failure's marking pass (py-spy).
            score_sparse = getattr(p, "score_sparse", None)
            if score_sparse is not None:
                raw = looks.sparse(score_sparse(request, view), self.sample)
            elif p.reads is Reads.STATIC:
                raw = looks.static_values(("placement.static_score", p, p.key(request)), self.sample, hosts,
                                          functools.partial(p.score_all, request))
            else:
                raw = looks.host_values(("placement.score", p, p.key(request)), self.sample, hosts,
                                        functools.partial(p.score_all, request),
                                        functools.partial(p.score, request))
            factor = None
            if p.normalize:
                best = max((x for x, r in zip(raw, reasons, strict=True) if not r), default=0.0)
                factor = MAX_SCORE / best if best > 0 else 0.0
                self.columns.append([min(MAX_SCORE, x * factor) * weight for x in raw])
            elif weight == 1.0:
                # x * 1.0 == x, so a plain copy; a copy because the view refreshes its list in place
                # for later batches, and this run's explanations must keep what it saw.
                self.columns.append(list(raw))
            else:
                self.columns.append(list(map(weight.__mul__, raw)))  # the same products, x * w == w * x
            factors[id(p)] = factor
        self.dynamic_scorers: list[_Scorer] = [(p.score, w, factors[id(p)]) for p, w in dynamic_scorers]
        # The same additions, in the same order, as sum() of a host's tuple when it is re-evaluated
        # (0 + a == a), without a tuple per host.
        n = len(hosts)
        totals: list[float] = [0.0] * n
        if self.columns:
            totals = self.columns[0]
            for column in self.columns[1:]:
                totals = list(map(operator.add, totals, column))
        entries = list(zip(map(operator.neg, totals), map(salt.__xor__, self.key_hashes), range(n),
                           strict=True))
        fits = list(map(operator.not_, reasons))

        labels = tuple(c.label for c in self.counts)
        self.groups: list[_Group] = []
        group_of: Sequence[int]
        if labels:
            group_keys, all_group_of = view.memo(("placement.domains", labels),
                                                 lambda: _domains_of(all_hosts, labels))
            self.groups = [_Group(key) for key in group_keys]
            groups = self.groups
            if self.sample is None and len(groups) <= _FEW_DOMAINS:
                # a mask per domain: C-level passes instead of a loop per host
                group_of = all_group_of
                masks = view.memo(("placement.domain_masks", labels),
                                  lambda: [[g == gi for g in all_group_of] for gi in range(len(groups))])
                for group, mask in zip(groups, masks, strict=True):
                    group.heap = list(itertools.compress(entries, map(operator.and_, fits, mask)))
            else:
                group_of = all_group_of if self.sample is None else self.sample.take(all_group_of)
                for entry, gi, ok in zip(entries, group_of, fits, strict=True):
                    if ok:
                        groups[gi].heap.append(entry)
            for group in groups:
                group.n_ok = len(group.heap)
        else:
            group = _Group(())
            group.heap = list(itertools.compress(entries, fits))
            group.n_ok = len(group.heap)
            self.groups.append(group)
            group_of = [0] * n
        self.group_of: Sequence[int] = group_of
        self.by_value: list[dict[str | None, list[int]]] = [{} for _ in labels]
        for gi, group in enumerate(self.groups):
            for d, value in enumerate(group.key):
                self.by_value[d].setdefault(value, []).append(gi)

        self.reason_counts: dict[str, int] = {}
        self._reason_summary: tuple[tuple[str, int], ...] | None = None
        for refused in filter(None, reasons):
            self._count(refused, 1)
        self.host_history: dict[int, _History] = {}

        self.n_feasible = 0
        self.finished = False
        for group in self.groups:
            heapq.heapify(group.heap)
            self._judge_domain(group, request)
            group.history = _History((group.reasons, group.scores))
            if group.reasons:
                self._count(group.reasons, group.n_ok)
            else:
                self.n_feasible += group.n_ok
        self._rebuild_global()

    def _initial_scores(self, i: int) -> tuple[float, ...]:
        return tuple(column[i] for column in self.columns)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _judge_domain(self, group: _Group, request: PlacementRequest) -> None:
        reasons: Reasons = ()
        for f, d in self.domain_filters:
            reasons = f.filter_domain(request, self.counts[d], group.key[d])
            if reasons:
                break
        group.reasons = reasons
        if reasons:
            group.scores, group.total = (), 0.0
        else:
            group.scores = tuple(w * s.score_domain(request, self.counts[d], group.key[d])
                                 for s, w, d in self.domain_scorers)
            group.total = sum(group.scores)

    def _entry(self, gi: int) -> tuple[float, int, int, int, int] | None:
        group = self.groups[gi]
        if group.reasons or not group.heap:
            return None
        neg, tiebreak, i = group.heap[0]
        return (neg - group.total, tiebreak, i, gi, group.version)

    def _rebuild_global(self) -> None:
        self.global_heap = [e for e in (self._entry(gi) for gi in range(len(self.groups))) if e is not None]
        heapq.heapify(self.global_heap)

    def _count(self, reasons: Reasons, n: int) -> None:
        if not n:
            return
        self._reason_summary = None
        counts = self.reason_counts
        for r in reasons:
            left = counts.get(r, 0) + n
            if left:
                counts[r] = left
            else:
                del counts[r]

    def reason_summary(self) -> tuple[tuple[str, int], ...]:
        if self._reason_summary is None:
            self._reason_summary = tuple(sorted(self.reason_counts.items(), key=lambda rc: (-rc[1], rc[0])))
        return self._reason_summary

    # -- deciding -------------------------------------------------------------------------------------

    def decide(self, request: PlacementRequest) -> tuple[Outcome, int | None]:
        """The decision for the next replica and the index of its host (None: pending)."""
        if self.finished:
            raise PlacementError("a finished run cannot decide again")
        heap, groups = self.global_heap, self.groups
        while heap:
            neg, _, i, gi, version = heap[0]
            if groups[gi].version == version:
                host = self.hosts[i]
                return Outcome(replica=request.replica, host=host.id, host_name=host.name,
                               feasible=self.n_feasible, hosts=len(self.hosts), reasons=self.reason_summary(),
                               score=-neg, sampled_from=self.hosts_in_cluster if self.sample else 0), i
            heapq.heappop(heap)
        return Outcome(replica=request.replica, host=None, hosts=len(self.hosts),
                       reasons=self.reason_summary()), None

    def assume(self, request: PlacementRequest, i: int) -> None:
        """Place the request on host ``i`` (the best): account for it and re-judge what that changed."""
        host_id = self.hosts[i].id
        self.view.assume(host_id, replica=request.replica, service=request.service, facts=request.facts)
        # The view may have placed on a copy of the host (``ClusterView``, shared): re-judged below, so
        # this run holds the copy from now on.
        host = self.hosts[i] = self.view.by_id[host_id]
        self.step += 1
        gi = self.group_of[i]
        group = self.groups[gi]
        popped = heapq.heappop(group.heap)
        assert popped[2] == i, "the chosen host is the best of its domain"

        # The host: only its accounting changed, so only the host-level plugins that read it run again.
        reasons: Reasons = ()
        for refuse in self.dynamic_filters:
            reasons = refuse(request, host)
            if reasons:
                break
        if reasons:
            scores: tuple[float, ...] = ()
            group.n_ok -= 1
            self.n_feasible -= 1  # its domain was feasible: it was just chosen
            self._count(reasons, 1)
        else:
            static = tuple(column[i] for column in self.columns[:self.n_static_scores])
            scores = static + _weighted(self.dynamic_scorers, request, host)
            heapq.heappush(group.heap, (-sum(scores), self.key_hashes[i] ^ self.salt, i))
        history = self.host_history.get(i)
        if history is None:
            self.host_history[i] = history = _History((self.reasons[i], self._initial_scores(i)))
        history.set(self.step, (reasons, scores))
        self.reasons[i] = reasons

        # The domains: the chosen one has one more replica; when that moved a global minimum, every
        # domain's verdict may have changed.
        if not self.counts:
            self._rejudge(group, request)
            entry = self._entry(gi)
            if entry is not None:
                heapq.heappush(self.global_heap, entry)
            return
        changed = {gi}
        minimum_moved = False
        for d, counts in enumerate(self.counts):
            value = group.key[d]
            if value is None:
                continue
            if counts.add(value):
                minimum_moved = True
            if len(self.counts) > 1:  # with one label, a domain's only group is this one
                changed.update(self.by_value[d].get(value, ()))
        if minimum_moved:
            for other in self.groups:
                self._rejudge(other, request)
            self._rebuild_global()
            return
        for cj in sorted(changed) if len(changed) > 1 else changed:
            self._rejudge(self.groups[cj], request)
            entry = self._entry(cj)
            if entry is not None:
                heapq.heappush(self.global_heap, entry)

    def _rejudge(self, group: _Group, request: PlacementRequest) -> None:
        old = group.reasons
        if self.counts:
            self._judge_domain(group, request)
        group.version += 1
        if group.reasons != old:
            if old:
                self._count(old, -group.n_ok)
            else:
                self.n_feasible -= group.n_ok
            if group.reasons:
                self._count(group.reasons, group.n_ok)
            else:
                self.n_feasible += group.n_ok
            group.history.set(self.step, (group.reasons, group.scores))
        elif self.domain_scorers:
            group.history.set(self.step, (group.reasons, group.scores))

    def finish(self) -> None:
        """Let go of what only deciding reads: the domains' heaps, a tuple per host. A step keeps every
        run for its explanations (``verdicts`` reads the columns and histories, not the heaps), so
        without this a pass kept a tuple per sampled host for every service it placed, and the cyclic
        collector walked them all again each time it ran: a fifth of the cpu of the pass that marks a
        mass failure's 2,000 replicas at 5,000 hosts, a tenth since (docs/scaling.md, part 27)."""
        self.finished = True
        for group in self.groups:
            group.heap = []
        self.global_heap = []

    # -- explaining -----------------------------------------------------------------------------------

    def verdicts(self, step: int) -> tuple[HostVerdict, ...]:
        """Every host as the decision at ``step`` (that many placements made before it) saw it."""
        feasible: list[tuple[float, int, int, HostVerdict]] = []
        refused: list[HostVerdict] = []
        n_host_scores = self.n_host_scores
        for i, host in enumerate(self.hosts):
            history = self.host_history.get(i)
            if history is not None:
                reasons, scores = history.at(step)
            else:
                reasons, scores = self.reasons[i], self._initial_scores(i)
            if not reasons:
                reasons, domain_scores = self.groups[self.group_of[i]].history.at(step)
                scores = scores + domain_scores
            if reasons:
                refused.append(HostVerdict(host=host.id, host_name=host.name, feasible=False,
                                           reasons=reasons))
                continue
            # Summed as the decision summed them, so a verdict's score equals the outcome's exactly.
            total = sum(scores[:n_host_scores]) + sum(scores[n_host_scores:])
            feasible.append((-total, self.key_hashes[i] ^ self.salt, i, HostVerdict(
                host=host.id, host_name=host.name, feasible=True, score=total,
                scores=dict(zip(self.score_names, scores, strict=True)))))
        feasible.sort(key=lambda entry: entry[:3])
        refused.sort(key=lambda v: (v.host_name, v.host))
        return tuple(v for *_, v in feasible) + tuple(refused)


class Placements:
    """The outcome of a batch: a decision per replica in batch order, and their explanations."""

    def __init__(self, outcomes: list[Outcome], steps: dict[ReplicaId, tuple[_Run, int]]) -> None:
        self.outcomes = tuple(outcomes)
        self._by_replica = {o.replica: o for o in outcomes}
        self._steps = steps

    def __getitem__(self, replica: ReplicaId) -> Outcome:
        return self._by_replica[replica]

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def placed(self) -> dict[ReplicaId, HostId]:
        return {o.replica: o.host for o in self.outcomes if o.host is not None}

    @property
    def pending(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.host is None)

    def verdicts(self, replica: ReplicaId) -> tuple[HostVerdict, ...]:
        """Every host as the decision for ``replica`` saw it: feasible ones best first, then the rest."""
        run, step = self._steps[replica]
        return run.verdicts(step)

    def explain(self, replica: ReplicaId) -> Explanation:
        return Explanation(self[replica], self.verdicts(replica))


def _run_key(request: PlacementRequest) -> tuple[object, ...]:
    return (request.service, request.facts, request.placement)


def place(batch: Sequence[PlacementRequest], view: ClusterView, profile: Profile) -> Placements:
    """Place a batch of replicas on the view's hosts and update the view with every placement.

    Replicas of the same service, template and placement rules are decided together in one pass (in
    batch order within it); runs of different services follow the order each first appears in.
    A replica that fits nowhere is pending; the others go on regardless. In a large cluster a run looks
    at a sample of the hosts (``profile.sampling``) until the sample has no room for its next replica.
    """
    seen: set[ReplicaId] = set()
    for request in batch:
        if request.replica in seen:
            raise PlacementError(f"replica {request.replica} appears twice in the batch")
        seen.add(request.replica)
        where = view.host_of(request.replica)
        if where is not None:
            raise PlacementError(f"replica {request.replica} is already on host {where}")
    runs: dict[tuple[object, ...], list[PlacementRequest]] = {}
    for request in batch:
        runs.setdefault(_run_key(request), []).append(request)

    decided: dict[ReplicaId, Outcome] = {}
    steps: dict[ReplicaId, tuple[_Run, int]] = {}
    for requests in runs.values():
        run = _Run(view, profile, requests[0], profile.sampling.wanted(len(view.hosts), len(requests)))
        for request in requests:
            outcome, chosen = run.decide(request)
            if chosen is None and run.sample is not None:
                # The sample has no room left: the rest of the run looks at every host, so pending
                # always means that no host in the cluster fits.
                run.finish()
                run = _Run(view, profile, request)
                outcome, chosen = run.decide(request)
            decided[request.replica] = outcome
            steps[request.replica] = (run, run.step)
            if chosen is not None:
                run.assume(request, chosen)
        run.finish()
    return Placements([decided[r.replica] for r in batch], steps)


def explain(request: PlacementRequest, view: ClusterView, profile: Profile) -> Explanation:
    """Where ``request`` would go on this view and every host's verdict, without placing it. For a
    replica that is already placed, pass a view built without it."""
    run = _Run(view, profile, request)
    return Explanation(run.decide(request)[0], run.verdicts(0))


__all__ = ["Explanation", "HostVerdict", "Outcome", "Placements", "explain", "pending_summary", "place",
           "placed_reason"]
