"""`fhir-server clients|users|keys|signing-keys`: a round trip through real processes, then the
refusals in process (faster)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp
import pytest
from argon2 import PasswordHasher, profiles
from joserfc.jwk import RSAKey

from fhir_server import cli
from fhir_server.auth import passwords
from fhir_server.auth.store import AuthStore
from fhir_server.storage.sql.backend import SqlBackend


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FHIR_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@contextmanager
def _store(url: str) -> Iterator[AuthStore]:
    backend = SqlBackend(url)
    backend.start()
    try:
        yield AuthStore(backend.engine)
    finally:
        backend.close()


def test_round_trip_through_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    added = _run(url, "clients", "add", "--client-id", "svc", "--generate-secret",
                 "--grant-types", "client_credentials,refresh_token", "--scopes", "system/*.rs")
    assert added.returncode == 0, added.stderr
    secret = re.search(r"client_secret: (\S+)", added.stdout)
    assert secret is not None

    user = _run(url, "users", "add", "--username", "alice", "--password", "pw-alice",
                "--fhir-user", "Practitioner/1", "--totp")
    assert user.returncode == 0, user.stderr
    uri = re.search(r"otpauth://\S+", user.stdout)
    assert uri is not None

    key = _run(url, "keys", "create", "--client-id", "svc", "--scopes", "system/Patient.rs")
    assert key.returncode == 0, key.stderr
    api_key = key.stdout.strip()
    assert api_key.startswith("fhk_") and "shown once" in key.stderr

    rotated = _run(url, "signing-keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr

    listed = _run(url, "clients", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("svc\tconfidential")
    assert secret.group(1) not in listed.stdout and "argon2" not in listed.stdout

    with _store(url) as store:
        assert store.verify_client_secret("svc", secret.group(1))
        record = store.verify_password("alice", "pw-alice")
        assert record is not None and record.fhir_user == "Practitioner/1"
        totp = pyotp.parse_uri(uri.group(0))
        assert isinstance(totp, pyotp.TOTP) and store.verify_totp("alice", totp.now())
        found = store.lookup_api_key(api_key)
        assert found is not None and (found.client_id, found.scopes) == ("svc", "system/Patient.rs")
        assert [k.active for k in store.signing_keys()] == [True]

    revoked = _run(url, "keys", "revoke", api_key[:12])
    assert revoked.returncode == 0, revoked.stderr
    removed = _run(url, "clients", "remove", "svc")
    assert removed.returncode == 0, removed.stderr
    with _store(url) as store:
        assert store.lookup_api_key(api_key) is None and store.get_client("svc") is None


# -- in process -------------------------------------------------------------------------------

@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("FHIR_DATABASE_URL", url)
    # Production argon2 parameters cost about 0.3 s a hash here; the commands are the same.
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher.from_parameters(profiles.CHEAPEST))
    return url


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _jwks_file(tmp_path: Path, alg: str) -> str:
    key = RSAKey.generate_key(2048, private=False, parameters={"alg": alg})
    path = tmp_path / f"jwks-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    return str(path)


def test_client_registration_rules(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add = ("clients", "add", "--scopes", "system/*.rs")
    assert _main(capsys, *add, "--client-id", "pub", "--grant-types", "authorization_code",
                 "--redirect-uri", "http://localhost/cb")[0] == 0
    code, out, err = _main(capsys, *add, "--client-id", "pub", "--grant-types", "authorization_code",
                           "--redirect-uri", "http://localhost/cb")
    assert code == 1 and "already exists" in err

    refusals = [
        (["--client-id", "a", "--grant-types", "client_credentials"], "confidential"),
        (["--client-id", "b", "--grant-types", "authorization_code"], "redirect-uri"),
        (["--client-id", "c", "--grant-types", "implicit", "--secret", "s"], "grant types"),
        (["--client-id", "d", "--grant-types", "password", "--secret", "s", "--public"], "--public"),
        (["--client-id", "e", "--grant-types", "client_credentials", "--jwks-url", "http://evil.example/jwks"],
         "https"),
        (["--client-id", "f", "--grant-types", "client_credentials", "--jwks-file", _jwks_file(tmp_path, alg="RS256")],
         "RS384"),
        (["--client-id", "g", "--grant-types", "client_credentials", "--jwks-file", str(tmp_path / "missing.json")],
         "cannot read"),
    ]
    for args, message in refusals:
        code, out, err = _main(capsys, *add, *args)
        assert code == 1 and message in err, (args, err)

    code, out, err = _main(capsys, *add, "--client-id", "jwt", "--grant-types", "client_credentials",
                           "--jwks-file", _jwks_file(tmp_path, alg="RS384"))
    assert code == 0 and "private_key_jwt" in out, err
    code, out, err = _main(capsys, *add, "--client-id", "remote", "--grant-types", "client_credentials",
                           "--jwks-url", "https://app.example/jwks")
    assert code == 0, err
    with pytest.raises(SystemExit):
        cli.main([*add, "--client-id", "h", "--grant-types", "password", "--secret", "s", "--generate-secret"])
    capsys.readouterr()

    code, out, _ = _main(capsys, "clients", "list")
    assert [line.split("\t")[:2] for line in out.splitlines()] == [
        ["jwt", "private_key_jwt"], ["pub", "public"], ["remote", "private_key_jwt"]]
    assert _main(capsys, "clients", "remove", "nobody")[0] == 1


def test_users(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "users", "add", "--username", "bob", "--patient", "123")
    assert code == 0
    password = re.search(r"password: (\S+)", out)
    assert password is not None and "otpauth" not in out
    assert _main(capsys, "users", "add", "--username", "bob", "--password", "x")[0] == 1
    code, out, _ = _main(capsys, "users", "list")
    assert out.strip() == "bob\tfhir_user=-\tpatient=123\ttotp=no"
    with _store(url) as store:
        assert store.verify_password("bob", password.group(1)) is not None
    assert _main(capsys, "users", "remove", "bob")[0] == 0
    assert _main(capsys, "users", "remove", "bob")[0] == 1


def test_api_and_signing_keys(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(capsys, "keys", "create", "--client-id", "nobody")
    assert code == 1 and "nobody" in err
    _main(capsys, "clients", "add", "--client-id", "svc", "--secret", "s", "--grant-types", "client_credentials",
          "--scopes", "system/*.rs")
    code, key, _ = _main(capsys, "keys", "create", "--client-id", "svc")
    key = key.strip()
    code, out, _ = _main(capsys, "keys", "list")
    assert out.startswith(key[:12] + "…\tclient=svc\tscopes=(client scopes)") and key not in out
    prefix = out.split("\t")[0]
    assert _main(capsys, "keys", "revoke", prefix)[0] == 0  # pasted from the listing, ellipsis and all
    assert _main(capsys, "keys", "revoke", prefix)[0] == 1
    assert "revoked" in _main(capsys, "keys", "list")[1]

    for _ in range(2):
        assert _main(capsys, "signing-keys", "rotate")[0] == 0
    code, out, _ = _main(capsys, "signing-keys", "list")
    assert [line.split("\t")[-1] for line in out.splitlines()] == ["active", "verify-only"]
