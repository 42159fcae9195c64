from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent import certs
from agent.errors import AlreadyExists, InvalidArgument


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_a_ca_and_one_certificate_per_kind(tmp_path: Path) -> None:
    written = certs.init_pki(tmp_path / "pki", hosts=["agent.example", "10.1.2.3"])
    names = sorted(p.name for p in written)
    assert names == sorted(f"{stem}{suffix}" for stem in ("ca", "agent", "scheduler", "client")
                           for suffix in (".pem", "-key.pem"))
    ca = _load(tmp_path / "pki/ca.pem")
    for kind in certs.KINDS:
        cert = _load(tmp_path / f"pki/{kind}.pem")
        cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usage) == (kind != "client")
        key_mode = stat.S_IMODE((tmp_path / f"pki/{kind}-key.pem").stat().st_mode)
        assert key_mode == 0o600
    san = _load(tmp_path / "pki/agent.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "agent.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert stat.S_IMODE((tmp_path / "pki/ca-key.pem").stat().st_mode) == 0o600


def test_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    certs.init_pki(tmp_path, hosts=["h"])
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(AlreadyExists, match="--force"):
        certs.init_pki(tmp_path, hosts=["h"])
    assert (tmp_path / "ca.pem").read_bytes() == before
    certs.init_pki(tmp_path, hosts=["h"], force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_issue_with_an_existing_ca(tmp_path: Path) -> None:
    certs.init_pki(tmp_path, hosts=["h"])
    ca = certs.load_ca(tmp_path)
    pair = certs.issue(ca, "agent-host7", kind="agent", hosts=["host7"])
    certs.write_pair(tmp_path, "agent-host7", pair)
    _load(tmp_path / "agent-host7.pem").verify_directly_issued_by(ca.cert)
    with pytest.raises(InvalidArgument, match="needs the host names"):
        certs.issue(ca, "x", kind="agent")
    with pytest.raises(InvalidArgument, match="unknown certificate kind"):
        certs.issue(ca, "x", kind="root")


def test_cli_certs_init_needs_no_agent(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli.main", "--agent", "unix:///nonexistent",
                             "certs", "init", str(tmp_path / "pki"), "--host", "127.0.0.1"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pki/agent.pem").exists() and "Keep ca-key.pem safe" in result.stdout


def test_cli_knows_the_same_kinds() -> None:
    from agent.cli import certs as cli_certs

    assert cli_certs.KINDS == certs.KINDS
