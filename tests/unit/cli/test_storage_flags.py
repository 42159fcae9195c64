"""``shoal run/create --storage-size`` and Docker's ``--storage-opt size=``: parsed on the client with the
agent's own parser, carried as ``Resources.storage_bytes``."""

from __future__ import annotations

import pytest

from agent.cli import containers, main
from agent.cli.client import CliError


def _request(*flags: str) -> int:
    args = main.build_parser().parse_args(["run", *flags, "img", "true"])
    return int(containers.build_request(args).spec.resources.storage_bytes)


def test_storage_size_and_its_docker_spelling() -> None:
    assert _request() == 0
    assert _request("--storage-size", "1G") == 1 << 30
    assert _request("--storage-opt", "size=512M") == 512 << 20


@pytest.mark.parametrize(("flags", "message"), [
    (["--storage-size", "100k"], "storage size '100k' is too small: the minimum is 1M"),
    (["--storage-opt", "inodes=10"], "unsupported storage option 'inodes=10'"),
    (["--storage-size", "1G", "--storage-opt", "size=2G"], "give the storage limit once"),
])
def test_bad_storage_flags_are_refused_before_calling_the_agent(flags: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        _request(*flags)
