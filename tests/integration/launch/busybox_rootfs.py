"""A minimal busybox image directory for launch tests and the launch benchmark (no other Shoal code)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def build_busybox_rootfs(root: Path) -> None:
    """A minimal image: static busybox with its applet symlinks, passwd/group and the usual dirs."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\n")
    (root / "etc" / "lower-marker").write_text("from lower\n")
    (root / "tmp").chmod(0o1777)
