"""A network cut between the scheduler and some simulated hosts: their TCP packets dropped (nftables).

``fail NAME cut`` makes a host what a dead machine or a cut cable is to the scheduler: nothing arrives
from it and nothing sent to it is answered, not even the HTTP/2 pings its gRPC core would otherwise
answer while the host is only ``silent`` (the scheduler's ``--agent-keepalive``).
Every packet to or from the host's port is dropped on the way out of loopback: no reset, no answer.

nftables rules are the network namespace's, so this runs only in a namespace of the benchmark's own
(``bench/scale.py`` re-runs itself under ``unshare --net`` for it): never in the machine's own, whose
firewall is not a benchmark's to change. The table is made once (``prepare``) before the simulators
start; each cut and mend adds or removes its ports from the table's set.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

TABLE = "shoal_sim_cut"
SET = "ports"
NFT_TIMEOUT_S = 30.0


class NetCutError(RuntimeError):
    pass


# The initial network namespace's inode (Linux's PROC_NET_INIT_INO): what /proc/1/ns/net would say where
# reading it is not allowed (it takes CAP_SYS_PTRACE over PID 1).
INIT_NETNS_INO = 0xEFFFFFF9


def private_netns() -> bool:
    """True in a network namespace other than init's (the machine's own)."""
    own = os.stat("/proc/self/ns/net").st_ino
    try:
        init = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        init = INIT_NETNS_INO
    return own != init


def _nft(script: str) -> None:
    if not private_netns():
        raise NetCutError("a network cut needs a network namespace of its own (bench/scale.py runs itself "
                          "under unshare --net for --kill-mode cut); refusing to change the machine's "
                          "firewall")
    try:
        result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                                timeout=NFT_TIMEOUT_S)
    except FileNotFoundError as err:
        raise NetCutError("nft is not installed (Debian: nftables)") from err
    if result.returncode != 0:
        raise NetCutError(f"nft failed: {result.stderr.strip() or result.returncode}")


def prepare() -> None:
    """The table, its set of cut ports and the rules that drop their packets, in this namespace."""
    _nft(f"""table inet {TABLE} {{
    set {SET} {{ type inet_service; }}
    chain out {{
        type filter hook output priority 0; policy accept;
        tcp dport @{SET} drop
        tcp sport @{SET} drop
    }}
}}
""")


def _elements(ports: Iterable[int]) -> str:
    listed = sorted(set(ports))
    if not listed or any(not 0 < p < 65536 for p in listed):
        raise ValueError(f"ports to cut must be TCP ports, got {listed}")
    return ", ".join(map(str, listed))


def cut(ports: Iterable[int]) -> None:
    _nft(f"add element inet {TABLE} {SET} {{ {_elements(ports)} }}\n")


def mend(ports: Iterable[int]) -> None:
    _nft(f"delete element inet {TABLE} {SET} {{ {_elements(ports)} }}\n")
