"""Shoal's cluster PKI: one CA, and certificates for agents, schedulers and clients (mutual TLS).

``shoal certs init DIR`` writes the CA and one certificate of each kind into DIR, in the layout every
component reads with ``--tls-dir``: ``ca.pem`` plus ``agent.pem``/``agent-key.pem`` (servers),
``scheduler.pem``/``scheduler-key.pem`` and ``client.pem``/``client-key.pem``. Keys are ECDSA P-256,
written 0600; the CA key stays in DIR for ``shoal certs issue`` and should be moved somewhere safe once
the fleet's certificates exist.

A certificate's kind is its *role*, carried in the subject's organizational unit (``OU=scheduler``):
servers authorize callers by it (an agent accepts schedulers and clients, never another agent), and
``role_of`` reads it back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import AlreadyExists, InvalidArgument, NotFound

Key = ec.EllipticCurvePrivateKey
KINDS = ("agent", "scheduler", "client")


@dataclass(frozen=True)
class Pair:
    cert: x509.Certificate
    key: Key


def _name(cn: str, *, role: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal")]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


def role_of(cert: x509.Certificate) -> str | None:
    """The role (``agent``, ``scheduler`` or ``client``) of a certificate ``issue`` made; None for one
    without a known role (issued before roles existed, or by something else)."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    values = {str(u.value) for u in units}
    roles = values & set(KINDS)
    return roles.pop() if len(roles) == 1 else None


def _window(days: int, *, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate clock skew
    return start, start + dt.timedelta(days=days)


def make_ca(cn: str = "shoal-ca", *, days: int = 3650, not_before: dt.datetime | None = None) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(days, not_before=not_before)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Pair(cert, key)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(ca: Pair, cn: str, *, kind: str, hosts: Sequence[str] = (), days: int = 365,
          not_before: dt.datetime | None = None) -> Pair:
    """A leaf certificate. Agents and schedulers serve (and call each other), so they get both server
    and client usage and need ``hosts`` (DNS names or IPs clients dial); clients get client usage."""
    if kind not in KINDS:
        raise InvalidArgument(f"unknown certificate kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind != "client" and not hosts:
        raise InvalidArgument(f"a {kind} certificate needs the host names or addresses it serves on")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _window(days, not_before=not_before)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind != "client":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (x509.CertificateBuilder().subject_name(_name(cn, role=kind)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


def write_pair(directory: Path, stem: str, pair: Pair, *, overwrite: bool = False) -> None:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    if not overwrite:
        for path in (cert_path, key_path):
            if path.exists():
                raise AlreadyExists(f"{path} exists: use --force to replace it")
    key_bytes = pair.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))


def load_ca(directory: Path) -> Pair:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
    except FileNotFoundError as err:
        raise NotFound(f"no CA in {directory} ({err.filename}): run `shoal certs init {directory}`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{directory / 'ca-key.pem'} is not an ECDSA key written by shoal certs init")
    return Pair(cert, key)


def default_hosts() -> list[str]:
    return sorted({socket.gethostname(), "localhost", "127.0.0.1", "::1"})


def init_pki(directory: Path, *, hosts: Sequence[str], days: int = 365, force: bool = False) -> list[Path]:
    """CA + one agent, scheduler and client certificate; returns the files written."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / "ca.pem").exists() and not force:
        raise AlreadyExists(f"{directory} already holds a CA: use --force to replace everything, or "
                            "`shoal certs issue` to add certificates signed by it")
    ca = make_ca(days=max(days, 3650))
    write_pair(directory, "ca", ca, overwrite=True)
    for kind in KINDS:
        write_pair(directory, kind, issue(ca, f"shoal-{kind}", kind=kind, hosts=hosts, days=days),
                   overwrite=True)
    return sorted(directory.glob("*.pem"))
