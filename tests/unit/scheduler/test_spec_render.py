"""The CLI prints ``get services -o yaml`` with its own copy of the scheduler's renderer
(agent/cli/servicefile.py; the two packages may not import each other): the copy must stay a copy, and
what the CLI prints from the API's ``ServiceSpec`` must be exactly what ``render_yaml`` writes from the
spec, which parses back to the same spec."""

from __future__ import annotations

import inspect

import pytest
from google.protobuf import json_format

from agent.cli import servicefile
from agent.protolite import to_dict
from proto.scheduler.v1 import scheduler_lite, scheduler_pb2
from scheduler import spec as service_file
from scheduler import spec_render
from tests.unit.scheduler.test_spec import ROUND_TRIPS

MARKER = "# -- copied in agent/cli/servicefile.py"


def _copied_part(source: str) -> str:
    return source[source.index("\n", source.index(MARKER)) + 1:source.index("\n\n__all__")].strip()


def test_the_cli_has_an_exact_copy_of_the_renderer() -> None:
    scheduler_side = _copied_part(inspect.getsource(spec_render))
    cli_side = inspect.getsource(servicefile)
    body = cli_side[cli_side.index("def dump_documents"):cli_side.index("\n\n__all__")].strip()
    assert body == scheduler_side


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_the_cli_prints_from_the_api_what_the_scheduler_renders(text: str) -> None:
    spec = service_file.parse_service(text)
    message = json_format.ParseDict(service_file.api_dict(spec), scheduler_pb2.ServiceSpec())
    lite = scheduler_lite.ServiceSpec.FromString(message.SerializeToString())  # what the CLI receives
    printed = servicefile.dump_documents([servicefile.file_dict_from_api(to_dict(lite))])
    assert printed == service_file.render_yaml(spec)
    assert service_file.parse_service(printed) == spec


@pytest.mark.parametrize("seconds", ["24.871s", "250ms", "90s", "10m", "2h", "1.0005s", "1ms", "3.3s",
                                     "100ms"])
def test_health_durations_read_back_exactly(seconds: str) -> None:
    """24.871 s was written "24871ms", which a file reads as 24.871000000000002 s."""
    text = (f"name: t\ntemplate:\n  image: x\n  health: {{exec: 'true', interval: {seconds}, "
            f"start_period: {seconds}}}\n")
    spec = service_file.parse_service(text)
    rendered = service_file.render_yaml(spec)
    assert service_file.parse_service(rendered) == spec, rendered
    assert f"interval: {seconds}" in rendered, rendered
