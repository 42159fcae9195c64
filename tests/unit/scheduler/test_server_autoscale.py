"""The scheduler API and autoscale policies, through the generated stubs on an in-process server over a
MemoryStore: apply creates an autoscaled service at its initial count and, for an existing one, keeps the
count the autoscaler set (clamped to the new min..max, said in ``replicas_kept``) instead of the file's;
``AutoscaleService`` sets or removes only the policy, with compare-and-swap, validated like the file
(INVALID_ARGUMENT naming the path); ``ScaleService`` by hand still works on an autoscaled service."""

from __future__ import annotations

import dataclasses

import grpc

from proto.scheduler.v1 import scheduler_pb2 as pb
from scheduler.model import MetricKind, MetricTarget, Service
from tests.fixtures.scheduler_api import Api, apply, put, rejected, run, service_yaml, shoal_error


def autoscaled(name: str = "web", *, low: int = 2, high: int = 10, replicas: int | None = None,
               extra: str = "") -> str:
    """A service file with a cpu request and ``autoscale: {min: low, max: high}`` on cpu 60%."""
    count = f"replicas: {replicas}\n" if replicas is not None else ""
    return (f"name: {name}\n{count}template:\n  image: busybox:1\n  resources: {{cpus: 0.5, memory: 64M}}\n"
            f"autoscale:\n  min: {low}\n  max: {high}\n  metrics: [cpu: {{target_utilization_percent: 60}}]\n"
            + extra)


async def stored(api: Api, name: str = "web") -> Service:
    service = await api.store.get(api.store.schema.service(name))
    assert service is not None, f"service {name} is not in the store"
    return service


async def autoscaler_sets(api: Api, replicas: int, name: str = "web") -> None:
    """Writes the count as the leader's autoscale loop would: the service record, compare-and-swap."""
    service = await stored(api, name)
    await put(api, dataclasses.replace(service, spec=dataclasses.replace(service.spec, replicas=replicas)))


def cpu_policy(low: int | None, high: int, percent: int = 60) -> pb.Autoscale:
    policy = pb.Autoscale(max_replicas=high, metrics=[pb.MetricTarget(kind="cpu",
                                                                      target_utilization_percent=percent)])
    if low is not None:
        policy.min_replicas = low
    return policy


async def set_policy(api: Api, policy: pb.Autoscale | None, *, name: str = "web",
                     expected: int = 0) -> pb.Service:
    request = pb.AutoscaleServiceRequest(name=name, expected_generation=expected)
    if policy is None:
        request.off = True
    else:
        request.autoscale.CopyFrom(policy)
    service: pb.Service = await api.scheduler.AutoscaleService(request)
    return service


# -- apply --------------------------------------------------------------------------------------------------

def test_apply_creates_an_autoscaled_service_at_its_initial_count_with_the_whole_policy() -> None:
    async def scenario(api: Api) -> None:
        [result] = await apply(api, autoscaled(low=3))
        assert (result.action, result.replicas_kept, result.service.spec.replicas) == ("created", False, 3)
        policy = result.service.spec.autoscale
        assert (policy.min_replicas, policy.max_replicas, policy.tolerance_up, policy.tolerance_down) == (
            3, 10, 0.1, 0.1)
        assert [(m.kind, m.target_utilization_percent) for m in policy.metrics] == [("cpu", 60)]
        up, down = policy.behavior.scale_up, policy.behavior.scale_down  # Kubernetes' defaults, filled in
        assert [(p.type, p.value, p.period_seconds) for p in up.policies] == [("replicas", 4, 15),
                                                                              ("percent", 100, 15)]
        assert (down.stabilization_window_seconds, down.select_policy) == (300, "max")
        service = await stored(api)
        assert service.spec.autoscale is not None and service.spec.autoscale.metrics == (
            MetricTarget(MetricKind.CPU, target_utilization_percent=60),)
        [given] = await apply(api, autoscaled("api", replicas=5))
        assert given.service.spec.replicas == 5

    run(scenario)


def test_re_applying_the_file_keeps_the_count_the_autoscaler_set() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled())
        await autoscaler_sets(api, 7)
        revision = await api.store.current_revision()
        for text in (autoscaled(), autoscaled(replicas=2)):
            [result] = await apply(api, text)
            assert (result.action, result.replicas_kept) == ("unchanged", True)
            assert result.service.spec.replicas == 7
        assert await api.store.current_revision() == revision  # nothing written
        [same] = await apply(api, autoscaled(replicas=7))  # the file says what runs: nothing to say
        assert (same.action, same.replicas_kept) == ("unchanged", False)

    run(scenario)


