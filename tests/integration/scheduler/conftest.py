"""Fixtures for the scheduler's integration tests: real etcd members and clusters on loopback."""

from tests.fixtures.etcd import (  # noqa: F401 - pytest finds fixtures by name in the conftest
    etcd,
    etcd_cluster,
    etcd_prefix,
    etcd_private,
)
