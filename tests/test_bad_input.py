"""The miniport on bad input, end to end through Miniport.send and the SA OIDs
(docs/protocol.md section 15, docs/send-path.md): a packet fault completes its NBL with a
status and sends nothing of it, the rest of the batch goes on; API misuse raises before any
work; keys never show.

Frames are built here by a small helper (what the host stack hands over, docs/protocol.md
section 3), so the tests do not depend on ipsecoffload.host.stack.
"""
from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import Miniport, PacketBatchBuilder, Reason, SaConfig, default_capabilities, ndis
from ipsecoffload.datapath.layout import HANDLE_SLOT_MASK
from ipsecoffload.ndis import AuthenticationAlgorithm as Auth
from ipsecoffload.ndis import EncryptionAlgorithm as Enc
from ipsecoffload.ndis import NdisStatus

SUCCESS, FAILURE, INVALID_PACKET = NdisStatus.SUCCESS, NdisStatus.FAILURE, NdisStatus.INVALID_PACKET

GCM_KEY = bytes.fromhex("feffe9928665731c6d6a8f9467308308") + bytes.fromhex("cafebabe")
GCM = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY, name="gcm")
CBC = SaConfig(spi=0x2002, encryption="aes-cbc-128", key=bytes(range(16)),
               integrity="hmac-sha1-96", auth_key=bytes(range(100, 120)), name="cbc")
GCM_ESN = SaConfig(spi=0x3003, encryption="aes-gcm-256", key=bytes(range(36)), esn=True,
                   seq=5 << 32, name="gcm-esn")
PAYLOAD = bytes([0xEE]) * 41  # never holds a (pad length, next header) pair


def fixed_random(n: int) -> bytes:
    return bytes((i * 11 + 5) & 0xFF for i in range(n))


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def esp_frame(sa: SaConfig, *, ipv6: bool = False, payload: bytes = PAYLOAD, nh: int = 17,
              seq: int = 1, align: int | None = None) -> tuple[bytes, dict]:
    """Ethernet | IP | ESP(SPI, SN) | IV room | payload | pad | pad length | next header |
    ICV room, and its slot-12 values (docs/protocol.md sections 3, 13)."""
    pad = -(len(payload) + 2) % (align or sa.align)
    esp = (struct.pack("!II", sa.spi, seq & 0xFFFFFFFF) + bytes(sa.iv_len) + payload
           + bytes(range(1, pad + 1)) + bytes([pad, nh]) + bytes(sa.icv))
    if ipv6:
        ip = struct.pack("!IHBB", 6 << 28, len(esp), 50, 64) + bytes(range(32))
    else:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(esp), 7, 0, 64, 50, 0,
                           bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]))
        ip = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    ether = bytes(range(12)) + struct.pack("!H", 0x86DD if ipv6 else 0x0800)
    return ether + ip + esp, dict(next_header=nh, pad_length=pad, esp_off4=len(ip) // 4)


def add(mp: Miniport, sa: SaConfig, *, ipv6: bool = False, inbound: bool = False) -> int:
    entry = sa.add_sa_entry(ipv6=ipv6, inbound=inbound)
    assert mp.add_sa(entry) == SUCCESS
    assert entry.offload_handle
    return entry.offload_handle


def delete(mp: Miniport, handle: int) -> NdisStatus:
    return mp.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=handle))


def send(mp: Miniport, *nbls):
    """nbls: (frames, oob) pairs; returns the SendResult after checking the invariants every
    batch keeps, whatever its input."""
    builder = PacketBatchBuilder()
    for frames, oob in nbls:
        builder.add_nbl(frames, **oob)
    batch = builder.build()
    result = mp.send(batch)
    assert set(int(s) for s in result.status) <= {SUCCESS, FAILURE, INVALID_PACKET}
    wire = result.wire
    assert int(wire.nb_len.sum()) == len(wire.arena)
    assert np.all(wire.nb_off + wire.nb_len <= len(wire.arena))
    for k in range(len(batch)):
        leaving = wire.frames_of(k)
        if result.status[k]:
            assert leaving == []  # nothing of a failed NBL leaves
        else:
            assert leaving
    return result


