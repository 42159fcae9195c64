"""Image references: how users name images, parsed and normalised in one place.

A *name reference* is ``[host[:port]/]repo[/repo...][:tag][@sha256:<hex>]`` following the distribution
reference grammar; the tag defaults to ``latest`` unless a digest pins the image. Names are kept as the
user wrote them (no implicit ``docker.io/library/`` prefix), because Shoal has no default registry.
An *image-id reference* is ``sha256:<64 hex>``, or bare hex (full or a unique prefix of at least 4
characters); whether a prefix is unique is the store's business, this module only recognises the shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import InvalidArgument

DEFAULT_TAG = "latest"
MIN_ID_PREFIX = 4

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
_NAME_RE = re.compile(rf"^(?:(?P<domain>{_DOMAIN}(?::[0-9]+)?)/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_HEX_RE = re.compile(r"^[a-f0-9]{4,64}$")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class ImageReference:
    """A parsed name reference. ``tag`` is None only when a digest pins the image."""

    repository: str  # e.g. "busybox", "localhost:5000/team/app"
    tag: str | None
    digest: str | None  # "sha256:<hex>"

    @property
    def name_tag(self) -> str:
        """``repo:tag`` as stored in the tag map (empty tag never happens for a tagged reference)."""
        return f"{self.repository}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _looks_like_domain(first: str) -> bool:
    # As in the distribution grammar: the first component is a host only if it has a dot or port or is
    # "localhost"; otherwise "team/app" is a path.
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def parse_reference(text: str) -> ImageReference:
    """Parses ``name[:tag][@digest]``; the tag defaults to ``latest`` when there is no digest."""
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}: empty or surrounded by whitespace")
    name, at, digest = text.partition("@")
    if at and not _DIGEST_RE.match(digest):
        raise InvalidArgument(
            f"invalid image reference {text!r}: digest must be sha256: followed by 64 lowercase hex digits"
        )
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(
                f"invalid image reference {text!r}: tag {tag!r} must be 1-128 letters, digits, '_', '.'"
                " or '-', not starting with '.' or '-'"
            )
    first, slash, _ = name.partition("/")
    if not slash or not _looks_like_domain(first):
        match = re.match(rf"^{_COMPONENT}(?:/{_COMPONENT})*$", name)
    else:
        match = _NAME_RE.match(name)
    if not match or len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid image reference {text!r}: repository names are lowercase letters, digits and separators"
            " ('.', '_', '__', '-'), optionally after host[:port]/"
        )
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageReference(repository=name, tag=tag, digest=digest if at else None)


def familiar_name(name_tag: str) -> str:
    """Docker Hub names as people write them: ``docker.io/library/busybox:v1`` → ``busybox:v1``.

    Archives written by skopeo or containerd spell out the registry; Shoal keeps names as users type
    them, so a docker-archive of ``busybox`` must import as ``busybox``.
    """
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if name_tag.startswith(prefix):
            return name_tag[len(prefix) :]
    return name_tag


def is_valid_repository(name: str) -> bool:
    """True if ``name`` can be used as a repository (e.g. a file basename turned into an image name)."""
    try:
        ref = parse_reference(name)
    except InvalidArgument:
        return False
    return ref.repository == name


def parse_image_id(text: str) -> str | None:
    """``sha256:<64 hex>`` → that id; bare hex of 4..64 chars → the hex (a prefix to look up); else None."""
    if text.startswith("sha256:"):
        return text if _DIGEST_RE.match(text) else None
    if _HEX_RE.match(text) and len(text) >= MIN_ID_PREFIX:
        return text
    return None


def short_id(image_id: str) -> str:
    """The 12-hex-digit form shown in listings."""
    return image_id.removeprefix("sha256:")[:12]
