"""A hostile registry cannot hang a blob download (issue 12, finding 4): a body that keeps ending short
while Range is ignored fails after the retry budget, an endless body is cut at the blob deadline, and an
``Abort`` set from elsewhere (the caller went away, the agent is stopping) stops a download in progress.
Every test here would loop or stream forever without the defence; pytest-timeout fails it instead."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import pytest

from agent.errors import InvalidArgument, Unavailable
from agent.images.abort import Abort, Aborted
from agent.images.distribution import ClientSettings, RegistryClient
from tests.unit.images.test_distribution import BLOB, FakeRegistry

pytestmark = pytest.mark.timeout(60)

CHUNK = b"\0" * 65536
HUGE = 1 << 40


class _Sink(io.RawIOBase):
    """A seekable file that keeps nothing: endless bodies must not fill the test's memory."""

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def truncate(self, size: int | None = None) -> int:
        return 0


class _Endless(httpx.SyncByteStream):
    """Zero bytes for ever; ``after_chunks`` of them, it sets ``abort`` (when given) with ``reason``."""

    def __init__(self, *, abort: Abort | None = None, after_chunks: int = 0, reason: str = "") -> None:
        self.chunks = 0
        self._abort, self._after, self._reason = abort, after_chunks, reason

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.chunks += 1
            if self._abort is not None and self.chunks == self._after:
                self._abort.set(self._reason)
            yield CHUNK


def endless_client(stream: _Endless, **settings: float) -> tuple[RegistryClient, list[str]]:
    requests: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        return httpx.Response(200, stream=stream)

    client = RegistryClient("reg.test:5000", credentials=None, settings=ClientSettings(retries=2, **settings),
                            auth_hint="/root/auth.json", transport=httpx.MockTransport(handle),
                            sleep=lambda _s: None)
    return client, requests


DIGEST = "sha256:" + "ab" * 32


def test_short_bodies_with_range_ignored_give_up_after_the_retry_budget() -> None:
    fake = FakeRegistry()
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["short"] * 100_000  # as good as for ever
    client = RegistryClient("reg.test:5000", credentials=None, settings=ClientSettings(retries=3),
                            auth_hint="/root/auth.json", transport=fake.transport(), sleep=lambda _s: None)
    with pytest.raises(Unavailable, match=r"kept failing at byte \d+ of 16384 after 4 attempts without"):
        client.fetch_blob("app", desc["digest"], size=desc["size"], out=io.BytesIO())
    # the first attempt got half the blob (progress); then 4 that restarted from 0 and got no further
    assert fake.blob_gets(desc["digest"]) == 5


def test_an_endless_body_is_cut_at_the_blob_deadline() -> None:
    stream = _Endless()
    client, requests = endless_client(stream, blob_deadline=0.2)
    with pytest.raises(Aborted, match=r"blob sha256:(ab)+ from reg.test:5000: not finished within 0.2s "
                                      r"\(the agent's --pull-blob-deadline\)"):
        client.fetch_blob("app", DIGEST, size=HUGE, out=_Sink())  # type: ignore[arg-type]
    assert requests.count(f"/v2/app/blobs/{DIGEST}") == 1  # a deadline is not retried


def test_an_abort_stops_a_download_in_progress() -> None:
    abort = Abort()
    stream = _Endless(abort=abort, after_chunks=5, reason="the caller went away")
    client, requests = endless_client(stream)
    with pytest.raises(Aborted, match="the caller went away"):
        client.fetch_blob("app", DIGEST, size=HUGE, out=_Sink(), abort=abort)  # type: ignore[arg-type]
    assert stream.chunks == 5
    assert requests.count(f"/v2/app/blobs/{DIGEST}") == 1


def test_an_endless_manifest_is_refused_by_size() -> None:
    client, _ = endless_client(_Endless())
    with pytest.raises(InvalidArgument, match="larger than"):
        client.get_manifest("app", "v1")


def test_an_abort_set_before_a_retry_wait_ends_it() -> None:
    abort = Abort()
    fake = FakeRegistry()
    desc = fake.add_blob(BLOB)
    fake.faults[desc["digest"]] = ["503"] * 10
    client = RegistryClient("reg.test:5000", credentials=None,
                            settings=ClientSettings(retries=5, backoff_base=3600, backoff_cap=3600),
                            auth_hint="/root/auth.json", transport=fake.transport())
    threading.Timer(0.05, abort.set, args=("the agent is stopping",)).start()
    with pytest.raises(Aborted, match="the agent is stopping"):
        client.fetch_blob("app", desc["digest"], size=desc["size"], out=io.BytesIO(), abort=abort)