def reasons(result) -> list[Reason]:
    return [Reason(int(r)) for r in result.reasons]


@pytest.fixture
def mp():
    return Miniport(random_source=fixed_random)


def _gcm_open(frame: bytes, key: bytes = GCM_KEY, icv: int = 16) -> bytes:
    """Decrypt a transport-mode IPv4 GCM frame with cryptography (an independent check)."""
    esp = frame[34:]
    nonce = key[16:] + esp[8:16]
    return AESGCM(key[:16]).decrypt(nonce, esp[16:], esp[:8])


# -- truncated frames ---------------------------------------------------------------------------

def test_truncated_at_every_length(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    nbls = [([frame[:cut]], dict(offload_handle=handle, **oob)) for cut in range(len(frame) + 1)]
    result = send(mp, *nbls)
    # only the whole frame is sent: a cut one has an IP length past its end
    assert [int(s) for s in result.status[:-1]] == [INVALID_PACKET] * len(frame)
    assert set(reasons(result)[:-1]) == {Reason.MALFORMED_IP}
    assert reasons(result)[-1] == Reason.OK
    assert result.wire.nb_nbl.tolist() == [len(frame)]
    assert _gcm_open(result.wire.frame(0))[:len(PAYLOAD)] == PAYLOAD


def test_truncated_with_the_ip_length_following_the_cut(mp):
    """A stack that cut the frame and fixed the IP length: the trailer is then looked for
    at the new end. Only the whole frame and the frame without its ICV room (the ICV is
    appended, docs/spec-gaps.md G4 auto) are sent, and both leave as the same wire frame."""
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    nbls = []
    for cut in range(len(frame) + 1):
        cut_frame = bytearray(frame[:cut])
        if cut >= 14 + 20:
            struct.pack_into("!H", cut_frame, 16, cut - 14)
            struct.pack_into("!H", cut_frame, 24, 0)
            struct.pack_into("!H", cut_frame, 24, _checksum(bytes(cut_frame[14:34])))
        nbls.append(([bytes(cut_frame)], dict(offload_handle=handle, **oob)))
    result = send(mp, *nbls[:-1])
    sent = [k for k in range(len(nbls) - 1) if result.status[k] == SUCCESS]
    assert sent == [len(frame) - 16]
    for k, reason in enumerate(reasons(result)):
        if k not in sent:
            assert reason in (Reason.MALFORMED_IP, Reason.BAD_ESP_OFFSET, Reason.BAD_TRAILER)
    # the whole frame carries the same SN: on this SA it was sealed (docs/send-path.md,
    # "Nonce safety"); on a fresh NIC with the same SA it leaves as the same wire frame
    again = send(mp, nbls[-1])
    assert reasons(again) == [Reason.SEQ_REUSED] and again.status.tolist() == [FAILURE]
    mp2 = Miniport(random_source=fixed_random)
    whole = send(mp2, ([frame], dict(offload_handle=add(mp2, GCM), **oob)))
    assert whole.status.tolist() == [SUCCESS]
    assert whole.wire.frame(0) == result.wire.frame(0)


@pytest.mark.parametrize("cut", [0, 1, 13, 14, 15, 33, 34, 41, 49, 50])
def test_truncated_frames_pass_unchanged_without_a_handle(mp, cut):
    frame, oob = esp_frame(GCM)
    result = send(mp, ([frame[:cut]], dict(oob)))
    assert reasons(result) == [Reason.PASS_NO_HANDLE]
    assert result.wire.frames() == [frame[:cut]]


# -- offsets, trailer, alignment -------------------------------------------------------------

@pytest.mark.parametrize("esp_off4", [0, 1, 4, 40, 255], ids=lambda v: f"esp_off4={v}")
def test_esp_offset_outside_the_datagram(mp, esp_off4):
    """0 (absent), inside the IPv4 header (4, 16 bytes), past the end (40, 255)."""
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    good = ([frame], dict(offload_handle=handle, **oob))
    result = send(mp, ([frame], dict(offload_handle=handle, **{**oob, "esp_off4": esp_off4})),
                  good)
    assert result.status.tolist() == [INVALID_PACKET, SUCCESS]
    assert reasons(result) == [Reason.BAD_ESP_OFFSET, Reason.OK]


def test_ah_offset_set(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    result = send(mp, ([frame], dict(offload_handle=handle, ah_off4=5, **oob)))
    assert result.status.tolist() == [FAILURE] and reasons(result) == [Reason.AH_NOT_SUPPORTED]


@pytest.mark.parametrize("field", ["pad_length", "next_header"])
def test_slot12_disagrees_with_the_trailer(mp, field):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    oob[field] = (oob[field] + 1) & 0xFF
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)))
    assert result.status.tolist() == [INVALID_PACKET] and reasons(result) == [Reason.BAD_TRAILER]