def test_a_changed_file_keeps_the_count_clamped_to_its_new_range() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled())
        await autoscaler_sets(api, 7)
        generation = (await stored(api)).generation
        [result] = await apply(api, autoscaled(high=5))
        assert (result.action, result.replicas_kept, result.service.spec.replicas) == ("updated", True, 5)
        assert result.service.generation == generation + 1
        [raised] = await apply(api, autoscaled(low=6, high=8))  # 5 clamped to 6: the file's own default
        assert (raised.service.spec.replicas, raised.replicas_kept) == (6, False)
        service = await stored(api)
        assert service.spec.replicas == 6 and service.spec.autoscale is not None
        assert (service.spec.autoscale.min_replicas, service.spec.autoscale.max_replicas) == (6, 8)

    run(scenario)


def test_turning_autoscaling_on_with_a_file_keeps_the_running_count() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled(replicas=7).split("autoscale:")[0])
        [result] = await apply(api, autoscaled(high=20))
        assert (result.action, result.replicas_kept, result.service.spec.replicas) == ("updated", True, 7)

    run(scenario)


def test_a_file_without_the_policy_turns_autoscaling_off_and_sets_its_count() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled())
        await autoscaler_sets(api, 7)
        plain = autoscaled(replicas=3).split("autoscale:")[0]
        [result] = await apply(api, plain)
        assert (result.action, result.replicas_kept, result.service.spec.replicas) == ("updated", False, 3)
        assert not result.service.spec.HasField("autoscale")
        assert (await stored(api)).spec.autoscale is None

    run(scenario)


def test_a_structured_spec_without_replicas_starts_at_min_and_what_get_returns_applies_back() -> None:
    async def scenario(api: Api) -> None:
        spec = pb.ServiceSpec(name="web", autoscale=cpu_policy(4, 9))
        spec.template.image = "busybox:1"
        spec.template.resources.cpu_millis = 500
        [created] = (await api.scheduler.ApplyService(pb.ApplyServiceRequest(spec=spec))).results
        assert (created.action, created.service.spec.replicas) == ("created", 4)
        await autoscaler_sets(api, 8)
        got = await api.scheduler.GetService(pb.GetServiceRequest(name="web"))
        [again] = (await api.scheduler.ApplyService(pb.ApplyServiceRequest(spec=got.spec))).results
        assert (again.action, again.replicas_kept) == ("unchanged", False)
        assert again.service.generation == got.generation

    run(scenario)


def test_a_policy_mistake_in_a_file_names_its_path_and_line_and_writes_nothing() -> None:
    async def scenario(api: Api) -> None:
        text = autoscaled(low=3, high=2).replace("cpus: 0.5, ", "")
        err = await rejected(api.scheduler.ApplyService(pb.ApplyServiceRequest(yaml=text, source="w.yaml")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert (err.details() or "").splitlines() == [
            "w.yaml:6: autoscale.min: min (3) is above max (2)",
            "w.yaml:8: autoscale.metrics[0].cpu: cpu utilization is a percentage of the cpu request: set "
            "template.resources.cpus (or cpus_request)"]
        assert await api.store.get(api.store.schema.service("web")) is None

    run(scenario)


# -- AutoscaleService ---------------------------------------------------------------------------------------

def test_autoscale_sets_only_the_policy_and_clamps_the_count() -> None:
    async def scenario(api: Api) -> None:
        text = autoscaled(replicas=1).split("autoscale:")[0] + "labels: {team: a}\n"
        await apply(api, text)
        before = await stored(api)
        service = await set_policy(api, cpu_policy(2, 6, percent=75))
        assert (service.spec.replicas, service.generation, service.template_generation) == (2, 2, 1)
        after = await stored(api)
        assert after.spec.autoscale is not None
        assert after.spec.autoscale.metrics == (MetricTarget(MetricKind.CPU, target_utilization_percent=75),)
        assert (after.spec.autoscale.min_replicas, after.spec.autoscale.max_replicas) == (2, 6)
        # Nothing else moved: the template and its history, labels, placement, update policy.
        assert dataclasses.replace(after.spec, autoscale=None, replicas=1) == before.spec
        assert after.history == before.history

        revision = await api.store.current_revision()
        same = await set_policy(api, cpu_policy(2, 6, percent=75))
        assert same.generation == 2 and await api.store.current_revision() == revision

    run(scenario)


def test_autoscale_off_removes_the_policy_and_keeps_the_count() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled())
        await autoscaler_sets(api, 7)
        service = await set_policy(api, None)
        assert not service.spec.HasField("autoscale") and service.spec.replicas == 7
        stored_service = await stored(api)
        assert stored_service.spec.autoscale is None and stored_service.spec.replicas == 7
        revision = await api.store.current_revision()
        await set_policy(api, None)  # already off: nothing written
        assert await api.store.current_revision() == revision

    run(scenario)


def test_autoscale_with_a_stale_expected_generation_is_aborted() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled())
        await set_policy(api, cpu_policy(2, 8))  # generation 2
        err = await rejected(set_policy(api, cpu_policy(2, 12), expected=1))
        assert err.code() == grpc.StatusCode.ABORTED and shoal_error(err) == "Aborted"
        assert "generation 2, not 1" in (err.details() or "")
        policy = (await stored(api)).spec.autoscale
        assert policy is not None and policy.max_replicas == 8
        service = await set_policy(api, cpu_policy(2, 12), expected=2)
        assert (service.generation, service.spec.autoscale.max_replicas) == (3, 12)

    run(scenario)


