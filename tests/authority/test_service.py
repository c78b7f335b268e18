"""The authority's checks: signature, expiry, proof, keys, single use; secrets never stored."""

from __future__ import annotations

import math
import threading

import msgspec
import pytest

from qflare.authority import AuthorityKeys, init_authority, load_authority
from qflare.crypto import MlDsa65Signer, SystemRng
from qflare.protocol.identity import (
    TokenClaims,
    decode_authority_key,
    enrollment_proof,
    issue_token,
    parse_token,
    verify_certificate,
)
from qflare.protocol.wire import EnrollmentRefusedError
from tests.authority.helpers import TestAuthority, request_for, token_with


def _refused(authority: TestAuthority, request) -> EnrollmentRefusedError:
    with pytest.raises(EnrollmentRefusedError) as err:
        authority.service.issue(request)
    return err.value


def test_issue_certifies_exactly_the_requested_keys(authority: TestAuthority):
    request = request_for(authority.token(label="edge-1"))
    issued = authority.service.issue(request)
    assert decode_authority_key(issued.authority) == authority.keys.public
    body = verify_certificate(issued.certificate, authority.keys.public)
    assert (body.identity_pk, body.kem_pk, body.scheme.value) == (
        request.identity_pk,
        request.kem_pk,
        request.scheme,
    )
    assert (body.device_id, body.client_index, body.serial) == (issued.device_id, 0, 1)
    second = authority.service.issue(request_for(authority.token()))
    assert second.client_index == 1 and second.device_id != issued.device_id
    assert [c.serial for c in authority.service.certificates()] == [1, 2]


def test_a_token_is_single_use_but_a_retry_gets_the_same_certificate(authority: TestAuthority):
    token = authority.token()
    request = request_for(token)
    first = authority.service.issue(request)
    assert authority.service.issue(request) == first  # a lost answer does not cost the token
    err = _refused(authority, request_for(token))  # the holder, other keys
    assert (err.status, err.code) == (409, "token_used")
    assert len(authority.service.certificates()) == 1


def test_a_relay_that_swaps_in_its_own_keys_is_refused_and_the_token_survives(
    authority: TestAuthority,
):
    token = authority.token()
    honest = request_for(token)
    mallory = MlDsa65Signer.generate(SystemRng())
    swapped = msgspec.structs.replace(honest, identity_pk=mallory.public_key)
    err = _refused(authority, swapped)
    assert (err.status, err.code) == (401, "bad_proof")
    guessed = msgspec.structs.replace(swapped, proof=b"\0" * 32)
    assert _refused(authority, guessed).code == "bad_proof"
    assert authority.token_row(token).status(0) == "live"
    assert authority.service.issue(honest).client_index == 0


def test_forged_foreign_expired_and_nan_tokens_are_refused(authority: TestAuthority, tmp_path):
    other = init_authority(tmp_path / "other", SystemRng())
    fingerprint = authority.keys.public.fingerprint
    cases = {
        "token_forged": token_with(other.signer, fingerprint, expires_at=1e12),
        "wrong_authority": other_token(other),
        "token_expired": authority.token(expired=True),
        "bad_token": token_with(authority.keys.signer, fingerprint, expires_at=math.nan),
    }
    for code, token in cases.items():
        err = _refused(authority, request_for(token))
        assert err.code == code, (code, err)
    inf = token_with(authority.keys.signer, fingerprint, expires_at=math.inf)
    assert _refused(authority, request_for(inf)).code == "bad_token"
    assert authority.service.certificates() == []


def other_token(other: AuthorityKeys) -> str:
    return token_with(other.signer, other.public.fingerprint, expires_at=1e12)


def test_revoked_and_unknown_tokens(authority: TestAuthority):
    assert _refused(authority, request_for(authority.token(revoked=True))).code == "token_revoked"
    keys = authority.keys
    stray = token_with(keys.signer, keys.public.fingerprint, expires_at=1e12)
    # signed by the authority, but with a secret it did not derive: the holder proves nothing
    assert _refused(authority, request_for(stray)).code == "bad_proof"
    claims = TokenClaims(token_id="a" * 32, authority=keys.public.fingerprint, expires_at=1e12)
    lost = issue_token(keys.signer, claims, keys.token_secret(claims.token_id))
    assert _refused(authority, request_for(lost)).code == "token_unknown"  # e.g. a lost database
    assert not authority.service.revoke_token("nope")


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("identity_pk", b"\1" * 31, "bad_identity_key"),
        ("kem_pk", b"\2" * 1184, "bad_kem_key"),
        ("scheme", "rsa", "wrong_scheme"),
    ],
)
def test_malformed_keys_are_refused_even_with_a_valid_proof(
    authority: TestAuthority, field, value, code
):
    token = authority.token()
    honest = request_for(token)
    changed = {**msgspec.structs.asdict(honest), field: value}
    signed = parse_token(token)
    proof = enrollment_proof(
        signed.secret, signed.claims, changed["scheme"], changed["identity_pk"], changed["kem_pk"]
    )
    request = msgspec.structs.replace(honest, **{field: value}, proof=proof)
    assert _refused(authority, request).code == code
    assert authority.service.issue(honest).client_index == 0


def test_concurrent_requests_with_one_token_have_one_winner(authority: TestAuthority):
    token = authority.token()
    requests = [request_for(token) for _ in range(4)]
    barrier = threading.Barrier(len(requests))
    outcomes: list[str] = []

    def run(request) -> None:
        barrier.wait()
        try:
            authority.service.issue(request)
            outcomes.append("issued")
        except EnrollmentRefusedError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["issued", "token_used", "token_used", "token_used"]
    assert len(authority.service.certificates()) == 1


def test_token_lifetimes_and_labels_are_bounded(authority: TestAuthority):
    for ttl in (0.0, -1.0, math.nan, math.inf, 31 * 86_400.0):
        with pytest.raises(ValueError, match="lifetime"):
            authority.service.create_token(ttl)
    with pytest.raises(ValueError, match="label"):
        authority.service.create_token(60, "x" * 201)


def test_no_token_secret_is_stored(authority: TestAuthority):
    secrets = [parse_token(authority.token()).secret for _ in range(3)]
    authority.close()
    data = b"".join(p.read_bytes() for p in authority.directory.glob("authority.sqlite*"))
    assert data and not any(s in data for s in secrets)


def test_key_files(tmp_path):
    keys = init_authority(tmp_path / "a", SystemRng())
    key_file = tmp_path / "a" / "authority.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert load_authority(tmp_path / "a").public == keys.public
    assert keys.signer.seed().reveal() not in (tmp_path / "a" / "authority.pub").read_bytes()
    assert "redacted" in repr(keys)
    with pytest.raises(FileExistsError):
        init_authority(tmp_path / "a", SystemRng())
    key_file.chmod(0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_authority(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="authority init"):
        load_authority(tmp_path / "missing")