def test_pad_length_longer_than_the_text(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM, payload=b"")  # text = 2 bytes padding + 2 trailer bytes
    frame = bytearray(frame)
    frame[-16 - 2] = 200  # pad length byte
    result = send(mp, ([bytes(frame)], dict(offload_handle=handle, **{**oob, "pad_length": 200})))
    assert result.status.tolist() == [INVALID_PACKET] and reasons(result) == [Reason.BAD_TRAILER]


def test_cbc_text_not_a_multiple_of_the_block(mp):
    handle = add(mp, CBC)
    frame, oob = esp_frame(CBC, align=4)  # padded to 4 bytes, not 16
    assert (len(frame) - 14 - 20 - 8 - 16 - 12) % 16
    good, good_oob = esp_frame(CBC)
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)),
                  ([good], dict(offload_handle=handle, **good_oob)))
    assert result.status.tolist() == [INVALID_PACKET, SUCCESS]
    assert reasons(result) == [Reason.BAD_ALIGNMENT, Reason.OK]


# -- handles ----------------------------------------------------------------------------------

def test_sa_deleted_between_add_and_send(mp):
    doomed, kept = add(mp, GCM), add(mp, CBC)
    frame, oob = esp_frame(GCM)
    cbc_frame, cbc_oob = esp_frame(CBC)
    assert delete(mp, doomed) == SUCCESS
    result = send(mp, ([frame], dict(offload_handle=doomed, **oob)),
                  ([cbc_frame], dict(offload_handle=kept, **cbc_oob)),
                  ([frame], dict(oob)))
    assert result.status.tolist() == [FAILURE, SUCCESS, SUCCESS]
    assert reasons(result) == [Reason.UNKNOWN_HANDLE, Reason.OK, Reason.PASS_NO_HANDLE]
    assert result.wire.nb_nbl.tolist() == [1, 2]
    assert result.wire.frame(1) == frame
    assert mp.counters["nb.UNKNOWN_HANDLE"] == 1


def test_stale_handle_whose_slot_was_reused(mp):
    old = add(mp, GCM)
    assert delete(mp, old) == SUCCESS
    new = add(mp, GCM)
    assert new != old and new & HANDLE_SLOT_MASK == old & HANDLE_SLOT_MASK
    frame, oob = esp_frame(GCM)
    result = send(mp, ([frame], dict(offload_handle=old, **oob)),
                  ([frame], dict(offload_handle=new, **oob)))
    assert result.status.tolist() == [FAILURE, SUCCESS]
    assert reasons(result) == [Reason.UNKNOWN_HANDLE, Reason.OK]


