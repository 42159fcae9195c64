"""The scheduler's restatement of the agent's create-time rules (``scheduler.template_rules``) agrees with
the agent's own (``agent.runtime.validation``) on one table of values, and ``apply`` refuses a template
no agent would create, naming the key."""

from __future__ import annotations

import pytest

from agent.errors import InvalidArgument
from agent.runtime import validation
from scheduler import template_rules as rules
from scheduler.spec import parse_service_file
from scheduler.spec_yaml import SpecError

PATHS = ["/srv", "/", "srv", "./x", "", "/a\0b", "/" + "x" * 5000]
HOSTNAMES = ["web-1", "a", "a.b_c", "-x", "x" * 64, "x" * 65, "has space", "ü", ""]
USERS = ["1000", "1000:1000", "app", "app:staff", "2147483647", "2147483648", "0:2147483648", "a:b:c",
         "$x", "x$", "", "ro ot"]
STRINGS = [["a", "b"], ["nul\0here"], ["x" * (128 << 10)], ["x" * ((128 << 10) - 1)]]


def _agent_ok(check: object, *args: object, **kwargs: object) -> bool:
    try:
        check(*args, **kwargs)  # type: ignore[operator]
    except InvalidArgument:
        return False
    return True


@pytest.mark.parametrize("path", PATHS)
def test_working_dir_rules_agree(path: str) -> None:
    assert (rules.working_dir_problem(path) is None) == _agent_ok(validation.check_path, path, what="wd")


@pytest.mark.parametrize("hostname", HOSTNAMES)
def test_hostname_rules_agree(hostname: str) -> None:
    assert (rules.hostname_problem(hostname) is None) == _agent_ok(validation.check_hostname, hostname)


@pytest.mark.parametrize("user", USERS)
def test_user_rules_agree(user: str) -> None:
    assert (rules.user_problem(user) is None) == _agent_ok(validation.check_user, user)


@pytest.mark.parametrize("values", STRINGS)
def test_argument_rules_agree(values: list[str]) -> None:
    assert (rules.strings_problem(values) is None) == _agent_ok(validation.check_strings, values, what="arg")


SERVICE = """\
name: web
replicas: 2
template:
  image: busybox
  command: [httpd, -f]
  {key}: {value}
"""


@pytest.mark.parametrize(("key", "value", "message"), [
    ("working_dir", "srv", "template.working_dir: 'srv' must be an absolute path"),
    ("hostname", "'-web'", "template.hostname: invalid hostname '-web'"),
    ("user", "'4294967295'", "template.user: uid 4294967295 is out of range"),
])
def test_apply_refuses_what_no_agent_would_create(key: str, value: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_service_file(SERVICE.format(key=key, value=value))
    assert message in str(caught.value)
