"""Registry-world fixtures (real docker-registry, token server, fault proxy) for the pull tests."""

from tests.fixtures.registry import (  # noqa: F401 - pytest finds fixtures by name in the conftest
    basic_auth_registry,
    big_image,
    fault_proxy,
    registry,
    registry_catalogue,
    registry_factory,
    registry_seed,
    tls_registry,
    token_registry,
    token_server,
)