def test_a_bad_policy_is_invalid_argument_naming_its_path_and_nothing_is_written() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, service_yaml("web", memory="64M"))  # no cpu request
        revision = await api.store.current_revision()
        bad = cpu_policy(5, 3)
        bad.metrics.append(pb.MetricTarget(kind="prometheus", query="q", per_replica_label="replica",
                                           target_value_milli=1000))
        bad.behavior.scale_down.stabilization_window_seconds = 4000
        err = await rejected(set_policy(api, bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and shoal_error(err) == "InvalidArgument"
        assert (err.details() or "").splitlines() == [
            "autoscale: autoscale.min: min (5) is above max (3)",
            "autoscale: autoscale.metrics[0].cpu: cpu utilization is a percentage of the cpu request: set "
            "template.resources.cpus (or cpus_request)",
            "autoscale: autoscale.metrics[1].prometheus.per_replica_label: a per-replica series is averaged "
            "over the replicas: use target_average_value with per_replica_label",
            "autoscale: autoscale.behavior.scale_down.stabilization_window_seconds: must be 0-3600, got 4000"]
        assert await api.store.current_revision() == revision

        unknown = pb.Autoscale(max_replicas=3, metrics=[pb.MetricTarget(kind="gpu")])
        err = await rejected(set_policy(api, unknown))
        assert "autoscale.metrics[0].gpu: unknown key" in (err.details() or "")

    run(scenario)


def test_autoscale_needs_a_policy_or_off_a_known_service_not_being_deleted() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled())
        for request in (pb.AutoscaleServiceRequest(name="web"),
                        pb.AutoscaleServiceRequest(name="web", off=False)):
            err = await rejected(api.scheduler.AutoscaleService(request))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "give the autoscale policy, or off to remove it" in (err.details() or "")
        missing = await rejected(set_policy(api, cpu_policy(1, 3), name="nope"))
        assert missing.code() == grpc.StatusCode.NOT_FOUND and shoal_error(missing) == "NotFound"
        await api.scheduler.DeleteService(pb.DeleteServiceRequest(name="web"))
        deleting = await rejected(set_policy(api, None))
        assert deleting.code() == grpc.StatusCode.FAILED_PRECONDITION

    run(scenario)


# -- scaling by hand ---------------------------------------------------------------------------------------

def test_scale_by_hand_stands_on_an_autoscaled_service_even_outside_its_range() -> None:
    async def scenario(api: Api) -> None:
        await apply(api, autoscaled(high=10))
        for count in (9, 15):
            service = await api.scheduler.ScaleService(pb.ScaleServiceRequest(name="web", replicas=count))
            assert service.spec.replicas == count and service.spec.HasField("autoscale")
        stored_service = await stored(api)
        assert stored_service.spec.replicas == 15 and stored_service.spec.autoscale is not None

    run(scenario)