@pytest.mark.parametrize("handle", [1, 0xFFFFF, (1 << 20) | 1, 2 << 20, 2**64 - 1], ids=hex)
def test_handles_never_issued(mp, handle):
    """The one SA holds handle (1 << 20) | 0: serial 1, slot 0."""
    add(mp, GCM)
    frame, oob = esp_frame(GCM)
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)))
    assert result.status.tolist() == [FAILURE] and reasons(result) == [Reason.UNKNOWN_HANDLE]


def test_handle_zero_leaves_unchanged(mp):
    add(mp, GCM)
    frame, oob = esp_frame(GCM)
    result = send(mp, ([frame], dict(oob)))
    assert result.status.tolist() == [SUCCESS] and reasons(result) == [Reason.PASS_NO_HANDLE]
    assert result.wire.frames() == [frame]


def test_tunnel_handle_set(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    # docs/spec-gaps.md G13: a tunnel handle alone fails; one SA as both layers cannot nest
    for offload, reason in ((handle, Reason.NESTING), (0, Reason.TUNNEL_HANDLE)):
        result = send(mp, ([frame], dict(offload_handle=offload, tunnel_handle=handle, **oob)))
        assert result.status.tolist() == [FAILURE] and reasons(result) == [reason]


def test_ipv6_frame_on_an_ipv4_sa(mp):
    handle = add(mp, GCM, ipv6=False)
    frame, oob = esp_frame(GCM, ipv6=True)
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)))
    assert result.status.tolist() == [FAILURE]
    assert reasons(result) == [Reason.IP_VERSION_MISMATCH]


def test_inbound_handle(mp):
    handle = add(mp, GCM, inbound=True)
    frame, oob = esp_frame(GCM)
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)))
    assert result.status.tolist() == [FAILURE] and reasons(result) == [Reason.INBOUND_HANDLE]


def test_offload_disabled_frames_leave_unchanged(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    status = mp.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2=ndis.OffloadIpsecV2.DISABLED))
    assert status == SUCCESS
    nbls = [([frame], dict(offload_handle=handle, **oob)),
            ([frame], dict(offload_handle=handle, tunnel_handle=handle, **oob)),
            ([frame[:20]], dict(offload_handle=handle, **oob)),
            ([frame], dict(offload_handle=12345, **oob))]
    result = send(mp, *nbls)
    assert result.status.tolist() == [SUCCESS] * 4
    assert reasons(result) == [Reason.PASS_DISABLED] * 4
    assert result.wire.frames() == [frame, frame, frame[:20], frame]
    assert mp.counters["nb.PASS_DISABLED"] == 4
    # and back on
    mp.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2=ndis.OffloadIpsecV2.ESP_ENABLED))
    result = send(mp, nbls[0])
    assert reasons(result) == [Reason.OK] and result.wire.frame(0) != frame


def test_sequence_number_zero_without_esn(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM, seq=0)
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)))
    assert result.status.tolist() == [FAILURE] and reasons(result) == [Reason.SEQ_EXHAUSTED]


def test_sequence_number_low_word_zero_with_esn_is_sent(mp):
    handle = add(mp, GCM_ESN)
    frame, oob = esp_frame(GCM_ESN, seq=0)  # SN = 5 << 32: the low word is 0
    result = send(mp, ([frame], dict(offload_handle=handle, **oob)))
    assert result.status.tolist() == [SUCCESS] and reasons(result) == [Reason.OK]


def test_two_buffers_one_bad_fails_the_whole_nbl(mp):
    handle = add(mp, GCM)
    frame, oob = esp_frame(GCM)
    bad = bytearray(frame)
    bad[-16 - 1] ^= 0xFF  # its next header no longer matches slot 12
    nbls = [ndis.NetBufferList(net_buffers=[ndis.NetBuffer(frame), ndis.NetBuffer(bytes(bad))]),
            ndis.NetBufferList(net_buffers=[ndis.NetBuffer(frame)])]
    header = ndis.IpsecOffloadV2HeaderNblInfo(
        next_header=oob["next_header"], pad_length=oob["pad_length"],
        esp_header_offset=oob["esp_off4"])
    for nbl in nbls:
        nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2, handle)
        nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER, header)
    result = mp.send(nbls)
    assert [nbl.status for nbl in nbls] == [INVALID_PACKET, SUCCESS]  # completed in place
    assert reasons(result) == [Reason.NBL_FAILED, Reason.BAD_TRAILER, Reason.OK]
    assert result.wire.nb_nbl.tolist() == [1]
    assert mp.counters["nbl.INVALID_PACKET"] == 1 and mp.counters["nbl.SUCCESS"] == 1


