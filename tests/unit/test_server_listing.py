"""A container whose record the API cannot carry (written before create validated everything) does not
take listing down for the others (issue 12, finding 7)."""

from __future__ import annotations

from agent.runtime.container import Container
from agent.runtime.records import ContainerRecord, Prepared
from agent.runtime.spec import ContainerSpec, spec_to_dict
from agent.server import ContainersService
from proto.agent.v1 import agent_pb2 as pb


class _Runtime:
    def attachment(self, ctr: Container) -> None:
        return None


def _container(uid: int) -> Container:
    prepared = Prepared(
        image_id="sha256:" + "a" * 64, image_ref="busybox:v1", argv=("true",), env=("PATH=/bin",),
        working_dir="/", uid=uid, gid=0, additional_gids=(), hostname="h", lower_dirs=("/l",),
        upper_dir="/u", work_dir="/w", rootfs_dir="/r", cgroup_name="shoal/x", stop_signal=15,
    )
    return Container(record=ContainerRecord(id=f"id{uid}", name="n", prepared=prepared,
                                            spec=spec_to_dict(ContainerSpec(image="busybox:v1"))))


def test_an_old_record_with_a_uid_past_int32_is_described_partially_not_an_internal_error() -> None:
    service = ContainersService(_Runtime())  # type: ignore[arg-type]
    broken = service._pb(_container(4294967295))
    assert broken.id == "id4294967295" and broken.state == pb.CONTAINER_STATE_CREATED
    assert "cannot carry" in broken.error and "remove it" in broken.error
    assert service._pb(_container(1000)).uid == 1000
