"""Image locality score: ``MAX_SCORE`` on a host known to have the replica's image (a replica of it runs
there, or the caller reported it), 0 elsewhere, so a start skips the pull when that costs little else.

Its default weight is small (see ``registry``): unlike kube-scheduler's ImageLocality, Shoal does not know
image sizes to scale by, and a large weight would pile a spread service onto the few hosts that already
ran it. With weight 0.1 it decides between hosts whose other scores are within 10 points."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence

from scheduler.placement.framework import MAX_SCORE, PlacementRequest, PluginArgs, Reads, check_args
from scheduler.placement.view import HostView

NAME = "image_locality"


def image_score(image: str, images: Collection[str]) -> float:
    return MAX_SCORE if image in images else 0.0


class ImageLocality:
    name = NAME
    reads = Reads.STATIC
    strategy = None
    normalize = False

    def applies(self, request: PlacementRequest) -> bool:
        return bool(request.facts.image)

    def key(self, request: PlacementRequest) -> Hashable:
        return request.facts.image

    def score(self, request: PlacementRequest, host: HostView) -> float:
        return image_score(request.facts.image, host.images)

    def score_all(self, request: PlacementRequest, hosts: Sequence[HostView]) -> list[float]:
        image = request.facts.image
        return [MAX_SCORE if image in host.images else 0.0 for host in hosts]


def new(args: PluginArgs) -> ImageLocality:
    check_args(NAME, args, {})
    return ImageLocality()
