import msgspec
import pytest

from qflare.crypto import DeterministicRng, MlDsa65Signer
from qflare.protocol.errors import RemoteProtocolError
from qflare.protocol.session import (
    C2S,
    S2C,
    ClientHello,
    HandshakeState,
    ServerHello,
    SessionInitiator,
    SessionResponder,
)

RNG = DeterministicRng(42)
DEVICE = MlDsa65Signer.generate(RNG)
SERVER = MlDsa65Signer.generate(RNG)
NOW = 1_000_000.0


def _handshake(rng_seed: int = 1):
    device = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(rng_seed))
    server = SessionResponder(SERVER, DeterministicRng(rng_seed + 100), lifetime_s=60)
    hello = device.hello(now=NOW)
    reply = server.respond(hello, DEVICE.public_key, now=NOW)
    finished, dev_ch = device.finish(reply, now=NOW)
    srv_ch = server.confirm(finished)
    return dev_ch, srv_ch, hello, reply, finished


def test_handshake_establishes_matching_channels():
    dev, srv, *_ = _handshake()
    seq, ct = dev.seal(b"update", now=NOW, direction=C2S)
    assert srv.open(seq, ct, now=NOW, direction=C2S) == b"update"
    seq, ct = srv.seal(b"task", now=NOW, direction=S2C)
    assert dev.open(seq, ct, now=NOW, direction=S2C) == b"task"
    assert dev.session_id == srv.session_id


def test_replayed_sequence_is_rejected():
    dev, srv, *_ = _handshake()
    seq, ct = dev.seal(b"a", now=NOW, direction=C2S)
    srv.open(seq, ct, now=NOW, direction=C2S)
    with pytest.raises(RemoteProtocolError) as info:
        srv.open(seq, ct, now=NOW, direction=C2S)
    assert info.value.http_status == 409


def test_expired_session_and_reflected_frames_rejected():
    dev, srv, *_ = _handshake()
    seq, ct = dev.seal(b"a", now=NOW, direction=C2S)
    with pytest.raises(RemoteProtocolError) as info:
        srv.open(seq, ct, now=NOW + 61, direction=C2S)
    assert info.value.http_status == 401
    with pytest.raises(RemoteProtocolError):  # a device frame reflected back to the device
        dev.open(seq, ct, now=NOW, direction=S2C)


def test_forged_or_wrong_key_hello_rejected():
    device = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(3))
    hello = device.hello(now=NOW)
    other = MlDsa65Signer.generate(DeterministicRng(9))
    with pytest.raises(RemoteProtocolError) as info:
        SessionResponder(SERVER, DeterministicRng(4)).respond(hello, other.public_key, now=NOW)
    assert info.value.http_status == 401
    tampered = msgspec.structs.replace(hello, device_id="dev-2")
    with pytest.raises(RemoteProtocolError):
        SessionResponder(SERVER, DeterministicRng(4)).respond(tampered, DEVICE.public_key, now=NOW)
    with pytest.raises(RemoteProtocolError):  # stale timestamp
        SessionResponder(SERVER, DeterministicRng(4)).respond(
            hello, DEVICE.public_key, now=NOW + 3600
        )


def test_device_rejects_server_hello_not_from_pinned_key():
    device = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(5))
    impostor = SessionResponder(MlDsa65Signer.generate(DeterministicRng(6)), DeterministicRng(7))
    reply = impostor.respond(device.hello(now=NOW), DEVICE.public_key, now=NOW)
    with pytest.raises(RemoteProtocolError):
        device.finish(reply, now=NOW)
    assert device.state is HandshakeState.ABORTED


def test_bad_confirmation_and_wrong_session_rejected():
    device = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(8))
    server = SessionResponder(SERVER, DeterministicRng(9))
    reply = server.respond(device.hello(now=NOW), DEVICE.public_key, now=NOW)
    finished, _ = device.finish(reply, now=NOW)
    with pytest.raises(RemoteProtocolError):
        server.confirm(msgspec.structs.replace(finished, confirm=bytes(16)))
    server2 = SessionResponder(SERVER, DeterministicRng(9))
    device2 = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(8))
    reply2 = server2.respond(device2.hello(now=NOW), DEVICE.public_key, now=NOW)
    fin2, _ = device2.finish(reply2, now=NOW)
    with pytest.raises(RemoteProtocolError):
        server2.confirm(msgspec.structs.replace(fin2, session_id="other"))


def test_sessions_have_distinct_ids_and_keys():
    a, *_ = _handshake(1)
    b, *_ = _handshake(2)
    assert a.session_id != b.session_id
    seq, ct = a.seal(b"x", now=NOW, direction=C2S)
    with pytest.raises(RemoteProtocolError):
        b.open(seq, ct, now=NOW, direction=C2S)


@pytest.mark.parametrize("when", [float("nan"), float("inf"), float("-inf")])
def test_a_signed_hello_with_a_non_finite_time_is_stale(when):
    """NaN made ``abs(now - t) > skew`` false: the freshness check was skipped."""
    device = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(11))
    hello = device.hello(now=when)  # correctly signed over the non-finite time
    with pytest.raises(RemoteProtocolError, match="stale") as info:
        SessionResponder(SERVER, DeterministicRng(12)).respond(hello, DEVICE.public_key, now=NOW)
    assert info.value.http_status == 401
    with pytest.raises(msgspec.ValidationError):  # and it does not even decode
        msgspec.msgpack.decode(msgspec.msgpack.encode(hello), type=ClientHello)


def test_a_server_hello_with_a_nan_expiry_is_refused():
    device = SessionInitiator("dev-1", DEVICE, SERVER.public_key, DeterministicRng(13))
    server = SessionResponder(SERVER, DeterministicRng(14), lifetime_s=float("nan"))
    reply = server.respond(device.hello(now=NOW), DEVICE.public_key, now=NOW)
    with pytest.raises(RemoteProtocolError, match="expired"):
        device.finish(reply, now=NOW)
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(reply), type=ServerHello)