# -- OIDs ------------------------------------------------------------------------------------

def _entry(enc=None, auth=None, key_data=b"", operation=ndis.IpsecOperation.ESP, spi=0x4242):
    sa = ndis.IpsecOffloadV2SecurityAssociation(
        operation=operation, spi=spi,
        encryption_algorithm=enc or ndis.IpsecOffloadV2AlgorithmInfo(),
        authentication_algorithm=auth or ndis.IpsecOffloadV2AlgorithmInfo())
    return ndis.IpsecOffloadV2AddSa(sec_assoc=[sa], key_data=key_data)


def _algo(identifier, key_length, offset=0, additional_info=0):
    return ndis.IpsecOffloadV2AlgorithmInfo(identifier=int(identifier), key_length=key_length,
                                            key_offset_bytes=offset,
                                            additional_info=additional_info)


@pytest.mark.parametrize("length", [0, 15, 17, 19, 21, 33, 37])
def test_add_sa_gcm_key_of_the_wrong_length(mp, length):
    entry = _entry(enc=_algo(Enc.AES_GCM_128, length, additional_info=16),
                   key_data=bytes(range(length)))
    assert mp.add_sa(entry) == NdisStatus.INVALID_DATA
    assert entry.offload_handle == 0 and len(mp.sas) == 0


@pytest.mark.parametrize("length", [8, 24, 32])
def test_add_sa_cbc_key_of_the_wrong_length(mp, length):
    entry = _entry(enc=_algo(Enc.AES_CBC_128, length), auth=_algo(Auth.SHA_1, 20, length),
                   key_data=bytes(length + 20))
    assert mp.add_sa(entry) == NdisStatus.INVALID_DATA and entry.offload_handle == 0


def test_add_sa_key_range_outside_the_key_data(mp):
    entry = _entry(enc=_algo(Enc.AES_GCM_128, 20, offset=8, additional_info=16),
                   key_data=bytes(20))
    assert mp.add_sa(entry) == NdisStatus.INVALID_DATA and entry.offload_handle == 0


# AH and AH-GMAC entries are offloaded now: tests/test_ah.py
@pytest.mark.parametrize("case", ["3des", "des", "esp_without_integrity", "null_null"])
def test_add_sa_not_supported(mp, case):
    if case == "3des":
        entry = _entry(enc=_algo(Enc.THREE_DES_CBC, 24), auth=_algo(Auth.SHA_1, 20, 24),
                       key_data=bytes(44))
    elif case == "des":
        entry = _entry(enc=_algo(Enc.DES_CBC, 8), auth=_algo(Auth.SHA_1, 20, 8),
                       key_data=bytes(28))
    elif case == "esp_without_integrity":
        entry = _entry(enc=_algo(Enc.AES_CBC_128, 16), key_data=bytes(16))
    else:
        entry = _entry(enc=_algo(Enc.NONE, 0))
    assert mp.add_sa(entry) == NdisStatus.NOT_SUPPORTED
    assert entry.offload_handle == 0 and len(mp.sas) == 0


def test_add_sa_capacity_exhausted():
    mp = Miniport(default_capabilities(capacity=2))
    handles = [add(mp, GCM), add(mp, CBC)]
    entry = GCM.add_sa_entry(ipv6=False)
    assert mp.add_sa(entry) == NdisStatus.RESOURCES and entry.offload_handle == 0
    assert delete(mp, handles[0]) == SUCCESS
    assert mp.add_sa(entry) == SUCCESS and entry.offload_handle


