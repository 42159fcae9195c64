"""scheduler/spec_hostgroup.py (and the kind dispatch in scheduler/spec.py): docs/elastic-hosts.md's
example parses to the spec it describes, defaults fill what is left out, every mistake is reported at its
key and line (all at once, across documents), services and host groups mix in one file, and what
``render_yaml`` writes parses back to the same spec (examples, and generated specs)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import spec as service_file
from scheduler import spec_hostgroup, units
from scheduler.model import (
    CommandProvider,
    GroupName,
    HostGroupSpec,
    HostShape,
    WebhookProvider,
)
from scheduler.spec_yaml import SpecError

DOCS = Path(__file__).resolve().parents[3] / "docs"


def groups(text: str) -> tuple[HostGroupSpec, ...]:
    return service_file.parse_file(textwrap.dedent(text), source="g.yaml").hostgroups


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(SpecError) as caught:
        service_file.parse_file(textwrap.dedent(text), source="g.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def doc_example() -> str:
    text = (DOCS / "elastic-hosts.md").read_text()
    return text.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_documented_example_parses_to_what_the_document_says() -> None:
    [group] = groups(doc_example())
    assert group == HostGroupSpec(
        name=GroupName("workers"), min_hosts=1, max_hosts=10,
        shape=HostShape(cpu_millis=2000, memory_bytes=4 << 30, labels=(("group", "workers"), ("zone", "a"))),
        pending_for_seconds=5.0, max_per_request=3, scale_out_cooldown_seconds=60.0,
        provision_timeout_seconds=600.0, scale_in=True, scale_in_utilization_percent=50,
        scale_in_after_seconds=600.0, scale_in_delay_after_scale_out_seconds=600.0, max_concurrent_drains=1,
        webhook=WebhookProvider(url="https://provisioner.example/shoal",
                                token_file="/etc/shoal/provider-token", ca_file="/etc/shoal/provider-ca.pem",
                                cert_file="/etc/shoal/pki/scheduler.pem",
                                key_file="/etc/shoal/pki/scheduler-key.pem", timeout_seconds=10.0),
        command=CommandProvider(argv=("/usr/local/bin/provision-hosts", "--pool", "workers"),
                                timeout_seconds=60.0))


def test_the_smallest_group_takes_every_default() -> None:
    [group] = groups("kind: hostgroup\nname: spare\nmax: 3\n")
    assert group == HostGroupSpec(name=GroupName("spare"), max_hosts=3)
    assert (group.min_hosts, group.shape, group.webhook, group.command) == (0, None, None, None)
    assert (group.pending_for_seconds, group.max_per_request, group.scale_out_cooldown_seconds) == \
        (5.0, 10, 60.0)


def test_a_group_without_a_provider_is_allowed_and_an_empty_provider_is_none() -> None:
    [group] = groups("kind: hostgroup\nname: dry\nmax: 2\nprovider: {}\n")
    assert group.webhook is None and group.command is None


def test_a_command_may_be_one_string_split_like_a_shell() -> None:
    [group] = groups("kind: hostgroup\nname: g\nmax: 2\n"
                     "provider: {command: {argv: \"/bin/prov --pool 'a b'\"}}\n")
    assert group.command == CommandProvider(argv=("/bin/prov", "--pool", "a b"))


def test_services_and_host_groups_mix_in_one_file_and_kind_service_is_the_default() -> None:
    parsed = service_file.parse_file(textwrap.dedent("""\
        kind: hostgroup
        name: web
        max: 4
        ---
        name: web
        template: {image: busybox:1}
        ---
        kind: service
        name: api
        template: {image: busybox:1}
        """))
    assert [s.name for s in parsed.services] == ["web", "api"]
    assert [g.name for g in parsed.hostgroups] == ["web"]  # a service and a group may share a name


def test_parse_service_file_refuses_a_file_with_host_groups() -> None:
    with pytest.raises(SpecError, match="expected services only, found host group g"):
        service_file.parse_service_file("kind: hostgroup\nname: g\nmax: 1\n")


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: HostGroup\nname: g\nmax: 1\n",
     (1, "kind", 'unknown kind \'HostGroup\' (did you mean "hostgroup"?)')),
    ("kind: pod\nname: g\n", (1, "kind", "unknown kind 'pod' (expected one of: service, hostgroup)")),
    ("kind: hostgroup\nname: g\n", (1, "max", "required")),
    ("kind: hostgroup\nname: G_1\nmax: 1\n", (2, "name", "'G_1' is not a valid host group name")),
    ("kind: hostgroup\nname: g\nmax: 0\n", (3, "max", "must be at least 1, got 0")),
    ("kind: hostgroup\nname: g\nmin: 4\nmax: 3\n", (3, "min", "min (4) is more than max (3)")),
    ("kind: hostgroup\nname: g\nmin: -1\nmax: 3\n", (3, "min", "must be at least 0, got -1")),
    ("kind: hostgroup\nname: g\nmax: 3\nmax_hosts: 2\n",
     (4, "max_hosts", 'unknown key (did you mean "max"?)')),
    ("kind: hostgroup\nname: g\nmax: 3\nshape: {cpus: 2}\n", (4, "shape.memory", "required")),
    ("kind: hostgroup\nname: g\nmax: 3\nshape:\n  cpus: 2\n  memory: 4X\n",
     (6, "shape.memory", "invalid shape memory '4X'")),
    ("kind: hostgroup\nname: g\nmax: 3\nshape:\n  cpus: lots\n  memory: 4G\n",
     (5, "shape.cpus", "invalid shape cpus 'lots'")),
    ("kind: hostgroup\nname: g\nmax: 3\nshape:\n  cpus: 2\n  memory: 4G\n  labels: {group: other}\n",
     (7, "shape.labels.group", "the group label is the group's name ('g'), not 'other'")),
    ("kind: hostgroup\nname: g\nmax: 3\nshape:\n  cpus: 2\n  memory: 4G\n  labels: {zone: a b}\n",
     (7, "shape.labels", "'a b' is not a host label value")),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_out:\n  pending_for: soon\n",
     (5, "scale_out.pending_for", "invalid pending_for 'soon'")),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_out:\n  max_per_request: 0\n",
     (5, "scale_out.max_per_request", "must be at least 1, got 0")),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_out:\n  provision_timeout: 0s\n",
     (5, "scale_out.provision_timeout", "provision_timeout must be more than 0")),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_out:\n  cooldwn: 1m\n",
     (5, "scale_out.cooldwn", 'unknown key (did you mean "cooldown"?)')),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_in:\n  utilization_below: 0.5\n",
     (5, "scale_in.utilization_below", 'expected a percentage like "50%"')),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_in:\n  utilization_below: 150%\n",
     (5, "scale_in.utilization_below", "'150%' is outside 1%..100%")),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_in:\n  enabled: maybe\n",
     (5, "scale_in.enabled", "expected true or false")),
    ("kind: hostgroup\nname: g\nmax: 3\nscale_in:\n  max_concurrent_drains: 0\n",
     (5, "scale_in.max_concurrent_drains", "must be at least 1, got 0")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook: {url: ftp://x.example/}\n",
     (5, "provider.webhook.url", "'ftp://x.example/' is not an http:// or https:// URL with a host")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook: {url: 'https://'}\n",
     (5, "provider.webhook.url", "is not an http:// or https:// URL with a host")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook: {token_file: /t}\n",
     (5, "provider.webhook.url", "required")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook:\n    url: https://p.example/\n"
     "    cert_file: /c.pem\n", (7, "provider.webhook.cert_file", "key_file is missing")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook:\n    url: https://p.example/\n"
     "    key_file: /k.pem\n", (7, "provider.webhook.key_file", "cert_file is missing")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook:\n    url: http://p.example/\n"
     "    ca_file: /ca.pem\n", (7, "provider.webhook.ca_file", "ca_file is for TLS: the url must be https://")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook:\n    url: https://p.example/\n"
     "    token_file: token\n", (7, "provider.webhook.token_file", "'token' is not an absolute path")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  webhook:\n    url: https://p.example/\n"
     "    timeout: 0s\n", (7, "provider.webhook.timeout", "webhook timeout must be more than 0")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  command: {argv: []}\n",
     (5, "provider.command.argv", "the command is empty")),
    ("kind: hostgroup\nname: g\nmax: 3\nprovider:\n  lambda: {}\n",
     (5, "provider.lambda", "unknown key (expected one of: command, webhook)")),
    ("kind: hostgroup\nname: g\nmax: 1\n---\nkind: hostgroup\nname: g\nmax: 2\n",
     (5, "name", "host group 'g' is declared twice (first in the document on line 1)")),
])
def test_each_mistake_is_reported_at_its_key_and_line(text: str, expected: tuple[int, str, str]) -> None:
    found = problems(text)
    line, path, message = expected
    assert [(ln, p) for ln, p, _ in found] == [(line, path)], found
    assert message in found[0][2], found


def test_every_problem_of_every_document_is_reported_at_once_with_the_source() -> None:
    text = ("name: web\ntemplate: {image: busybox:1, restart: sometimes}\n---\n"
            "kind: hostgroup\nname: g\nmax: 0\nscale_in: {for: never}\n")
    with pytest.raises(SpecError) as caught:
        service_file.parse_file(text, source="cluster.yaml")
    lines = str(caught.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == \
        ["cluster.yaml:2", "cluster.yaml:6", "cluster.yaml:7"]
    assert "template.restart" in lines[0] and "max" in lines[1] and "scale_in.for" in lines[2]


# -- rendering -------------------------------------------------------------------------------------------

def test_the_documented_example_renders_back_to_itself() -> None:
    [group] = groups(doc_example())
    rendered = spec_hostgroup.render_yaml(group)
    assert groups(rendered) == (group,)
    assert "group: workers" not in rendered  # the group label is implied, not written
    assert rendered.startswith("kind: hostgroup\nname: workers\nmin: 1\nmax: 10\n")


def test_defaults_are_left_out_of_the_rendered_document() -> None:
    [group] = groups("kind: hostgroup\nname: spare\nmax: 3\nscale_in: {enabled: true, for: 10m}\n")
    assert spec_hostgroup.render_yaml(group) == "kind: hostgroup\nname: spare\nmin: 0\nmax: 3\n"


def test_several_groups_render_as_several_documents() -> None:
    specs = [HostGroupSpec(name=GroupName("a"), max_hosts=1), HostGroupSpec(name=GroupName("b"), max_hosts=2)]
    assert groups(spec_hostgroup.render_yaml(specs)) == tuple(specs)


@pytest.mark.parametrize(("seconds", "text"), [(5.0, "5s"), (600.0, "10m"), (7200.0, "2h"), (0.25, "250ms"),
                                               (90.0, "90s"), (0.0, "0s"), (1.0005, "1.0005s"),
                                               (24.871, "24.871s"), (0.00001, "0.00001s")])
def test_durations_are_written_as_a_person_would_and_read_back_exactly(seconds: float, text: str) -> None:
    assert units.duration_text(seconds) == text
    assert units.parse_duration(text) == seconds


# Whole seconds, milliseconds, and any float a file can spell (digits, a point, digits).
_seconds = st.one_of(st.integers(0, 10**6).map(float), st.integers(0, 10**7).map(lambda ms: ms / 1000),
                     st.from_regex(r"\d{1,6}\.\d{1,8}", fullmatch=True).map(float))
_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
_label_words = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}[a-z0-9]", fullmatch=True)
_paths = st.from_regex(r"/[a-z0-9/._-]{1,20}", fullmatch=True)


@st.composite
def hostgroup_specs(draw: st.DrawFn) -> HostGroupSpec:
    name = draw(_names)
    high = draw(st.integers(1, 1000))
    shape = None
    if draw(st.booleans()):
        labels = draw(st.dictionaries(_label_words.filter(lambda k: k != "group"), _label_words, max_size=3))
        shape = HostShape(cpu_millis=draw(st.integers(10, 256_000)),
                          memory_bytes=draw(st.integers(1, 1 << 42)),
                          labels=tuple(sorted({**labels, "group": name}.items())))
    webhook = None
    if draw(st.booleans()):
        tls = draw(st.booleans())
        cert = draw(_paths) if tls and draw(st.booleans()) else ""
        webhook = WebhookProvider(
            url=f"{'https' if tls else 'http'}://{draw(_label_words)}.example:8443/{draw(_label_words)}",
            token_file=draw(st.one_of(st.just(""), _paths)), ca_file=draw(_paths) if tls else "",
            cert_file=cert, key_file=draw(_paths) if cert else "",
            timeout_seconds=draw(_seconds.filter(lambda s: s > 0)))
    command = None
    if draw(st.booleans()):
        words = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8)
        argv = draw(st.lists(words, min_size=1, max_size=4))
        command = CommandProvider(argv=tuple(argv), timeout_seconds=draw(_seconds.filter(lambda s: s > 0)))
    return HostGroupSpec(
        name=GroupName(name), min_hosts=draw(st.integers(0, high)), max_hosts=high, shape=shape,
        pending_for_seconds=draw(_seconds), max_per_request=draw(st.integers(1, 100)),
        scale_out_cooldown_seconds=draw(_seconds),
        provision_timeout_seconds=draw(_seconds.filter(lambda s: s > 0)), scale_in=draw(st.booleans()),
        scale_in_utilization_percent=draw(st.integers(1, 100)), scale_in_after_seconds=draw(_seconds),
        scale_in_delay_after_scale_out_seconds=draw(_seconds), max_concurrent_drains=draw(st.integers(1, 10)),
        webhook=webhook, command=command)


@settings(max_examples=300, deadline=None)
@given(spec=hostgroup_specs())
def test_any_valid_spec_renders_to_a_document_that_parses_back_to_it(spec: HostGroupSpec) -> None:
    assert groups(spec_hostgroup.render_yaml(spec)) == (spec,)


@pytest.mark.parametrize("doc", ["docs/service-file.md", "docs/elastic-hosts.md", "README.md"])
def test_every_host_group_example_in_the_documentation_parses(doc: str) -> None:
    text = (DOCS.parent / doc).read_text()
    blocks = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)
              if "kind: hostgroup" in b]
    assert blocks, f"{doc} shows no host group"
    for block in blocks:
        assert [g.name for g in service_file.parse_file(block, source=doc).hostgroups] == ["workers"]
