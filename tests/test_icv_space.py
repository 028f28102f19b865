"""Where a non-LSO frame keeps the room for its ICV (docs/spec-gaps.md G4), and the
authenticated truncation that an ambiguous probe allowed: a frame framed without room whose
payload holds (pad length, next header) icv_len bytes before its end must not have its real
trailer overwritten by the ICV. Checked on the compiled stages and the twin; the output is
decrypted with cryptography's AESGCM, independently of the project."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import HostStack, Miniport, PacketBatch, SaConfig
from ipsecoffload.datapath.layout import NBL_OOB_DTYPE, Reason

KEY, SALT = bytes(range(16)), b"salt"
SPI = 0x2001
L2 = 14


def _ipv4_tcp(data: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + data
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2])) + tcp


_STACK = HostStack(Miniport())
_SA = _STACK.add_sa(SaConfig(spi=SPI, encryption="aes-gcm-128", key=KEY + SALT))


def _frame(data: bytes, *, room: bool, next_header: int = 6) -> tuple[PacketBatch, int]:
    """One frame built by the host stack; without ``room`` the 16 zero bytes it reserves for
    the ICV are cut and the IPv4 length follows. Returns the batch and the pad length."""
    batch = _STACK.build([_ipv4_tcp(data)], _SA)
    frame = bytearray(batch.frame(0))
    oob = batch.oob.copy()
    if not room:
        del frame[-16:]
        struct.pack_into("!H", frame, L2 + 2, len(frame) - L2)
    oob["next_header"] = next_header
    frame[-1 - (16 if room else 0)] = next_header
    return (PacketBatch(np.frombuffer(bytes(frame), np.uint8), [0], [len(frame)], [0],
                        oob=oob), int(oob["pad_length"][0]))


def _send(batch: PacketBatch, icv_space: str, pure: bool):
    nic = Miniport(icv_space=icv_space, pure_python=pure)
    stack = HostStack(nic)
    sa = stack.add_sa(SaConfig(spi=SPI, encryption="aes-gcm-128", key=KEY + SALT))
    stack.build([_ipv4_tcp(b"")], sa)  # the stack offloads the SA on first use
    oob = batch.oob.copy()
    oob["offload_handle"] = sa.handles[False]
    batch = PacketBatch(batch.arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=oob)
    return nic.send(batch)


def _decrypt(frame: bytes) -> bytes:
    esp = frame[L2 + 20:]
    nonce = SALT + esp[8:16]
    return AESGCM(KEY).decrypt(nonce, esp[16:], esp[:8])


@pytest.fixture(params=[False, True], ids=["compiled", "twin"])
def pure(request):
    return request.param


def test_a_trailer_look_alike_inside_the_payload_is_not_taken_for_reserved_room(pure):
    """The attack: no room, and the payload carries (pad length 0, next header 6) 16 bytes
    before the end. The whole text must be sealed and an ICV appended after it."""
    data = bytearray(range(30, 30 + 42))  # 20 + 42 = 62 bytes of TCP: pad length 0
    data[-16 + 2], data[-15 + 2] = 0, 6  # 16 bytes before the trailer's end
    batch, pad = _frame(bytes(data), room=False)
    assert pad == 0
    frame_in = batch.frame(0)
    result = _send(batch, "auto", pure)
    assert result.status.tolist() == [0]
    [out] = result.wire.frames()
    assert len(out) == len(frame_in) + 16
    plain = _decrypt(out)
    assert plain[-2:] == bytes([0, 6]) and plain[:-2] == _ipv4_tcp(bytes(data))[20:]


def test_reserved_room_must_be_zero_in_auto(pure):
    """A frame with room whose room is not zero, and no trailer at its very end, is refused
    in auto (neither reading fits) but sealed as reserved when the policy says so."""
    batch, _ = _frame(bytes(range(40)), room=True)
    arena = batch.arena.copy()
    arena[-3] = 0x55  # inside the 16 reserved bytes
    batch = PacketBatch(arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=batch.oob)
    auto = _send(batch, "auto", pure)
    assert Reason(int(auto.reasons[0])) == Reason.BAD_TRAILER and auto.status[0] != 0
    reserved = _send(batch, "reserved", pure)
    assert reserved.status.tolist() == [0]
    [out] = reserved.wire.frames()
    assert len(out) == len(batch.frame(0))
    _decrypt(out)


def test_padding_must_read_1_2_3_in_auto(pure):
    """Padding that is not 1, 2, 3, ... (RFC 4303 §2.4) is refused in auto."""
    batch, pad = _frame(bytes(range(41)), room=True)
    assert pad > 0
    arena = batch.arena.copy()
    arena[-16 - 2 - pad] ^= 0x80  # the first pad byte
    batch = PacketBatch(arena, batch.nb_off, batch.nb_len, batch.nb_nbl, oob=batch.oob)
    result = _send(batch, "auto", pure)
    assert Reason(int(result.reasons[0])) == Reason.BAD_TRAILER


def test_when_both_readings_fit_auto_refuses_and_the_explicit_policies_decide(pure):
    """The tie: next header 0, pad length 0 and a payload ending in zeros, framed without
    room, reads as 'appended' and as 'reserved' (zero room). auto refuses it; 'append' and
    'reserved' each take their own reading."""
    data = bytes(range(1, 27)) + bytes(16)  # 62 bytes of TCP, the last 16 zero: pad 0
    batch, pad = _frame(data, room=False, next_header=0)
    assert pad == 0
    length = len(batch.frame(0))
    auto = _send(batch, "auto", pure)
    assert Reason(int(auto.reasons[0])) == Reason.BAD_TRAILER and auto.status[0] != 0
    appended = _send(batch, "append", pure)
    assert appended.status.tolist() == [0] and len(appended.wire.frames()[0]) == length + 16
    assert _decrypt(appended.wire.frames()[0])[-2:] == bytes([0, 0])
    reserved = _send(batch, "reserved", pure)
    assert reserved.status.tolist() == [0] and len(reserved.wire.frames()[0]) == length


def test_a_stack_built_frame_still_uses_its_reserved_room(pure):
    batch, _ = _frame(bytes(range(50)), room=True)
    result = _send(batch, "auto", pure)
    assert result.status.tolist() == [0]
    [out] = result.wire.frames()
    assert len(out) == len(batch.frame(0))
    assert _decrypt(out)[:-2].startswith(_ipv4_tcp(bytes(range(50)))[20:])


assert NBL_OOB_DTYPE.itemsize == 56