def test_add_sa_list_with_one_bad_entry(mp):
    good = GCM.add_sa_entry(ipv6=False)
    bad = _entry(enc=_algo(Enc.THREE_DES_CBC, 24), auth=_algo(Auth.SHA_1, 20, 24),
                 key_data=bytes(44))
    bad.next = good
    assert mp.add_sa(bad) == SUCCESS
    assert bad.offload_handle == 0 and good.offload_handle != 0
    assert len(mp.sas) == 1


def test_add_sa_list_of_bad_entries_only(mp):
    first = _entry(enc=_algo(Enc.THREE_DES_CBC, 24), auth=_algo(Auth.SHA_1, 20, 24),
                   key_data=bytes(44))
    first.next = _entry(enc=_algo(Enc.AES_GCM_128, 3, additional_info=16), key_data=bytes(3))
    assert mp.add_sa(first) != SUCCESS
    assert first.offload_handle == 0 and first.next.offload_handle == 0


def test_add_sa_ex_truncated_bytes(mp):
    entry = ndis.IpsecOffloadV2AddSaEx(sec_assoc=GCM.add_sa_entry(ipv6=False).sec_assoc,
                                       key_data=GCM_KEY)
    raw = entry.to_bytes()
    assert mp.add_sa_ex(raw[:40]) == NdisStatus.INVALID_LENGTH
    assert mp.add_sa_ex(raw) == SUCCESS


def test_update_sa_unknown_handle_or_non_esn(mp):
    plain, esn = add(mp, GCM), add(mp, GCM_ESN)

    def update(handle, spi, hi=9):
        return mp.update_sa(ndis.IpsecOffloadV2UpdateSa(
            offload_handle=handle, operation=ndis.IpsecOperation.ESP, spi=spi,
            sequence_number_high_order=hi))
    assert update(0xDEAD, GCM.spi) == NdisStatus.INVALID_PARAMETER
    assert update(plain, GCM.spi) == NdisStatus.INVALID_PARAMETER  # not an ESN SA
    assert update(esn, GCM.spi) == NdisStatus.INVALID_PARAMETER  # SPI of another SA
    assert update(esn, GCM_ESN.spi) == SUCCESS
    assert mp.sa_record(esn)["seq_hi"] == 9
    assert delete(mp, esn) == SUCCESS
    assert update(esn, GCM_ESN.spi) == NdisStatus.INVALID_PARAMETER  # deleted


def test_delete_sa_twice(mp):
    handle = add(mp, GCM)
    assert delete(mp, handle) == SUCCESS
    assert delete(mp, handle) == SUCCESS
    assert delete(mp, 0) == SUCCESS
    assert len(mp.sas) == 0


# -- keys never show ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,kwargs", [
    ("key", dict(encryption="aes-gcm-128", key=GCM_KEY[:-1])),
    ("key", dict(encryption="aes-gcm-256", key=GCM_KEY)),
    ("key", dict(encryption="aes-cbc-128", key=GCM_KEY, integrity="hmac-sha1-96",
                 auth_key=bytes(range(100, 120)))),
    ("key", dict(encryption="null", key=GCM_KEY, integrity="hmac-sha1-96",
                 auth_key=bytes(range(100, 120)))),
    ("auth_key", dict(encryption="aes-cbc-128", key=bytes(range(16)),
                      integrity="hmac-sha256-128", auth_key=GCM_KEY)),
    ("auth_key", dict(encryption="null", integrity="aes-gmac-128", auth_key=GCM_KEY[:16])),
    ("auth_key", dict(encryption="aes-gcm-128", key=GCM_KEY, auth_key=GCM_KEY)),
])
def test_saconfig_key_of_the_wrong_length(field, kwargs):
    with pytest.raises(ValueError) as raised:
        SaConfig(spi=0x77, name="secret-sa", **kwargs)
    message = str(raised.value)
    assert field in message and "secret-sa" in message
    for key in (kwargs.get("key", b""), kwargs.get("auth_key", b"")):
        if key:
            assert key.hex() not in message and repr(key) not in message
            assert key[:8].hex() not in message


