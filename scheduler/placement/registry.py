"""The default plugins by name, and Shoal's default profile.

Filters run cheapest and most telling first: host state, label constraints, host ports, resources fit,
then topology spread. Score weights: least allocated (``spread``) and most allocated (``binpack``) 1;
service spread 1 (``spread`` only: a service's replicas over hosts); topology spread 2 (kube-scheduler's
default weight for PodTopologySpread: balancing domains comes before balancing hosts); image locality
0.1 (a tie-breaker between hosts within 10 points, see its module). The scheduler's configuration
changes weights with ``ProfileConfig.with_weights`` and may list its own filters and scores.
"""

from __future__ import annotations

from scheduler.placement.framework import Profile, ProfileConfig, Registry, build_profile
from scheduler.placement.plugins import (
    constraints,
    host_ports,
    host_state,
    image_locality,
    least_allocated,
    most_allocated,
    resources_fit,
    service_spread,
    topology_spread,
)

REGISTRY: Registry = {
    host_state.NAME: host_state.new,
    constraints.NAME: constraints.new,
    host_ports.NAME: host_ports.new,
    resources_fit.NAME: resources_fit.new,
    topology_spread.NAME: topology_spread.new,
    least_allocated.NAME: least_allocated.new,
    most_allocated.NAME: most_allocated.new,
    image_locality.NAME: image_locality.new,
    service_spread.NAME: service_spread.new,
}

DEFAULT_CONFIG = ProfileConfig(
    filters=(host_state.NAME, constraints.NAME, host_ports.NAME, resources_fit.NAME, topology_spread.NAME),
    scores=((least_allocated.NAME, 1.0), (most_allocated.NAME, 1.0), (service_spread.NAME, 1.0),
            (topology_spread.NAME, 2.0), (image_locality.NAME, 0.1)),
)


def default_profile() -> Profile:
    return build_profile(DEFAULT_CONFIG, REGISTRY)


def profile_from(config: ProfileConfig) -> Profile:
    """A profile from the scheduler's configuration, made from the default registry."""
    return build_profile(config, REGISTRY)
