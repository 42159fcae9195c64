"""The reconcile step, rule by rule: (world) → record writes + agent actions."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace

import pytest

from scheduler import reconcile
from scheduler.model import (
    Decision,
    HostAdmin,
    HostId,
    HostPort,
    HostRecord,
    HostStatus,
    Replica,
    ReplicaId,
    ReplicaPhase,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateFacts,
    UpdatePolicy,
)
from scheduler.observed import ContainerState, Health, HostObservation, ObservedContainer
from scheduler.reconcile import Launch, Retire, World, WriteReplica

NOW = 1_000.0
HOSTS = (HostId("h1"), HostId("h2"), HostId("h3"))


def service(replicas: int = 3, *, name: str = "web", template_generation: int = 1, restart: str = "always",
            update: UpdatePolicy | None = None, deleting: bool = False) -> Service:
    spec = ServiceSpec(name=ServiceName(name), replicas=replicas, template_json="{}",
                       facts=TemplateFacts(image="busybox", restart=restart), update=update or UpdatePolicy())
    return Service(spec=spec, generation=template_generation, template_generation=template_generation,
                   deleting=deleting, revision=5)


def replica(rid: str, *, host: str | None = "h1", phase: ReplicaPhase = ReplicaPhase.RUNNING,
            ready: bool = True, generation: int = 1, service: str = "web", **kw: object) -> Replica:
    """A replica as the last step left it (a running one says "running")."""
    kw.setdefault("reason", "running" if phase is ReplicaPhase.RUNNING and ready else "")
    return Replica(id=ReplicaId(rid), service=ServiceName(service), generation=generation,
                   host=HostId(host) if host else None, phase=phase, ready=ready, revision=7,
                   **kw)  # type: ignore[arg-type]


def container(rid: str, *, state: ContainerState = ContainerState.RUNNING, health: Health = Health.NONE,
              service: str | None = "web", generation: int = 1, **kw: object) -> ObservedContainer:
    return ObservedContainer(id=rid, service=ServiceName(service) if service else None,
                             replica=ReplicaId(rid) if service else None, generation=generation, state=state,
                             health=health, **kw)  # type: ignore[arg-type]


def hosts(**admin: HostAdmin) -> dict[HostId, HostRecord]:
    return {h: HostRecord(id=h, name=f"host-{h}", address=f"10.0.0.{i + 1}:7070",
                          admin=admin.get(h, HostAdmin.ACTIVE))
            for i, h in enumerate(HOSTS)}


def observe(*containers_by_host: tuple[str, Sequence[ObservedContainer]], complete: bool = True,
            connected: bool = True) -> dict[HostId, HostObservation]:
    seen = {h: HostObservation(host=h, connected=connected, complete=complete) for h in HOSTS}
    for host, found in containers_by_host:
        seen[HostId(host)] = HostObservation(host=HostId(host), connected=connected, complete=complete,
                                             containers={c.id: c for c in found})
    return seen


class RoundRobin:
    """A stand-in placer: active hosts in turn; ``full`` makes every placement fail."""

    def __init__(self, world_hosts: Mapping[HostId, HostRecord], *, full: bool = False) -> None:
        active = [h for h, r in sorted(world_hosts.items()) if r.admin is HostAdmin.ACTIVE]
        self.cycle = itertools.cycle(active)
        self.full = full

    def place(self, svc: Service,
              replicas: Sequence[Replica]) -> Mapping[ReplicaId, tuple[HostId | None, str]]:
        if self.full:
            return {r.id: (None, "0/3 hosts: 3 insufficient memory") for r in replicas}
        return {r.id: (next(self.cycle), "fits") for r in replicas}

    def removal_order(self, replicas: Sequence[Replica]) -> list[Replica]:
        """The least useful first (pending, failed, starting, not ready, newest), then by id."""
        rank = {ReplicaPhase.PENDING: 0, ReplicaPhase.FAILED: 1, ReplicaPhase.STARTING: 2}
        return sorted(replicas, key=lambda r: (rank.get(r.phase, 3), r.ready, -r.created_at, r.id))


def run(world: World, *, full: bool = False) -> reconcile.Plan:
    counter = itertools.count(1)
    return reconcile.step(world, placer=RoundRobin(world.hosts, full=full),
                          new_id=lambda name: ReplicaId(f"{name}-{next(counter):04d}"))


def world(services: Sequence[Service], replicas: Sequence[Replica] = (), *, observed: dict | None = None,
          admin: dict[str, HostAdmin] | None = None, **kw: object) -> World:
    return World(services={s.name: s for s in services}, replicas={r.id: r for r in replicas},
                 hosts=hosts(**(admin or {})), statuses={h: HostStatus(id=h, ready=True) for h in HOSTS},
                 observed=observed if observed is not None else observe(), now=NOW, **kw)  # type: ignore[arg-type]


def written(plan: reconcile.Plan) -> dict[str, Replica]:
    return {w.replica.id: w.replica for w in plan.writes if isinstance(w, WriteReplica)}


def launches(plan: reconcile.Plan) -> list[tuple[str, str]]:
    return sorted((a.replica, a.host) for a in plan.actions if isinstance(a, Launch))


def retires(plan: reconcile.Plan) -> list[tuple[str, str]]:
    return sorted((a.container, a.host) for a in plan.actions if isinstance(a, Retire))


# -- scaling and placing ----------------------------------------------------------------------------

def test_a_new_service_gets_its_replicas_created_placed_and_launched() -> None:
    plan = run(world([service(3)]))
    reps = written(plan)
    assert sorted(reps) == ["web-0001", "web-0002", "web-0003"]
    assert {r.host for r in reps.values()} == set(HOSTS)
    assert all(r.phase is ReplicaPhase.STARTING and r.revision == 0 for r in reps.values())
    assert [d.action for d in reps["web-0001"].decisions] == ["created", "placed"]
    assert launches(plan) == [("web-0001", "h1"), ("web-0002", "h2"), ("web-0003", "h3")]


def test_replicas_follow_their_containers() -> None:
    reps = [replica("a", phase=ReplicaPhase.STARTING, ready=False),
            replica("b", host="h2", phase=ReplicaPhase.STARTING, ready=False)]
    plan = run(world([service(2)], reps, observed=observe(
        ("h1", [container("a", ports=(HostPort(8080, 31000),))]),
        ("h2", [container("b", health=Health.STARTING)]))))
    out = written(plan)
    assert out["a"].phase is ReplicaPhase.RUNNING and out["a"].ready
    assert out["a"].ports == (HostPort(8080, 31000),)
    assert out["b"].phase is ReplicaPhase.RUNNING and not out["b"].ready
    assert plan.actions == ()


def test_nothing_changes_when_everything_is_as_desired() -> None:
    reps = [replica("a"), replica("b", host="h2")]
    observed = observe(("h1", [container("a")]), ("h2", [container("b")]))
    assert run(world([service(2)], reps, observed=observed)).empty


def test_scale_down_stops_the_least_useful_then_drops_records_once_containers_are_gone() -> None:
    reps = [replica("a"), replica("b", host="h2", ready=False),
            replica("c", host="h3", phase=ReplicaPhase.PENDING, ready=False)]
    observed = observe(("h1", [container("a")]), ("h2", [container("b", health=Health.UNHEALTHY)]))
    plan = run(world([service(1)], reps, observed=observed))
    out = written(plan)
    # The two least useful go: b (not ready) is stopped on its host; c (pending) never had a container,
    # so its record is dropped at once.
    assert {rid for rid, r in out.items() if r.phase is ReplicaPhase.STOPPING} == {"b"}
    assert retires(plan) == [("b", "h2")]
    assert [w.replica.id for w in plan.writes if isinstance(w, reconcile.DropReplica)] == ["c"]
    stopped = replace(out["b"], revision=8)
    after = run(world([service(1)], [reps[0], stopped], observed=observe(("h1", [container("a")]))))
    assert [w.replica.id for w in after.writes if isinstance(w, reconcile.DropReplica)] == ["b"]


def test_scale_down_takes_the_placers_removal_order() -> None:
    """The placer knows the spread (kube's rule: the most crowded host and domain first); the step
    removes in its order, so what is left stays spread."""
    class Crowded(RoundRobin):
        def removal_order(self, replicas: Sequence[Replica]) -> list[Replica]:
            return sorted(replicas, key=lambda r: r.id, reverse=True)

    reps = [replica("a"), replica("b", host="h2"), replica("c", host="h3")]
    observed = observe(("h1", [container("a")]), ("h2", [container("b")]), ("h3", [container("c")]))
    w = world([service(1)], reps, observed=observed)
    plan = reconcile.step(w, placer=Crowded(w.hosts), new_id=lambda name: ReplicaId(f"{name}-new"))
    assert {rid for rid, r in written(plan).items() if r.phase is ReplicaPhase.STOPPING} == {"b", "c"}
    # Running as recorded, they were only counted until the scale-down stopped them: retired at once.
    assert retires(plan) == [("b", "h2"), ("c", "h3")]


def test_settled_replicas_count_toward_the_desired_number() -> None:
    """Replicas running as recorded are counted, not looked at one by one: beside one starting and one
    failed, the service gets exactly the one more it lacks, and the failed one is relaunched."""
    reps = [replica("a"), replica("b", host="h2"), replica("c", host="h3", phase=ReplicaPhase.STARTING,
                                                           ready=False),
            replica("d", host="h3", phase=ReplicaPhase.FAILED, ready=False, reason="exited 1 (error)")]
    observed = observe(("h1", [container("a")]), ("h2", [container("b")]),
                       ("h3", [container("d", state=ContainerState.EXITED, exit_code=1)]))
    plan = run(world([service(5)], reps, observed=observed))
    created = [r for rid, r in written(plan).items() if rid not in ("a", "b", "c", "d")]
    assert len(created) == 1
    assert ("c", "h3") in launches(plan) and ("d", "h3") in launches(plan)


def test_replicas_that_fit_nowhere_stay_pending_with_a_reason_recorded_once() -> None:
    plan = run(world([service(1)]), full=True)
    (pending,) = written(plan).values()
    assert pending.phase is ReplicaPhase.PENDING and pending.reason == "0/3 hosts: 3 insufficient memory"
    again = run(world([service(1)], [replace(pending, revision=3)]), full=True)
    assert again.empty  # same reason: no write, no new decision


# -- failures ----------------------------------------------------------------------------------------

def test_a_failed_launch_backs_off_then_relaunches() -> None:
    starting = replica("a", phase=ReplicaPhase.STARTING, ready=False)
    failure = {ReplicaId("a"): reconcile.LaunchFailure("pull 10.0.0.9:5000/app:1: connection refused", NOW)}
    plan = run(world([service(1)], [starting], launch_failures=failure))
    failed = written(plan)["a"]
    assert failed.phase is ReplicaPhase.FAILED and "connection refused" in failed.reason
    assert failed.next_attempt_at == NOW + reconcile.backoff(0)
    assert launches(plan) == []
    later = World(**{**world([service(1)], [replace(failed, revision=8)]).__dict__, "now": NOW + 5})
    relaunch = run(later)
    assert launches(relaunch) == [("a", "h1")]
    assert written(relaunch)["a"].restarts == 1 and written(relaunch)["a"].phase is ReplicaPhase.STARTING


def test_an_exited_container_is_relaunched_in_place_per_its_restart_policy() -> None:
    exited = observe(("h1", [container("a", state=ContainerState.EXITED, exit_code=1, reason="Error")]))
    plan = run(world([service(1)], [replica("a")], observed=exited))
    failed = written(plan)["a"]
    assert failed.phase is ReplicaPhase.FAILED and failed.reason == "exited 1 (Error)"
    due = World(**{**world([service(1)], [replace(failed, revision=8)], observed=exited).__dict__,
                   "now": failed.next_attempt_at})
    (action,) = run(due).actions
    assert isinstance(action, Launch) and action.replace  # the exited container goes first
    never = World(**{**world([service(1, restart="no")], [replace(failed, revision=8)],
                             observed=exited).__dict__, "now": failed.next_attempt_at})
    assert run(never).actions == ()


def test_a_container_removed_behind_the_schedulers_back_is_recreated() -> None:
    plan = run(world([service(1)], [replica("a")], observed=observe(("h1", []))))
    assert written(plan)["a"].phase is ReplicaPhase.STARTING and written(plan)["a"].restarts == 1
    assert launches(plan) == [("a", "h1")]


def test_an_incomplete_or_disconnected_view_is_never_taken_for_a_missing_container() -> None:
    reps = [replica("a")]
    assert run(world([service(1)], reps, observed=observe(("h1", []), complete=False))).empty
    assert run(world([service(1)], reps, observed=observe(("h1", []), connected=False))).empty


def test_an_action_in_flight_is_not_repeated() -> None:
    starting = replica("a", phase=ReplicaPhase.STARTING, ready=False)
    assert launches(run(world([service(1)], [starting]))) == [("a", "h1")]
    assert run(world([service(1)], [starting], busy=frozenset({"a"}))).empty


# -- orphans ------------------------------------------------------------------------------------------

def test_containers_no_replica_owns_are_retired_only_from_a_complete_view() -> None:
    stray = container("web-gone")
    theirs = container("not-ours", service=None)
    plan = run(world([service(0)], observed=observe(("h2", [stray, theirs]))))
    assert retires(plan) == [("web-gone", "h2")]
    assert run(world([service(0)], observed=observe(("h2", [stray]), complete=False))).empty


def test_a_replica_running_on_another_host_than_its_record_says_is_retired_there() -> None:
    plan = run(world([service(1)], [replica("a", host="h1")],
                     observed=observe(("h1", [container("a")]), ("h3", [container("a")]))))
    assert retires(plan) == [("a", "h3")]


# -- rollouts and drains --------------------------------------------------------------------------

def test_a_rollout_brings_new_replicas_up_before_old_ones_stop() -> None:
    svc = service(3, template_generation=2, update=UpdatePolicy(max_surge=1, max_unavailable=0))
    old = [replica(f"o{i}", host=h, generation=1) for i, h in enumerate(HOSTS)]
    observed = observe(*((h, [container(f"o{i}", generation=1)]) for i, h in enumerate(HOSTS)))
    plan = run(world([svc], old, observed=observed))
    new = {rid: r for rid, r in written(plan).items() if r.generation == 2}
    assert len(new) == 1 and not any(r.phase is ReplicaPhase.STOPPING for r in written(plan).values())
    (rid,) = new
    ready_new = replace(new[rid], phase=ReplicaPhase.RUNNING, ready=True, revision=3)
    observed[ready_new.host] = HostObservation(  # type: ignore[index]
        host=ready_new.host, connected=True, complete=True,  # type: ignore[arg-type]
        containers={**observed[ready_new.host].containers, rid: container(rid, generation=2)})  # type: ignore[index]
    nxt = run(world([svc], [*old, ready_new], observed=observed))
    stopping = [r for r in written(nxt).values() if r.phase is ReplicaPhase.STOPPING]
    assert len(stopping) == 1 and stopping[0].generation == 1
    assert "rolling update to generation 2" in stopping[0].reason


def test_a_new_replica_running_as_recorded_counts_as_available_in_a_rollout() -> None:
    """Mid-rollout, the new replica is running as recorded (counted, not looked at): with it, one more
    old one than the floor is ready, so exactly one old replica stops and none is created."""
    svc = service(3, template_generation=2, update=UpdatePolicy(max_surge=1, max_unavailable=0))
    old = [replica(f"o{i}", host=h, generation=1) for i, h in enumerate(HOSTS)]
    new = replica("n", host="h1", generation=2)
    observed = observe(("h1", [container("o0", generation=1), container("n", generation=2)]),
                       ("h2", [container("o1", generation=1)]), ("h3", [container("o2", generation=1)]))
    plan = run(world([svc], [*old, new], observed=observed))
    out = written(plan)
    assert [r.generation for r in out.values() if r.phase is ReplicaPhase.STOPPING] == [1]
    assert all(rid in ("o0", "o1", "o2") for rid in out)


def test_a_rollout_with_no_surge_and_no_unavailability_still_progresses() -> None:
    """Both 0 would deadlock: as in Kubernetes, one replica may then be unavailable."""
    svc = service(1, template_generation=2, update=UpdatePolicy(max_surge=0, max_unavailable=0))
    plan = run(world([svc], [replica("o", generation=1)], observed=observe(("h1", [container("o")]))))
    assert written(plan)["o"].phase is ReplicaPhase.STOPPING


def test_percentages_of_the_desired_count_bound_a_rollout() -> None:
    policy = UpdatePolicy(max_surge=0, max_unavailable=0, max_surge_percent=50, max_unavailable_percent=25)
    svc = service(4, template_generation=2, update=policy)
    old = [replica(f"o{i}", host=HOSTS[i % 3], generation=1) for i in range(4)]
    observed = observe(*((h, [container(r.id) for r in old if r.host == h]) for h in HOSTS))
    plan = run(world([svc], old, observed=observed))
    assert sum(r.generation == 2 for r in written(plan).values()) == 2      # surge: 50% of 4
    assert sum(r.phase is ReplicaPhase.STOPPING for r in written(plan).values()) == 1  # 25% of 4


def test_a_drain_moves_replicas_elsewhere_first() -> None:
    reps = [replica("a", host="h1"), replica("b", host="h2")]
    observed = observe(("h1", [container("a")]), ("h2", [container("b")]))
    plan = run(world([service(2)], reps, observed=observed, admin={"h1": HostAdmin.DRAINING}))
    new = [r for rid, r in written(plan).items() if rid not in ("a", "b")]
    assert len(new) == 1 and new[0].host != "h1"
    assert "a" not in written(plan)  # still serving until its replacement is ready


# -- host failure -----------------------------------------------------------------------------------

def lost_world(since: float, grace: float = 3.0) -> World:
    reps = [replica("a", host="h1"), replica("b", host="h2")]
    observed = observe(("h2", [container("b")]))
    observed[HostId("h1")] = HostObservation(host=HostId("h1"), connected=False, complete=False)
    return world([service(2)], reps, observed=observed, unreachable_since={HostId("h1"): since},
                 host_grace=grace)


def test_a_host_unreachable_within_its_grace_period_moves_nothing() -> None:
    plan = run(lost_world(since=NOW - 2.9))
    assert plan.empty
    assert lost_world(since=NOW - 2.9).lost_at(HostId("h1")) == pytest.approx(NOW + 0.1)


def test_a_host_unreachable_past_its_grace_period_has_its_replicas_replaced_elsewhere() -> None:
    plan = run(lost_world(since=NOW - 3.0))
    changed = written(plan)
    assert changed["a"].phase is ReplicaPhase.STOPPING
    assert "unreachable for 3.0 s" in changed["a"].reason and "replaced elsewhere" in changed["a"].reason
    new = [r for rid, r in changed.items() if rid not in ("a", "b")]
    assert len(new) == 1 and new[0].phase is ReplicaPhase.STARTING
    assert not retires(plan)  # nothing can be asked of an unreachable host
    assert plan.abandoned == {HostId("h1"): 1}  # what the controller says it replaced, and from where


def test_a_host_whose_agent_alone_is_down_gets_the_longer_grace() -> None:
    """Connection refused: the host answers, its agent restarts, its containers most likely run on."""
    w = replace(lost_world(since=NOW - 10.0), agent_down=frozenset({HostId("h1")}), agent_down_grace=30.0)
    assert run(w).empty
    late = replace(w, now=NOW + 20.0)
    assert "its agent has not answered for 30.0 s" in written(run(late))["a"].reason


def mass_loss_world(hosts_count: int, lost_count: int, **kw: object) -> World:
    """``hosts_count`` hosts with one replica each; the first ``lost_count`` unreachable past the grace."""
    ids = [HostId(f"m{i:02d}") for i in range(hosts_count)]
    records = {h: HostRecord(id=h, name=f"host-{h}", address=f"10.1.0.{i + 1}:7070")
               for i, h in enumerate(ids)}
    reps = [replica(f"r{i:02d}", host=h) for i, h in enumerate(ids)]
    observed = {h: HostObservation(host=h, connected=i >= lost_count, complete=i >= lost_count,
                                   containers={} if i < lost_count else {f"r{i:02d}": container(f"r{i:02d}")})
                for i, h in enumerate(ids)}
    return World(services={ServiceName("web"): service(hosts_count)}, replicas={r.id: r for r in reps},
                 hosts=records,
                 statuses={h: HostStatus(id=h, ready=i >= lost_count) for i, h in enumerate(ids)},
                 observed=observed, now=NOW, unreachable_since={h: NOW - 10.0 for h in ids[:lost_count]},
                 **kw)  # type: ignore[arg-type]


def abandoned(plan: reconcile.Plan) -> list[str]:
    return sorted(rid for rid, r in written(plan).items() if r.phase is ReplicaPhase.STOPPING)


@pytest.mark.parametrize(("hosts_count", "lost_count", "max_share", "held"), [
    (10, 6, reconcile.MAX_LOST_SHARE, True),   # more than half of 10: held
    (10, 5, reconcile.MAX_LOST_SHARE, False),  # half: replaced
    (10, 10, reconcile.MAX_LOST_SHARE, True),  # every host: held
    (10, 6, 1.0, False),                       # the guard turned off
    (9, 8, reconcile.MAX_LOST_SHARE, False),   # a cluster too small for a share to mean anything
    (20, 9, 0.4, True),                        # a share of one's own
], ids=["6/10", "5/10", "10/10", "6/10 share 1", "8/9", "9/20 share 0.4"])
def test_when_too_many_hosts_are_lost_at_once_their_replicas_are_held_not_replaced(
        hosts_count: int, lost_count: int, max_share: float, held: bool) -> None:
    """The leader then more likely lost its view of them (its network, its load) than they all died:
    replacing would pile their replicas onto the few hosts it still hears."""
    plan = run(mass_loss_world(hosts_count, lost_count, max_lost_share=max_share))
    if held:
        assert plan.lost_held == lost_count and abandoned(plan) == [] and not launches(plan)
        assert plan.abandoned == {}
    else:
        assert plan.lost_held == 0
        assert abandoned(plan) == [f"r{i:02d}" for i in range(lost_count)]
        assert plan.abandoned == {HostId(f"m{i:02d}"): 1 for i in range(lost_count)}


def test_hosts_that_hold_no_replicas_do_not_count_toward_a_mass_loss() -> None:
    """A fleet joining at once: most of its hosts are still being reached for the first time past the
    grace, with nothing on them. The few hosts that hold replicas and are lost are replaced."""
    w = mass_loss_world(10, 2)  # two of ten replica-holding hosts lost
    empty = {HostId(f"e{i:02d}"): HostRecord(id=HostId(f"e{i:02d}"), name=f"empty-{i}",
                                            address=f"10.2.0.{i + 1}:7070") for i in range(30)}
    joining = replace(w, hosts={**w.hosts, **empty},
                      statuses={**w.statuses, **{h: HostStatus(id=h) for h in empty}},
                      observed={**w.observed, **{h: HostObservation(host=h) for h in empty}},
                      unreachable_since={**w.unreachable_since, **dict.fromkeys(empty, NOW - 10.0)})
    plan = run(joining)  # 32 of 40 hosts lost, but 2 of the 10 that hold replicas
    assert plan.lost_held == 0 and abandoned(plan) == ["r00", "r01"]
    held = run(replace(joining, unreachable_since={**joining.unreachable_since,
                                                   **{HostId(f"m{i:02d}"): NOW - 10.0 for i in range(6)}}))
    assert held.lost_held == 6 and abandoned(held) == []  # 6 of the 10 that hold replicas: held


def test_a_held_loss_is_replaced_once_enough_hosts_are_back() -> None:
    held = run(mass_loss_world(10, 6))
    assert held.lost_held == 6 and abandoned(held) == []
    later = run(mass_loss_world(10, 4))  # two came back: four lost of ten is not too many
    assert later.lost_held == 0 and abandoned(later) == ["r00", "r01", "r02", "r03"]


def test_when_the_host_is_back_its_abandoned_replicas_are_retired_there() -> None:
    """After a partition heals, the old copy stops: never more than the declared count for long."""
    reps = [replica("a", host="h1", phase=ReplicaPhase.STOPPING, ready=False, reason="unreachable"),
            replica("b", host="h2"), replica("c", host="h3")]
    observed = observe(("h1", [container("a")]), ("h2", [container("b")]), ("h3", [container("c")]))
    plan = run(world([service(2)], reps, observed=observed))
    assert retires(plan) == [("a", "h1")]
    assert not launches(plan) and not [w for w in written(plan) if w not in ("a",)]
    gone = observe(("h2", [container("b")]), ("h3", [container("c")]))
    dropped = run(world([service(2)], reps, observed=gone))
    assert [w.replica.id for w in dropped.writes if isinstance(w, reconcile.DropReplica)] == ["a"]


# -- deletion -------------------------------------------------------------------------------------

def test_deleting_a_service_stops_every_replica_then_drops_the_service() -> None:
    svc = service(2, deleting=True)
    reps = [replica("a"), replica("b", host="h2")]
    plan = run(world([svc], reps, observed=observe(("h1", [container("a")]), ("h2", [container("b")]))))
    assert all(r.phase is ReplicaPhase.STOPPING for r in written(plan).values())
    assert retires(plan) == [("a", "h1"), ("b", "h2")]
    done = run(world([svc], [], observed=observe()))
    assert [type(w).__name__ for w in done.writes] == ["DropService"]


@pytest.mark.parametrize("restarts", [0, 1, 5, 30])
def test_backoff_doubles_and_is_capped(restarts: int) -> None:
    assert reconcile.backoff(restarts) == min(reconcile.BACKOFF_CAP, reconcile.BACKOFF_BASE * 2 ** restarts)


# -- hosts that keep failing to start containers ------------------------------------------------------

def test_a_failed_replica_on_a_start_failing_host_is_placed_again_elsewhere() -> None:
    failed = replica("a", phase=ReplicaPhase.FAILED, ready=False, reason="could not create its container",
                     next_attempt_at=NOW - 1)
    exited = observe(("h1", [container("a", state=ContainerState.EXITED, exit_code=1)]))
    w = world([service(1)], [failed], observed=exited)
    statuses = dict(w.statuses)
    statuses[HostId("h1")] = HostStatus(id=HostId("h1"), ready=True, start_failing=True, start_failures=3,
                                        start_failure_reason="cannot prepare /var/lib/shoal: Read-only")
    plan = run(replace(w, statuses=statuses))
    moved = written(plan)["a"]
    assert (moved.phase, moved.host, moved.restarts) == (ReplicaPhase.PENDING, None, 1)
    assert "keeps failing to start containers (3 in a row, last: cannot prepare" in moved.reason
    assert moved.decisions[-1].action == "rescheduled"
    assert launches(plan) == []                # not relaunched where it failed
    assert retires(plan) == [("a", "h1")]      # and its dead container there goes
    # On a healthy host the same replica is relaunched in place.
    assert launches(run(w)) == [("a", "h1")]


# -- what is worth writing ---------------------------------------------------------------------------

# A value other than ``replica("a")``'s for every field of a replica record.
_OTHER: dict[str, object] = {
    "id": ReplicaId("b"), "service": ServiceName("db"), "generation": 2, "host": HostId("h2"),
    "phase": ReplicaPhase.FAILED, "ready": False, "reason": "exited", "created_at": 5.0, "restarts": 1,
    "next_attempt_at": 9.0, "ports": (HostPort(container_port=80, host_port=30000),),
    "decisions": (Decision(time=1.0, action="placed", reason="fits"),), "revision": 8,
}


@pytest.mark.parametrize("name", [f.name for f in fields(Replica) if f.name != "updated_at"])
def test_every_field_but_the_write_time_makes_a_replica_worth_writing(name: str) -> None:
    assert name in _OTHER, f"a new Replica field {name!r}: give _OTHER a value for it"
    before = replica("a")
    assert reconcile._changed(before, replace(before, **{name: _OTHER[name]}))  # type: ignore[arg-type]
    assert not reconcile._changed(before, replace(before, updated_at=before.updated_at + 60))


def test_a_replica_whose_container_moved_on_is_written_with_the_new_phase_and_reason() -> None:
    reps = [replica("a", phase=ReplicaPhase.STARTING, ready=False, reason="")]
    plan = run(world([service(1)], reps, observed=observe(("h1", [container("a")]))))
    assert (written(plan)["a"].phase, written(plan)["a"].reason) == (ReplicaPhase.RUNNING, "running")
    settled = run(world([service(1)], [written(plan)["a"]], observed=observe(("h1", [container("a")]))))
    assert settled.empty


def test_a_placement_budget_defers_whole_services_and_the_next_step_resumes_after_the_last_placed() -> None:
    services = [service(10, name=n) for n in ("a", "b", "c")]

    def placed(plan: reconcile.Plan) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in written(plan).values():
            if r.host is not None:
                counts[r.service] = counts.get(r.service, 0) + 1
        return counts

    first = run(world(services, place_budget=15))
    # "a" (10) leaves budget, so "b" is placed whole (20 handed over); "c" waits, its replicas not even
    # created: the step that places them creates them (one write each, not a pending one and a placed).
    assert placed(first) == {"a": 10, "b": 10}
    assert not [r for r in written(first).values() if r.service == "c"]
    assert (first.deferred, first.placed_through, first.waiting) == (True, "b", {"c"})
    second = run(world(services, list(written(first).values()), place_budget=15,
                       place_from=ServiceName("b")))
    assert placed(second) == {"c": 10}  # "c" first now; "a" and "b" have nothing pending
    assert all([d.action for d in r.decisions] == ["created", "placed"]
               for r in written(second).values())
    assert (second.deferred, second.placed_through) == (False, "c")


def test_replicas_pending_over_the_budget_stay_pending_and_are_placed_by_a_later_step() -> None:
    # Replicas already recorded pending (none fit before; room since) wait their turn as they are.
    services = [service(10, name=n) for n in ("a", "b")]
    pending = [replica(f"b{i}", service="b", host=None, phase=ReplicaPhase.PENDING, ready=False,
                       reason="0/1 hosts: insufficient cpu") for i in range(10)]
    first = run(world(services, pending, place_budget=5))
    assert {r.service for r in written(first).values()} == {"a"}
    assert first.deferred and first.waiting == {"b"}
    second = run(world(services, [*written(first).values(), *pending], place_budget=5,
                       place_from=first.placed_through))
    assert sum(r.host is not None for r in written(second).values() if r.service == "b") == 10


def test_without_a_budget_every_pending_replica_is_placed_in_one_step() -> None:
    plan = run(world([service(10, name=n) for n in ("a", "b", "c")]))
    assert sum(1 for r in written(plan).values() if r.host is not None) == 30
    assert not plan.deferred


def test_the_plan_says_which_replicas_it_placed_that_had_no_host() -> None:
    """``Plan.placed``: what the placement metric counts (a pending replica given a host, one created and
    placed in the same step), not a replica whose record already had one."""
    w = world([service(3)], [replica("web-1"), replica("web-2", host=None, phase=ReplicaPhase.PENDING,
                                                        ready=False)],
              observed=observe(("h1", [container("web-1")])))
    plan = run(w)
    written = {x.replica.id: x.replica for x in plan.writes if isinstance(x, WriteReplica)}
    created = [rid for rid in written if rid not in w.replicas]
    assert len(created) == 1
    assert plan.placed == {"web-2", created[0]}
    assert all(written[rid].host is not None for rid in plan.placed)


def test_draining_hosts_the_caller_keeps_are_those_the_step_uses() -> None:
    """``World.draining``, when given, stands for the hosts' records: a replica on a host the caller says
    is draining gets a replacement (where, the placer says from the hosts' records), whatever the host's
    record says."""
    reps = [replica("a", host="h1"), replica("b", host="h2")]
    observed = observe(("h1", [container("a")]), ("h2", [container("b")]))
    w = world([service(2)], reps, observed=observed)
    assert run(w).empty
    plan = run(replace(w, draining=frozenset({HostId("h1")})))
    assert len([rid for rid in written(plan) if rid not in ("a", "b")]) == 1
    recorded = world([service(2)], reps, observed=observed, admin={"h1": HostAdmin.DRAINING})
    assert not run(recorded).empty and run(replace(recorded, draining=frozenset())).empty