def test_no_repr_shows_a_key(mp):
    marker = bytes.fromhex("5ec2e75ec2e75ec2e75ec2e75ec2e75e")  # 16 recognisable bytes
    configs = [SaConfig(spi=0x501, encryption="aes-gcm-128", key=marker + b"SALT"),
               SaConfig(spi=0x502, encryption="aes-cbc-128", key=marker,
                        integrity="hmac-sha1-96", auth_key=marker + b"MAC!"),
               SaConfig(spi=0x503, encryption="null", integrity="aes-gmac-128",
                        auth_key=marker + b"SALT")]
    texts = []
    for config in configs:
        entry = config.add_sa_entry(ipv6=False)
        texts += [repr(config), str(config), repr(entry), str(entry)]
        assert mp.add_sa(entry) == SUCCESS
        texts.append(repr(entry))  # with its handle filled in
    snapshot = mp.sas.snapshot()
    keys = [k for k in snapshot.keys if k is not None]
    assert len(keys) == 3
    texts += [repr(k) for k in keys] + [str(k) for k in keys]
    texts += [repr(mp), str(mp), repr(snapshot), repr(mp.sas.snapshot().keys)]
    texts += [repr(mp.sa_record(h)) for h in mp.sas.handles()]
    for text in texts:
        for needle in (marker.hex(), marker.hex()[:12], repr(marker), repr(marker)[2:14],
                       "SALT", "MAC!"):
            assert needle not in text, text


def test_saconfig_bad_value_messages_name_the_field():
    with pytest.raises(ValueError, match="encryption"):
        SaConfig(spi=1, encryption="3des-cbc", key=bytes(24))
    with pytest.raises(ValueError, match="integrity"):
        SaConfig(spi=1, encryption="aes-cbc-128", key=bytes(16))
    with pytest.raises(ValueError, match="spi"):
        SaConfig(spi=0, encryption="aes-gcm-128", key=bytes(20))
    with pytest.raises(ValueError, match="seq"):
        SaConfig(spi=1, encryption="aes-gcm-128", key=bytes(20), seq=2**32)
    with pytest.raises(ValueError, match="icv_len"):
        SaConfig(spi=1, encryption="aes-gcm-128", key=bytes(20), icv_len=10)


# -- concurrency: OIDs on the direct path while sends run (docs/protocol.md section 12) ------

def test_add_and_delete_while_sending():
    mp = Miniport(random_source=fixed_random)
    stable = add(mp, CBC)
    cbc_frame, cbc_oob = esp_frame(CBC)
    gcm_frame, gcm_oob = esp_frame(GCM)
    live: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn():
        try:
            for i in range(300):
                if stop.is_set():
                    break
                entry = GCM.add_sa_entry(ipv6=False)
                assert mp.add_sa(entry) == SUCCESS
                live.append(entry.offload_handle)
                if len(live) > 3:
                    assert delete(mp, live.pop(0)) == SUCCESS
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        seen = set()
        for _ in range(60):
            handles = list(live[-4:]) or [0]
            nbls = [([gcm_frame], dict(offload_handle=h, **gcm_oob)) for h in handles]
            nbls.append(([cbc_frame], dict(offload_handle=stable, **cbc_oob)))
            result = send(mp, *nbls)
            assert result.status[-1] == SUCCESS
            for status, reason in zip(result.status, reasons(result)):
                assert status in (SUCCESS, FAILURE)
                # the same GCM frame again on a handle that sealed it: SEQ_REUSED
                assert reason in (Reason.OK, Reason.UNKNOWN_HANDLE, Reason.PASS_NO_HANDLE,
                                  Reason.SEQ_REUSED)
                seen.add(reason)
        assert Reason.OK in seen
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert stable in mp.sas.handles()
