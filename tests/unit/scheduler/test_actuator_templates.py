"""The actuator parses a service's template once per template generation, not once per launch."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf import json_format

from proto.agent.v1 import agent_pb2 as pb
from scheduler.actuator import Templates, container_spec
from scheduler.model import (
    LABEL_GENERATION,
    LABEL_REPLICA,
    LABEL_SERVICE,
    ReplicaId,
    Service,
    ServiceName,
    ServiceSpec,
    TemplateFacts,
)

TEMPLATE = '{"image": "busybox:1", "command": ["sleep", "600"], "env": ["A=1"]}'


def service(template: str = TEMPLATE, *, template_generation: int = 1, name: str = "web") -> Service:
    spec = ServiceSpec(name=ServiceName(name), replicas=3, template_json=template,
                       facts=TemplateFacts(image="busybox:1"))
    return Service(spec=spec, generation=template_generation, template_generation=template_generation)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = json_format.Parse

    def counting(text: str, message: pb.ContainerSpec) -> pb.ContainerSpec:
        seen.append(text)
        return real(text, message)

    monkeypatch.setattr(json_format, "Parse", counting)
    return seen


def test_launches_of_one_template_generation_parse_it_once(parses: list[str]) -> None:
    cache = Templates()
    web = service()
    specs = [cache.spec(web, ReplicaId(f"web-{i}"), 1) for i in range(50)]
    assert len(parses) == 1
    # Each launch gets its own message with its own labels, the same as a fresh parse would give.
    assert [s.labels[LABEL_REPLICA] for s in specs] == [f"web-{i}" for i in range(50)]
    assert specs[7] == container_spec(web, ReplicaId("web-7"), 1)
    assert (specs[0].labels[LABEL_SERVICE], specs[0].labels[LABEL_GENERATION]) == ("web", "1")
    assert list(specs[0].command) == ["sleep", "600"] and list(specs[0].env) == ["A=1"]


def test_a_spec_handed_out_is_a_copy_the_cache_does_not_share() -> None:
    cache = Templates()
    web = service()
    first = cache.spec(web, ReplicaId("web-1"), 1)
    first.env.append("LEAK=1")
    first.labels["extra"] = "x"
    second = cache.spec(web, ReplicaId("web-2"), 1)
    assert list(second.env) == ["A=1"] and "extra" not in second.labels


def test_a_new_template_generation_is_parsed_again(parses: list[str]) -> None:
    cache = Templates()
    cache.spec(service(), ReplicaId("web-1"), 1)
    changed = service('{"image": "busybox:2"}', template_generation=2)
    assert cache.spec(changed, ReplicaId("web-2"), 2).image == "busybox:2"
    assert cache.spec(changed, ReplicaId("web-3"), 2).image == "busybox:2"
    assert len(parses) == 2
    # Same generation number, different text (a service deleted and applied again): parsed again too.
    again = dataclasses.replace(changed, spec=dataclasses.replace(changed.spec, template_json=TEMPLATE))
    assert cache.spec(again, ReplicaId("web-4"), 2).image == "busybox:1"
    assert len(parses) == 3


def test_services_are_cached_apart_and_forgotten(parses: list[str]) -> None:
    cache = Templates()
    cache.spec(service(name="a"), ReplicaId("a-1"), 1)
    cache.spec(service('{"image": "other:1"}', name="b"), ReplicaId("b-1"), 1)
    assert cache.spec(service(name="a"), ReplicaId("a-2"), 1).image == "busybox:1"
    assert len(parses) == 2
    cache.forget(ServiceName("a"))
    cache.spec(service(name="a"), ReplicaId("a-3"), 1)
    assert len(parses) == 3
