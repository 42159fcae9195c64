"""The environment of the Python helpers the agent starts: the supervisor and the exec helper.

Neither inherits the agent's environment. A process's environment block stays in its memory until it
calls ``execve``, and both helpers put processes into containers before that: the exec helper's child
stands in the container's pid namespace until it runs the command, and every container init is a fork
of the supervisor until it runs the container's. An agent's environment holds what containers must
never see (proxies with credentials, tokens, CA and key paths), so a helper gets only what it needs to
start, which is where to find Shoal's code: ``PYTHONPATH`` if the agent was started with one (it is
how the agent itself found that code; an installed agent has none). Everything else a helper needs
comes on its command line or in its plan. Python without ``LANG`` falls back to UTF-8 on its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# The only variables a helper keeps from the agent's environment.
KEPT: tuple[str, ...] = ("PYTHONPATH",)


def helper_environment(agent_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment for a helper spawned by an agent whose environment is ``agent_env``
    (default: ours)."""
    source = os.environ if agent_env is None else agent_env
    return {name: source[name] for name in KEPT if name in source}


__all__ = ["KEPT", "helper_environment"]
