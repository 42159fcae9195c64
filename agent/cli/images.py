"""Image verbs of the ``shoal`` CLI: ``image import``, ``image ls``, ``image rm``, ``image inspect``.

``import`` hands a local agent the path (no copy); a remote agent gets the archive streamed as bytes
(an OCI layout directory is tarred on the fly).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from agent.cli.client import Agent, CliError, rpc_errors
from agent.cli.output import ago, human_size, short_id, table
from proto.agent.v1 import agent_lite as pb

TYPE_CHECKING = False  # not typing's (import cost)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

CHUNK = 1 << 20


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = sub.add_parser("image", help="manage images")
    isub = image.add_subparsers(dest="image_command", required=True, prog="shoal image")

    imp = isub.add_parser("import", help="import an OCI layout (dir or tar) or a docker-archive tar")
    imp.add_argument("path")
    imp.add_argument("--name", default="", help="NAME:TAG to give the image")
    imp.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    imp.set_defaults(func=cmd_import)

    pull = isub.add_parser("pull", help="pull an image from an OCI registry")
    pull.add_argument("ref", help="HOST[:PORT]/REPO[:TAG] or HOST[:PORT]/REPO@sha256:DIGEST")
    pull.add_argument("-q", "--quiet", action="store_true", help="print only the manifest digest")
    pull.set_defaults(func=cmd_pull)

    prune = isub.add_parser("prune", help="remove untagged images and unreferenced layers and blobs")
    prune.set_defaults(func=cmd_prune)

    ls = isub.add_parser("ls", help="list images")
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.set_defaults(func=cmd_ls)

    rm = isub.add_parser("rm", help="remove images (refused while a container uses them)")
    rm.add_argument("refs", nargs="+")
    rm.set_defaults(func=cmd_rm)

    inspect = isub.add_parser("inspect", help="an image's record and config as JSON")
    inspect.add_argument("refs", nargs="+")
    inspect.set_defaults(func=cmd_inspect)


def _upload(path: str, name: str) -> Iterator[pb.ImportImageRequest]:
    yield pb.ImportImageRequest(name=name, chunk=b"")
    if os.path.isdir(path):
        import tarfile
        import tempfile

        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w") as tf:
                tf.add(path, arcname=".")
            tmp.seek(0)
            yield from _chunks(tmp)
    else:
        with open(path, "rb") as f:
            yield from _chunks(f)


def _chunks(f: BinaryIO) -> Iterator[pb.ImportImageRequest]:
    while data := f.read(CHUNK):
        yield pb.ImportImageRequest(chunk=data)


def cmd_import(agent: Agent, args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    if not os.path.exists(path):
        raise CliError(f"no such file or directory: {args.path}")
    if agent.is_local:
        requests: Iterator[pb.ImportImageRequest] = iter([pb.ImportImageRequest(path=path, name=args.name)])
    else:
        requests = _upload(path, args.name)
    from agent.cli.progress import LayerProgress  # rich: only when there is progress to draw

    image = None
    with rpc_errors(agent.address), LayerProgress(quiet=args.quiet) as bars:
        for progress in agent.images.ImportImage(requests):
            if progress.phase == "done":
                image = progress.image
            else:
                bars.update(progress)
    if image is None:
        raise CliError("the agent ended the import without a result")
    if args.quiet:
        print(image.id)
    else:
        names = ", ".join(image.repo_tags) or "<untagged>"
        print(f"Loaded image: {names} ({short_id(image.id)})")
    return 0


def pull_image(agent: Agent, ref: str, *, quiet: bool) -> pb.Image:
    """Pull with per-layer progress on stderr; returns the image record."""
    from agent.cli.progress import LayerProgress

    started = time.monotonic()
    image: pb.Image | None = None
    with rpc_errors(agent.address), LayerProgress(quiet=quiet) as bars:
        for progress in agent.images.PullImage(pb.PullImageRequest(ref=ref)):
            if progress.phase == "done":
                image = progress.image
            else:
                bars.update(progress)
    if image is None:
        raise CliError("the agent ended the pull without a result")
    if not quiet:
        print(f"Pulled {ref}: {bars.layers_fetched} layer(s) downloaded, {bars.layers_present} already "
              f"present, {human_size(image.size)} in {time.monotonic() - started:.1f}s "
              f"(digest {image.manifest_digest or image.id})", file=sys.stderr)
    return image


def cmd_pull(agent: Agent, args: argparse.Namespace) -> int:
    image = pull_image(agent, args.ref, quiet=args.quiet)
    print(image.manifest_digest or image.id)
    return 0


def cmd_prune(agent: Agent, args: argparse.Namespace) -> int:
    with rpc_errors(agent.address):
        report = agent.images.PruneImages(pb.PruneImagesRequest())
    for image_id in report.images:
        print(f"Deleted image: {image_id}")
    print(f"Removed {len(report.images)} image(s), {len(report.layers)} layer(s), {len(report.blobs)} "
          f"blob(s); freed {human_size(report.freed_bytes)}")
    return 0


def cmd_ls(agent: Agent, args: argparse.Namespace) -> int:
    with rpc_errors(agent.address):
        images = agent.images.ListImages(pb.ListImagesRequest()).images
    if args.quiet:
        for image in images:
            print(short_id(image.id))
        return 0
    rows = []
    for image in images:
        created = ago(image.created.ToNanoseconds() / 1e9) if image.HasField("created") else ""
        for tag in image.repo_tags or ["<none>:<none>"]:
            repo, _, version = tag.rpartition(":")
            rows.append([repo, version, short_id(image.id), created, human_size(image.size)])
    print(table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows))
    return 0


def cmd_rm(agent: Agent, args: argparse.Namespace) -> int:
    with rpc_errors(agent.address):
        for ref in args.refs:
            result = agent.images.RemoveImage(pb.RemoveImageRequest(ref=ref))
            for tag in result.untagged:
                print(f"Untagged: {tag}")
            for digest in result.deleted:
                print(f"Deleted: {digest}")
    return 0


def cmd_inspect(agent: Agent, args: argparse.Namespace) -> int:
    import json

    from agent.protolite import to_dict

    out = []
    with rpc_errors(agent.address):
        for ref in args.refs:
            image = agent.images.GetImage(pb.ImageRef(ref=ref))
            out.append(to_dict(image))
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0
