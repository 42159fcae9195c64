"""The demo's image, built with umoci (an OCI tool nobody here wrote): busybox, a web root and a cgi script.

``/www/cgi-bin/work`` keeps a cpu busy for ``BURN_MS`` on the shell's own clock (``EPOCHREALTIME``: no
process per iteration), so a request to it costs the replica that much cpu whatever the machine's speed;
the service's command writes ``/www/index.html`` (which version answers, from which container) and
``/www/metrics`` (what Prometheus scrapes from each replica) at start.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from scripts.demo.load import BURN_MS

CGI = f"""#!/bin/sh
end=$(( ${{EPOCHREALTIME/./}} + {BURN_MS * 1000} ))
while [ ${{EPOCHREALTIME/./}} -lt $end ]; do :; done
printf 'Content-Type: text/plain\\r\\n\\r\\nworked {BURN_MS} ms on %s\\n' "$(hostname)"
"""


def build_image(work: Path) -> Path:
    """An OCI layout at ``work/oci`` (tag ``web``) and its bundle removed; returns the layout."""
    layout, bundle = work / "oci", work / "bundle"

    def umoci(*args: str) -> None:
        subprocess.run(["umoci", *args], check=True, capture_output=True, timeout=120)

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:web")
    umoci("unpack", "--image", f"{layout}:web", str(bundle))
    rootfs = bundle / "rootfs"
    for directory in ("bin", "etc", "tmp", "www/cgi-bin"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", rootfs / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (rootfs / "etc/group").write_text("root:x:0:\nnobody:x:65534:\n")
    cgi = rootfs / "www/cgi-bin/work"
    cgi.write_text(CGI)
    cgi.chmod(0o755)
    umoci("repack", "--image", f"{layout}:web", str(bundle))
    umoci("config", "--image", f"{layout}:web", "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin")
    shutil.rmtree(bundle)
    return layout


__all__ = ["build_image"]
