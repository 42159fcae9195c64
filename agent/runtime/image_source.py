"""The agent's ``ImageSource``: images from its own store, pulled by its registry client when allowed."""

from __future__ import annotations

from pathlib import Path

from agent.errors import FailedPrecondition
from agent.images.pull import Puller
from agent.images.store import Image, ImageStore


class StoreImages:
    """``agent.runtime.drivers.ImageSource`` over an ``ImageStore`` and an optional ``Puller``."""

    def __init__(self, store: ImageStore, puller: Puller | None = None) -> None:
        self.store = store
        self._puller = puller

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            raise FailedPrecondition("this agent was started without registry access")
        return self._puller

    def resolve(self, ref: str) -> Image:
        return self.store.resolve(ref)

    def layer_paths(self, image: Image) -> list[Path]:
        return self.store.layer_paths(image)

    def pull(self, ref: str) -> Image:
        return self.puller.pull(ref)


__all__ = ["StoreImages"]
