"""Auth and transport variants of the registry: htpasswd basic auth, the bearer-token flow against our
token server (kid- and x5c-signed JWTs both accepted by distribution 2.8), and HTTPS with a test CA."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.fixtures.registry import ACCEPT_ALL, REGISTRY_USER, Catalogue, Registry, RegistryFactory
from tests.fixtures.tokenserver import Credentials, TokenServer, decode_jwt
from tests.integration.registry_world.probe import basic, fetch

pytestmark = pytest.mark.integration


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    fields = {}
    for part in params.split('",'):
        key, _, value = part.partition("=")
        fields[key.strip()] = value.strip().strip('"')
    return scheme, fields


# -- basic auth --------------------------------------------------------------------------------------


def test_basic_auth_challenges_then_serves(basic_auth_registry: Registry, registry_catalogue: Catalogue
                                           ) -> None:
    reg = basic_auth_registry
    anonymous = fetch(reg.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL})
    assert anonymous.status == 401
    scheme, fields = parse_challenge(anonymous.header("WWW-Authenticate") or "")
    assert scheme == "Basic" and fields["realm"] == "shoal-test-registry"
    wrong_password = Credentials(REGISTRY_USER.username, "no")
    wrong = fetch(reg.url, "/v2/", headers={"Authorization": basic(wrong_password)})
    assert wrong.status == 401
    assert reg.basic_auth is not None
    good = fetch(reg.url, "/v2/busybox/manifests/oci",
                 headers={"Accept": ACCEPT_ALL, "Authorization": basic(reg.basic_auth)})
    assert good.status == 200
    assert good.header("Docker-Content-Digest") == registry_catalogue.busybox_oci.digest


def test_skopeo_needs_the_basic_credentials(basic_auth_registry: Registry, tmp_path: Path) -> None:
    src = f"docker://{basic_auth_registry.host}/busybox:oci"
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    denied = subprocess.run([*argv, src], capture_output=True, text=True, timeout=60, check=False)
    assert denied.returncode != 0
    creds = f"{REGISTRY_USER.username}:{REGISTRY_USER.password}"
    allowed = subprocess.run([*argv, "--creds", creds, src], capture_output=True, text=True, timeout=60,
                             check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["schemaVersion"] == 2


# -- bearer tokens -----------------------------------------------------------------------------------


def token_for(server: TokenServer, challenge: dict[str, str], credentials: Credentials | None) -> str:
    realm = urllib.parse.urlsplit(challenge["realm"])
    query = urllib.parse.urlencode({"service": challenge["service"], "scope": challenge["scope"]})
    answer = fetch(f"{realm.scheme}://{realm.netloc}", f"{realm.path}?{query}",
                   headers={"Authorization": basic(credentials)} if credentials else {})
    assert answer.status == 200, answer.body
    body = json.loads(answer.body)
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    return str(body["token"])


def test_bearer_flow(token_registry: Registry, token_server: TokenServer, registry_catalogue: Catalogue
                     ) -> None:
    reg = token_registry
    path = "/v2/busybox/manifests/oci"
    challenged = fetch(reg.url, path, headers={"Accept": ACCEPT_ALL})
    assert challenged.status == 401
    scheme, fields = parse_challenge(challenged.header("WWW-Authenticate") or "")
    assert scheme == "Bearer"
    assert fields == {"realm": token_server.realm, "service": token_server.service,
                      "scope": "repository:busybox:pull"}

    token = token_for(token_server, fields, REGISTRY_USER)
    header, claims = decode_jwt(token)
    assert header["alg"] == "ES256" and header["kid"] == token_server.ca_key_id
    assert claims["aud"] == token_server.service and claims["iss"] == token_server.issuer
    assert claims["access"] == [{"type": "repository", "name": "busybox", "actions": ["pull"]}]

    served = fetch(reg.url, path, headers={"Accept": ACCEPT_ALL, "Authorization": f"Bearer {token}"})
    assert served.status == 200
    assert served.header("Docker-Content-Digest") == registry_catalogue.busybox_oci.digest
    # The token is scoped: another repository is refused with it.
    other = fetch(reg.url, "/v2/multi/manifests/oci", headers={"Accept": ACCEPT_ALL,
                                                                "Authorization": f"Bearer {token}"})
    assert other.status == 401
    recorded = token_server.requests[-1]
    assert recorded.scopes == ["repository:busybox:pull"] and recorded.username == REGISTRY_USER.username


def test_token_server_refuses_missing_or_wrong_credentials(token_server: TokenServer) -> None:
    base = f"http://127.0.0.1:{token_server.port}"
    query = f"/token?service={token_server.service}&scope=repository:busybox:pull"
    assert fetch(base, query).status == 401
    wrong = fetch(base, query, headers={"Authorization": basic(Credentials(REGISTRY_USER.username, "x"))})
    assert wrong.status == 401
    assert [r.status for r in token_server.requests] == [401, 401]


def test_registry_rejects_tokens_it_must_not_trust(token_registry: Registry, token_server: TokenServer,
                                                   tmp_path: Path) -> None:
    access = [("repository", "busybox", ("pull",))]
    path, accept = "/v2/busybox/manifests/oci", {"Accept": ACCEPT_ALL}

    def status_with(token: str) -> int:
        return fetch(token_registry.url, path, headers={**accept, "Authorization": f"Bearer {token}"}).status

    assert status_with(token_server.issue_token(subject="t", access=access)) == 200
    assert status_with(token_server.issue_token(subject="t", access=access, audience="elsewhere")) == 401
    assert status_with(token_server.issue_token(subject="t", access=access, lifetime_s=-120)) == 401
    with TokenServer(tmp_path / "stranger", service=token_server.service,
                     issuer=token_server.issuer) as other:
        assert status_with(other.issue_token(subject="t", access=access)) == 401  # key not in rootcertbundle


def test_x5c_signed_tokens_are_accepted_too(registry_factory: RegistryFactory, tmp_path: Path) -> None:
    with TokenServer(tmp_path / "ts", key_reference="x5c") as ts:
        reg = registry_factory(token_server=ts)
        token = ts.issue_token(subject="t", access=[("repository", "busybox", ("pull",))])
        assert "x5c" in decode_jwt(token)[0] and "kid" not in decode_jwt(token)[0]
        answer = fetch(reg.url, "/v2/busybox/manifests/oci",
                       headers={"Accept": ACCEPT_ALL, "Authorization": f"Bearer {token}"})
        assert answer.status == 200


def test_skopeo_push_does_the_bearer_flow(token_registry: Registry, token_server: TokenServer,
                                          registry_catalogue: Catalogue) -> None:
    token_server.clear()
    layout = registry_catalogue.multi_layout
    pushed = token_registry.push(layout.layout, layout.tag, "pushed/multi:1", all_platforms=True)
    assert pushed.digest == layout.index_digest
    granted = [r for r in token_server.requests if r.status == 200]
    assert granted and all(r.username == REGISTRY_USER.username for r in granted)
    assert ("repository", "pushed/multi", ("pull", "push")) in {g for r in granted for g in r.granted}


def test_read_only_token_server_blocks_push(registry_factory: RegistryFactory, tmp_path: Path,
                                            registry_catalogue: Catalogue) -> None:
    with TokenServer(tmp_path / "ts", allowed_actions=frozenset({"pull"})) as ts:
        reg = registry_factory(token_server=ts)
        layout = registry_catalogue.multi_layout
        with pytest.raises(RuntimeError, match="skopeo push"):
            reg.push(layout.layout, layout.tag, "denied:1", all_platforms=True)
        assert all(a == ("pull",) for r in ts.requests for (_, _, a) in r.granted)


# -- TLS ---------------------------------------------------------------------------------------------


def test_https_with_the_ca_bundle_and_not_without(tls_registry: Registry, registry_catalogue: Catalogue
                                                  ) -> None:
    reg = tls_registry
    assert reg.url.startswith("https://") and reg.ca_bundle is not None
    good = fetch(reg.url, "/v2/busybox/manifests/oci", headers={"Accept": ACCEPT_ALL},
                 ca_bundle=reg.ca_bundle)
    assert good.status == 200
    assert good.header("Docker-Content-Digest") == registry_catalogue.busybox_oci.digest
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(reg.url, "/v2/")  # system CAs only
    plain = fetch(reg.url.replace("https://", "http://"), "/v2/")
    assert plain.status == 400  # Go's TLS server answers plain HTTP with 400


def test_skopeo_verifies_the_registry_certificate(tls_registry: Registry, tmp_path: Path) -> None:
    assert tls_registry.ca_bundle is not None
    certs_dir = tmp_path / "certs.d"
    certs_dir.mkdir()
    (certs_dir / "ca.crt").write_bytes(tls_registry.ca_bundle.read_bytes())
    src = f"docker://{tls_registry.host}/busybox:oci"
    untrusted = subprocess.run(["skopeo", "inspect", "--raw", src], capture_output=True, text=True,
                               timeout=60, check=False)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr
    trusted = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(certs_dir), src],
                             capture_output=True, text=True, timeout=60, check=False)
    assert trusted.returncode == 0, trusted.stderr
