"""The registry client against an in-process fake registry (httpx.MockTransport): Accept headers and
manifest identity, resume/restart/retry of blob downloads, basic and bearer auth, redirects, the plain-HTTP
policy, and the credentials file. ``FakeRegistry`` is shared with the puller's unit tests."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from agent.errors import DigestMismatch, InvalidArgument, NotFound, Unauthenticated, Unavailable
from agent.images import auth, distribution
from agent.images.auth import Credentials
from agent.images.distribution import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ClientSettings,
    RegistryClient,
)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Body(httpx.SyncByteStream):
    """A streamed body, as a real connection delivers it (httpx reads ``content=`` bodies eagerly)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data


class _CutStream(httpx.SyncByteStream):
    """A body that delivers ``keep`` bytes then fails like a dropped connection."""

    def __init__(self, data: bytes, keep: int) -> None:
        self._data, self._keep = data, keep

    def __iter__(self) -> Iterator[bytes]:
        yield self._data[: self._keep]
        raise httpx.ReadError("connection reset by peer")


@dataclass
class FakeRegistry:
    """A tiny distribution API: manifests by repo+reference, blobs by digest, optional basic/bearer auth,
    scripted faults per blob digest, and a log of every request (method, path, headers)."""

    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    auth_mode: str = "none"  # "none" | "basic" | "bearer"
    user: str = "alice"
    password: str = "s3cret-pw"
    # digest → ["cut", "corrupt", "503", "short", ...], one consumed per request
    faults: dict[str, list[str]] = field(default_factory=dict)
    redirect_blobs: bool = False
    down: bool = False
    send_content_type_only: bool = False  # omit mediaType from bodies? (set per manifest instead)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    gate: dict[str, threading.Event] = field(default_factory=dict)  # digest → released when set
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- building content ---------------------------------------------------------------------------

    def add_blob(self, data: bytes) -> dict[str, Any]:
        self.blobs[digest_of(data)] = data
        return {"digest": digest_of(data), "size": len(data)}

    def add_image(
        self,
        repo: str,
        tag: str | None,
        layers: list[bytes],
        *,
        docker: bool = False,
        arch: str = "amd64",
        compress: bool = True,
        cmd: str = "/bin/sh",
    ) -> tuple[str, str]:
        """Pushes an image (layers are uncompressed tars); returns (manifest digest, config digest)."""
        layer_type = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                      else "application/vnd.oci.image.layer.v1.tar+gzip")
        if not compress:
            layer_type = "application/vnd.oci.image.layer.v1.tar"
        descs = []
        for tar in layers:
            blob = gzip.compress(tar, mtime=0) if compress else tar
            descs.append({"mediaType": layer_type, **self.add_blob(blob)})
        config = json.dumps({
            "architecture": arch, "os": "linux", "config": {"Cmd": [cmd], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(t) for t in layers]},
        }).encode()
        config_desc = self.add_blob(config)
        manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        config_type = ("application/vnd.docker.container.image.v1+json" if docker
                       else "application/vnd.oci.image.config.v1+json")
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": config_type, **config_desc}, "layers": descs,
        }).encode()
        self.put_manifest(repo, tag, manifest, manifest_type)
        return digest_of(manifest), config_desc["digest"]

    def add_index(self, repo: str, tag: str, entries: list[tuple[str, str, str]], *, docker: bool) -> str:
        """An index over manifests already pushed: entries are (manifest digest, os, arch)."""
        media = DOCKER_LIST if docker else OCI_INDEX
        child = DOCKER_MANIFEST if docker else OCI_MANIFEST
        index = json.dumps({"schemaVersion": 2, "mediaType": media, "manifests": [
            {"mediaType": child, "digest": d, "size": len(self.manifests[(repo, d)][0]),
             "platform": {"os": o, "architecture": a}} for d, o, a in entries]}).encode()
        self.put_manifest(repo, tag, index, media)
        return digest_of(index)

    def put_manifest(self, repo: str, tag: str | None, data: bytes, media_type: str) -> None:
        self.manifests[(repo, digest_of(data))] = (data, media_type)
        if tag is not None:
            self.manifests[(repo, tag)] = (data, media_type)

    def blob_gets(self, digest: str) -> int:
        return sum(1 for m, p, _h in self.log if m == "GET" and p.endswith(f"/blobs/{digest}"))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- serving ------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self.lock:
            self.log.append((request.method, f"{request.url.host}{path}", dict(request.headers)))
        if self.down:
            raise httpx.ConnectError("connection refused")
        if request.url.host == "auth.test":
            return self._token(request)
        if request.url.host == "storage.test":
            return self._blob(request, path.rsplit("/", 1)[1])
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if path == "/v2/":
            return httpx.Response(200, json={})
        parts = path.removeprefix("/v2/").rsplit("/", 2)
        repo, kind, ref = parts[0], parts[1], parts[2]
        if kind == "manifests":
            found = self.manifests.get((repo, ref))
            if found is None:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN",
                                                             "message": "manifest unknown"}]})
            data, media = found
            return httpx.Response(200, stream=_Body(data), headers={
                "Content-Type": media, "Docker-Content-Digest": digest_of(data),
                "Content-Length": str(len(data))})
        if self.redirect_blobs:
            return httpx.Response(307, headers={"Location": f"https://storage.test/blob/{ref}"})
        return self._blob(request, ref)

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        given = request.headers.get("Authorization", "")
        if self.auth_mode == "basic":
            good = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if given != good:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth_mode == "bearer" and given != "Bearer tok-123":
            scope = ""
            if request.url.path != "/v2/":
                repo = request.url.path.removeprefix("/v2/").rsplit("/", 2)[0]
                scope = f',scope="repository:{repo}:pull"'
            return httpx.Response(401, headers={
                "WWW-Authenticate": f'Bearer realm="https://auth.test/token",service="fake"{scope}'})
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        good = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != good:
            return httpx.Response(401)
        query = parse_qs(request.url.query.decode())
        if query.get("service") != ["fake"] or not query.get("scope"):
            return httpx.Response(400)
        return httpx.Response(200, json={"token": "tok-123", "expires_in": 300})

    def _blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        gate = self.gate.get(digest)
        if gate is not None:
            assert gate.wait(timeout=30), "test never released the gate"
        data = self.blobs.get(digest)
        if data is None:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]})
        with self.lock:
            queue = self.faults.get(digest, [])
            fault = queue.pop(0) if queue else ""
        if fault == "503":
            return httpx.Response(503)
        if fault == "down":
            raise httpx.ConnectError("connection refused")
        if fault == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = 0
        rng = request.headers.get("Range")
        if rng and fault != "ignore_range":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        headers = {"Content-Length": str(len(data) - start)}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if fault == "short":  # 200 whatever the Range, half the body, then a clean end
            return httpx.Response(200, headers={"Content-Length": str(len(data))},
                                  stream=_Body(data[: len(data) // 2]))
        if fault in ("cut", "ignore_range"):
            return httpx.Response(status, headers=headers,
                                  stream=_CutStream(data[start:], max(1, (len(data) - start) // 2)))
        return httpx.Response(status, headers=headers, stream=_Body(data[start:]))


def client_for(fake: FakeRegistry, *, registry: str = "reg.test:5000",
               credentials: Credentials | None = None, retries: int = 3) -> RegistryClient:
    return RegistryClient(registry, credentials=credentials, settings=ClientSettings(retries=retries),
                          auth_hint="/root/auth.json", transport=fake.transport(), sleep=lambda _s: None)


def fetch(client: RegistryClient, digest: str, size: int) -> bytes:
    import io

    out = io.BytesIO()
    client.fetch_blob("app", digest, size=size, out=out)
    return out.getvalue()


BLOB = bytes(range(256)) * 64


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


# -- pure policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("registry", "insecure", "allowed"), [
    ("127.0.0.1:5000", (), True),
    ("127.9.9.9", (), True),
    ("[::1]:5000", (), True),
    ("localhost:5000", (), True),
    ("10.0.0.5:5000", (), False),
    ("registry.example.com", (), False),
    ("10.0.0.5:5000", ("10.0.0.5:5000",), True),
    ("10.0.0.5:5000", ("10.0.0.5",), True),
    ("10.0.0.5:5001", ("10.0.0.5:5000",), False),
    ("notlocalhost.example:5000", ("localhost",), False),
])
def test_plain_http_policy(registry: str, insecure: tuple[str, ...], allowed: bool) -> None:
    assert distribution.plain_http_allowed(registry, insecure) is allowed


def test_parse_bearer_challenge_with_quoted_comma() -> None:
    scheme, params = distribution.parse_challenge(
        'Bearer realm="https://auth.test/token",service="reg",scope="repository:a:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.test/token", "service": "reg", "scope": "repository:a:pull,push"}


def test_backoff_is_capped_and_jittered() -> None:
    assert distribution.backoff_delay(10, base=0.25, cap=8.0, rng=lambda: 1.0) == 8.0
    assert distribution.backoff_delay(1, base=0.25, cap=8.0, rng=lambda: 1.0) == 0.5
    assert distribution.backoff_delay(3, base=0.25, cap=8.0, rng=lambda: 0.0) == 0.0


# -- manifests -----------------------------------------------------------------------------------------


def test_manifest_request_accepts_all_four_types_and_is_identified_by_its_bytes(fake: FakeRegistry) -> None:
    digest, _ = fake.add_image("app", "v1", [b"x" * 1024])
    got = client_for(fake).get_manifest("app", "v1")
    assert got.digest == digest and got.media_type == OCI_MANIFEST
    accept = next(h["accept"] for m, p, h in fake.log if p.endswith("/manifests/v1"))
    assert {t.strip() for t in accept.split(",")} == {OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST}


def test_media_type_falls_back_to_content_type(fake: FakeRegistry) -> None:
    body = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    fake.put_manifest("app", "bare", body, DOCKER_MANIFEST)
    assert client_for(fake).get_manifest("app", "bare").media_type == DOCKER_MANIFEST


def test_manifest_digest_header_mismatch_is_refused(fake: FakeRegistry) -> None:
    fake.add_image("app", "v1", [b"x" * 1024])
    original = fake.handle

    def lying(request: httpx.Request) -> httpx.Response:
        resp = original(request)
        if "/manifests/" in request.url.path:
            resp.headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
        return resp

    fake.handle = lying  # type: ignore[method-assign]
    with pytest.raises(DigestMismatch, match="registry says sha256:0000"):
        client_for(fake).get_manifest("app", "v1")


def test_manifest_by_wrong_digest_is_refused(fake: FakeRegistry) -> None:
    digest, _ = fake.add_image("app", "v1", [b"x" * 1024])
    data, media = fake.manifests[("app", digest)]
    wrong = "sha256:" + "1" * 64
    fake.manifests[("app", wrong)] = (data, media)  # a registry serving other bytes under that digest
    with pytest.raises(DigestMismatch, match="not the requested digest"):
        client_for(fake).get_manifest("app", wrong)


def test_unknown_manifest_is_not_found_naming_registry_and_ref(fake: FakeRegistry) -> None:
    with pytest.raises(NotFound, match=r"reg\.test:5000/app:nope.*manifest unknown"):
        client_for(fake).get_manifest("app", "nope")


# -- blobs ---------------------------------------------------------------------------------------------


def test_cut_download_resumes_with_range(fake: FakeRegistry) -> None:
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["cut"]
    assert fetch(client_for(fake), desc["digest"], desc["size"]) == BLOB
    ranges = [h.get("range") for m, p, h in fake.log if p.endswith(desc["digest"])]
    assert ranges == [None, f"bytes={len(BLOB) // 2}-"]


def test_ignored_range_restarts_from_zero(fake: FakeRegistry) -> None:
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["cut", "ignore_range"]
    assert fetch(client_for(fake), desc["digest"], desc["size"]) == BLOB
    assert fake.blob_gets(desc["digest"]) == 3


def test_503_twice_then_ok(fake: FakeRegistry) -> None:
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["503", "503"]
    assert fetch(client_for(fake), desc["digest"], desc["size"]) == BLOB
    assert fake.blob_gets(desc["digest"]) == 3


def test_persistent_503_gives_up_after_bounded_retries(fake: FakeRegistry) -> None:
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["503"] * 10
    with pytest.raises(Unavailable, match="after 3 attempts"):
        fetch(client_for(fake, retries=2), desc["digest"], desc["size"])
    assert fake.blob_gets(desc["digest"]) == 3


def test_corrupt_blob_is_a_digest_mismatch_naming_it(fake: FakeRegistry) -> None:
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["corrupt"]
    with pytest.raises(DigestMismatch, match=desc["digest"]):
        fetch(client_for(fake), desc["digest"], desc["size"])


def test_blob_longer_than_descriptor_is_refused(fake: FakeRegistry) -> None:
    desc = fake.add_blob(BLOB)
    with pytest.raises(DigestMismatch, match="larger than"):
        fetch(client_for(fake), desc["digest"], desc["size"] - 10)


def test_redirect_to_storage_is_followed_without_credentials(fake: FakeRegistry) -> None:
    fake.auth_mode = "basic"
    fake.redirect_blobs = True
    desc = fake.add_blob(BLOB)
    creds = Credentials("reg.test:5000", username="alice", password="s3cret-pw")
    assert fetch(client_for(fake, credentials=creds), desc["digest"], desc["size"]) == BLOB
    storage = [h for m, p, h in fake.log if p.startswith("storage.test")]
    assert len(storage) == 1 and "authorization" not in storage[0]


# -- authentication ------------------------------------------------------------------------------------


def test_basic_auth_after_challenge(fake: FakeRegistry) -> None:
    fake.auth_mode = "basic"
    fake.add_image("app", "v1", [b"x" * 100])
    creds = Credentials("reg.test:5000", username="alice", password="s3cret-pw")
    client = client_for(fake, credentials=creds)
    client.get_manifest("app", "v1")
    client.get_manifest("app", "v1")
    manifest_requests = [h for m, p, h in fake.log if p.endswith("/manifests/v1")]
    # one challenge, then credentials are sent pre-emptively
    assert [("authorization" in h) for h in manifest_requests] == [False, True, True]


def test_bearer_flow_gets_a_scoped_token_once(fake: FakeRegistry) -> None:
    fake.auth_mode = "bearer"
    fake.add_image("app", "v1", [b"x" * 100])
    creds = Credentials("reg.test:5000", username="alice", password="s3cret-pw")
    client = client_for(fake, credentials=creds)
    client.get_manifest("app", "v1")
    client.get_manifest("app", "v1")
    token_requests = [p for m, p, h in fake.log if p.startswith("auth.test")]
    assert len(token_requests) == 1


def test_missing_credentials_name_the_file_not_a_secret(fake: FakeRegistry) -> None:
    fake.auth_mode = "bearer"
    fake.add_image("app", "v1", [b"x" * 100])
    with pytest.raises(Unauthenticated, match=r"authentication required for reg\.test:5000: add credentials"
                                              r" to /root/auth\.json"):
        client_for(fake).get_manifest("app", "v1")


@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_wrong_password_is_refused_without_echoing_it(fake: FakeRegistry, mode: str) -> None:
    fake.auth_mode = mode
    fake.add_image("app", "v1", [b"x" * 100])
    creds = Credentials("reg.test:5000", username="alice", password="wrong-pw-XYZ")
    with pytest.raises(Unauthenticated) as info:
        client_for(fake, credentials=creds).get_manifest("app", "v1")
    assert "wrong-pw-XYZ" not in str(info.value) and "/root/auth.json" in str(info.value)
    assert "wrong-pw-XYZ" not in repr(creds)


def test_unreachable_registry_is_unavailable(fake: FakeRegistry) -> None:
    fake.down = True
    with pytest.raises(Unavailable, match=r"reg\.test:5000 unavailable after 3 attempts"):
        client_for(fake, retries=2).get_manifest("app", "v1")


# -- credentials file ----------------------------------------------------------------------------------


def write_auth(path: Path, doc: dict[str, Any], mode: int = 0o600) -> Path:
    path.write_text(json.dumps(doc))
    path.chmod(mode)
    return path


def test_credentials_file_layouts(tmp_path: Path) -> None:
    f = write_auth(tmp_path / "auth.json", {"auths": {
        "a:5000": {"auth": base64.b64encode(b"u1:p:w").decode()},
        "b": {"username": "u2", "password": "p2"},
        "https://c": {"identitytoken": "rt"},
    }})
    assert auth.load_credentials(f, "a:5000") == Credentials("a:5000", username="u1", password="p:w")
    assert auth.load_credentials(f, "b") == Credentials("b", username="u2", password="p2")
    assert auth.load_credentials(f, "c") == Credentials("c", identity_token="rt")
    assert auth.load_credentials(f, "d") is None
    assert auth.load_credentials(tmp_path / "missing.json", "a:5000") is None


def test_group_readable_credentials_are_refused(tmp_path: Path) -> None:
    f = write_auth(tmp_path / "auth.json", {"auths": {"a": {"username": "u", "password": "topsecret"}}},
                   mode=0o640)
    with pytest.raises(InvalidArgument, match="chmod 600") as info:
        auth.load_credentials(f, "a")
    assert "topsecret" not in str(info.value)


def test_malformed_auth_entry_does_not_quote_it(tmp_path: Path) -> None:
    f = write_auth(tmp_path / "auth.json", {"auths": {"a": {"auth": "bm90LWEtcGFpcg=="}}})  # "not-a-pair"
    with pytest.raises(InvalidArgument) as info:
        auth.load_credentials(f, "a")
    assert "not-a-pair" not in str(info.value) and "bm90" not in str(info.value)


# -- redirect loops (issue 12, finding 9) --------------------------------------------------------------


def _looping_client(loop_on: str) -> RegistryClient:
    """A registry whose every URL containing ``loop_on`` redirects to itself."""

    def handle(request: httpx.Request) -> httpx.Response:
        if loop_on in request.url.path:
            return httpx.Response(302, headers={"Location": str(request.url)})
        return httpx.Response(200, json={})

    return RegistryClient("reg.test:5000", credentials=None, settings=ClientSettings(retries=1),
                          auth_hint="/root/auth.json", transport=httpx.MockTransport(handle),
                          sleep=lambda _s: None)


def test_a_redirect_loop_on_a_manifest_is_a_clear_error_not_an_httpx_exception() -> None:
    with pytest.raises(InvalidArgument, match="redirect") as info:
        _looping_client("/manifests/").get_manifest("app", "v1")
    assert "reg.test:5000" in str(info.value)


def test_a_redirect_loop_on_the_api_probe_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="redirect"):
        _looping_client("/v2/").get_manifest("app", "v1")


def test_a_redirect_loop_on_a_blob_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="redirect"):
        fetch(_looping_client("/blobs/"), "sha256:" + "0" * 64, 10)
