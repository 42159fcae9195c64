"""Preparing a container at create time: image config + spec → its directory and ``config.json``.

``prepare`` (blocking: run it in a thread) resolves what will run (argv, env, user ids from the image's
own passwd, working dir, hostname, stop signal), builds the container's directories and init layer, and
writes ``config.json``. It builds all of that in a *staging* directory of its own
(``containers/.creating-<id>-<random>``) and publishes it with one rename to ``containers/<id>`` only once
the record is on disk. So two creates of the same id never share a directory, a failed create removes only
what it made itself, and a crash mid-create leaves nothing a restarted agent would mistake for a container
(``records.load_all`` deletes stale staging directories).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal as signals
from dataclasses import dataclass
from pathlib import Path

from agent import durable
from agent.errors import AlreadyExists, InvalidArgument, quoted
from agent.images.store import Image
from agent.rootfs import initlayer, overlay, users
from agent.runtime import validation
from agent.runtime.fencing import Fence
from agent.runtime.records import STAGING_PREFIX, ContainerRecord, Prepared, write_config
from agent.runtime.spec import ContainerSpec, NetworkMode, merge_env, parse_signal, spec_to_dict

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Request:
    """A create, as the runtime accepted it."""

    container_id: str
    name: str
    spec: ContainerSpec
    fence: Fence


def prepare(request: Request, *, image: Image, layers: list[Path], containers_dir: Path,
            cgroup_parent: str) -> ContainerRecord:
    """Build and publish the container's directory; returns its record. ``AlreadyExists`` if another
    create published the same id first (nothing of this one is left)."""
    cid = request.container_id
    final = overlay.ContainerDirs(containers_dir / cid)
    staging = overlay.ContainerDirs(containers_dir / f"{STAGING_PREFIX}{cid}-{secrets.token_hex(4)}")
    try:
        prepared = _resolve(request, image=image, layers=layers, final=final, staging=staging,
                            cgroup_parent=cgroup_parent)
        record = ContainerRecord(id=cid, name=request.name, spec=spec_to_dict(request.spec),
                                 prepared=prepared, owner=request.fence.owner, epoch=request.fence.epoch)
        write_config(staging.base, record)
        try:
            os.rename(staging.base, final.base)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyExists(f"container id {cid} already exists") from None
            raise durable.os_error(err, op="publish", path=final.base) from err
        _sync_dir(containers_dir)
        return record
    except BaseException:
        shutil.rmtree(staging.base, ignore_errors=True)
        raise


def _resolve(request: Request, *, image: Image, layers: list[Path], final: overlay.ContainerDirs,
             staging: overlay.ContainerDirs, cgroup_parent: str) -> Prepared:
    spec, cid, cfg = request.spec, request.container_id, image.config
    entrypoint = list(spec.entrypoint or cfg.entrypoint)
    command = list(spec.command) if spec.command else ([] if spec.entrypoint else list(cfg.cmd))
    argv = tuple(entrypoint + command)
    if not argv:
        raise InvalidArgument(
            f"no command specified: image {spec.image} has no Entrypoint or Cmd; "
            "give a command after the image name"
        )
    creds = users.resolve_user(spec.user or cfg.user, layers=layers)
    hostname = spec.hostname or cid[:12]
    env = merge_env(tuple(cfg.env), ())
    defaults = [DEFAULT_PATH] if not any(e.startswith("PATH=") for e in env) else []
    env = merge_env(tuple(defaults) + env, (f"HOSTNAME={hostname}",))
    if not any(e.startswith("HOME=") for e in env):
        env = merge_env(env, (f"HOME={creds.home}",))
    env = merge_env(env, spec.env)
    # What the image adds is checked too: its passwd and config are not the caller's, and the API and
    # execve must carry the result (agent.runtime.validation).
    ids = ((creds.uid, "uid"), (creds.gid, "gid"), *((g, "group id") for g in creds.additional_gids))
    for value, what in ids:
        validation.check_id(value, what=what,
                            where=f"of user {quoted(spec.user or cfg.user)} in image {quoted(spec.image)}")
    validation.check_exec_size(argv, env, source=f"image {quoted(spec.image)} and the request")
    try:
        staging.create()
        initlayer.write_init_layer(staging.init, hostname=hostname,
                                   host_network=spec.network is NetworkMode.HOST)
    except OSError as err:
        raise durable.os_error(err, op="prepare", path=staging.base) from err
    stop_signal = parse_signal(cfg.stop_signal or "", default=int(signals.SIGTERM))
    # Paths are the published ones: nothing mounts them before the rename.
    rootfs = overlay.describe_rootfs(image_layers=layers, dirs=final)
    return Prepared(
        image_id=image.id, image_ref=spec.image, argv=argv, env=env,
        working_dir=spec.working_dir or cfg.working_dir or "/",
        uid=creds.uid, gid=creds.gid, additional_gids=creds.additional_gids, hostname=hostname,
        lower_dirs=rootfs.lower, upper_dir=rootfs.upper, work_dir=rootfs.work, rootfs_dir=rootfs.target,
        cgroup_name=f"{cgroup_parent}/{cid}", stop_signal=stop_signal,
    )


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # durability of the rename only; the record itself is synced
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["DEFAULT_PATH", "Request", "prepare"]
