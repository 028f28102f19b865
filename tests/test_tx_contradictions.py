"""Send-path frames that contradict their SA (issue 11 item 4): an SPI that is not the SA's,
an IP protocol / next header that does not name the SA's ESP, AH or UDP-ESP, an ESP offset
inside the IPv6 extension headers, a UDP-encapsulated SA on a frame without a UDP header;
and docs/spec-gaps.md G21's ``disabled_policy``. Each runs on the compiled stages and the
twin."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from ipsecoffload import HostStack, Miniport, PacketBatch, SaConfig, ndis
from ipsecoffload.datapath.layout import STATUS_FAILURE, STATUS_INVALID_PACKET, Reason

KEY = bytes(range(20))
L2 = 14


def _tcp(data: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + data


def _ipv4(data: bytes = bytes(40)) -> bytes:
    tcp = _tcp(data)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2])) + tcp


def _ipv6(data: bytes = bytes(40), routing: bool = False) -> bytes:
    tcp = _tcp(data)
    ext = bytes([6, 0, 0, 0, 0, 0, 0, 0]) if routing else b""  # routing header, 8 bytes
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(tcp), 43 if routing else 6, 64,
                       bytes(15) + b"\1", bytes(15) + b"\2") + ext + tcp


@pytest.fixture(params=[False, True], ids=["compiled", "twin"])
def pure(request):
    return request.param


def _stack(pure: bool, **miniport) -> HostStack:
    return HostStack(Miniport(pure_python=pure, **miniport))


_SPIS = iter(range(0x3001, 0x4000))


def _sa(stack: HostStack, **config):
    config.setdefault("encryption", "aes-gcm-128")
    return stack.add_sa(SaConfig(spi=next(_SPIS), key=KEY, **config))


def _changed(batch: PacketBatch, edit, **oob) -> PacketBatch:
    frame = bytearray(batch.frame(0))
    edit(frame)
    new_oob = batch.oob.copy()
    for name, value in oob.items():
        new_oob[name] = value
    return PacketBatch(np.frombuffer(bytes(frame), np.uint8), [0], [len(frame)], [0],
                       oob=new_oob)


def _reason(result) -> Reason:
    return Reason(int(result.reasons[0]))


def test_the_unchanged_frames_are_sealed(pure):
    """The baseline of the cases below: every frame as the stack built it is sealed."""
    stack = _stack(pure)
    for packet, sa in ((_ipv4(), _sa(stack)), (_ipv6(routing=True), _sa(stack)),
                       (_ipv4(), _sa(stack, udp_encap=(4500, 4500)))):
        batch = stack.build([packet], sa)
        assert stack.miniport.send(batch).status.tolist() == [0]


@pytest.mark.parametrize("udp", [False, True], ids=["esp", "udp-esp"])
def test_an_spi_that_is_not_the_sas_fails(pure, udp):
    stack = _stack(pure)
    sa = _sa(stack, udp_encap=(4500, 4500) if udp else None)
    batch = stack.build([_ipv4()], sa)
    esp = L2 + 4 * int(batch.oob["esp_off4"][0])

    def edit(frame):
        frame[esp + 3] ^= 1
    result = stack.miniport.send(_changed(batch, edit))
    assert result.status.tolist() == [STATUS_FAILURE]
    assert _reason(result) == Reason.SPI_MISMATCH
    assert result.wire.num_buffers == 0
    assert stack.miniport.counters["nb.SPI_MISMATCH"] == 1


def test_an_ah_spi_that_is_not_the_sas_fails(pure):
    stack = _stack(pure)
    sa = stack.add_sa(SaConfig(spi=0x3002, integrity="hmac-sha256-128", protocol="ah",
                               auth_key=bytes(32)))
    batch = stack.build([_ipv4()], sa)
    ah = L2 + 4 * int(batch.oob["ah_off4"][0])

    def edit(frame):
        frame[ah + 7] ^= 1
    result = stack.miniport.send(_changed(batch, edit))
    assert result.status.tolist() == [STATUS_FAILURE]
    assert _reason(result) == Reason.SPI_MISMATCH


@pytest.mark.parametrize("protocol", [6, 17, 51])
def test_an_ipv4_protocol_that_is_not_esp_fails(pure, protocol):
    stack = _stack(pure)
    batch = stack.build([_ipv4()], _sa(stack))

    def edit(frame):
        frame[L2 + 9] = protocol
    result = stack.miniport.send(_changed(batch, edit))
    assert result.status.tolist() != [0]
    assert _reason(result) in (Reason.PROTOCOL_MISMATCH, Reason.BAD_ESP_OFFSET)
    if protocol != 51:  # 51 walks into the ESP header as if it were AH
        assert _reason(result) == Reason.PROTOCOL_MISMATCH
        assert result.status.tolist() == [STATUS_FAILURE]


def test_an_ipv6_next_header_that_is_not_esp_fails(pure):
    stack = _stack(pure)
    batch = stack.build([_ipv6()], _sa(stack))

    def edit(frame):
        frame[L2 + 6] = 6
    result = stack.miniport.send(_changed(batch, edit))
    assert result.status.tolist() == [STATUS_FAILURE]
    assert _reason(result) == Reason.PROTOCOL_MISMATCH


def test_a_udp_encapsulated_sa_needs_the_udp_protocol(pure):
    stack = _stack(pure)
    batch = stack.build([_ipv4()], _sa(stack, udp_encap=(4500, 4500)))

    def edit(frame):
        frame[L2 + 9] = 50
    result = stack.miniport.send(_changed(batch, edit))
    assert result.status.tolist() == [STATUS_FAILURE]
    assert _reason(result) == Reason.PROTOCOL_MISMATCH


def test_an_esp_offset_inside_the_ipv6_extension_headers_fails(pure):
    """ESP offset on the routing header (as ESP inside the IPv4 header is refused); the
    routing header's first bytes even carry the SA's SPI: it is still refused."""
    stack = _stack(pure)
    batch = stack.build([_ipv6(routing=True)], _sa(stack))
    assert int(batch.oob["esp_off4"][0]) == 12
    frame_in = batch.frame(0)

    def edit(frame):
        frame[L2 + 40:L2 + 44] = frame[L2 + 48:L2 + 52]  # the SPI, over the routing header
    result = stack.miniport.send(_changed(batch, edit, esp_off4=10))
    assert result.status.tolist() == [STATUS_INVALID_PACKET]
    assert _reason(result) == Reason.BAD_ESP_OFFSET
    assert result.wire.num_buffers == 0
    assert frame_in == batch.frame(0)


def test_a_udp_encapsulated_sa_on_a_frame_without_udp_keeps_the_routing_header(pure):
    """A UDP-encapsulated SA on an IPv6 frame with a routing header and no UDP header: the
    'UDP header' 8 bytes before ESP is the routing header; it must not be overwritten."""
    stack = _stack(pure)
    plain_sa, udp_sa = _sa(stack), _sa(stack, udp_encap=(4500, 4500))
    batch = stack.build([_ipv6(routing=True)], plain_sa)
    stack.build([_ipv6()], udp_sa)  # offload the UDP SA's IPv6 bundle
    udp_spi = struct.pack("!I", udp_sa.config.spi)

    def edit(frame):
        frame[L2 + 48:L2 + 52] = udp_spi
    result = stack.miniport.send(_changed(batch, edit,
                                          offload_handle=udp_sa.handles[True]))
    assert result.status.tolist() != [0]
    assert _reason(result) == Reason.BAD_ESP_OFFSET
    assert result.wire.num_buffers == 0


def _disable(miniport: Miniport) -> None:
    assert miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2=ndis.OffloadIpsecV2.DISABLED)) == ndis.NdisStatus.SUCCESS


def test_disabled_pass_sends_non_lso_unchanged_and_fails_lso(pure):
    """G21 "pass" (the default): a non-LSO frame with a handle leaves unchanged; an LSO frame
    with a handle fails (ESP-framed, it cannot be segmented as plain TCP). Before, the
    super-packet left segmented in clear with its ESP junk as TCP payload."""
    stack = _stack(pure)
    sa = _sa(stack)
    plain = stack.build([_ipv4()], sa)
    lso = stack.build_lso(_ipv4(bytes(3000)), sa, 1000)
    no_handle = stack.build([_ipv4()], None)
    _disable(stack.miniport)
    result = stack.miniport.send(plain)
    assert result.status.tolist() == [0] and _reason(result) == Reason.PASS_DISABLED
    assert result.wire.frames() == [plain.frame(0)]
    result = stack.miniport.send(lso)
    assert result.status.tolist() == [STATUS_FAILURE]
    assert _reason(result) == Reason.DISABLED_WITH_HANDLE
    assert result.wire.num_buffers == 0
    result = stack.miniport.send(no_handle)
    assert result.status.tolist() == [0] and _reason(result) == Reason.PASS_NO_HANDLE


def test_disabled_fail_fails_every_frame_with_a_handle(pure):
    stack = _stack(pure, disabled_policy="fail")
    sa = _sa(stack)
    plain = stack.build([_ipv4()], sa)
    no_handle = stack.build([_ipv4()], None)
    _disable(stack.miniport)
    result = stack.miniport.send(plain)
    assert result.status.tolist() == [STATUS_FAILURE]
    assert _reason(result) == Reason.DISABLED_WITH_HANDLE
    result = stack.miniport.send(no_handle)
    assert result.status.tolist() == [0] and result.wire.frames() == [no_handle.frame(0)]


def test_disabled_policy_is_checked():
    with pytest.raises(ValueError, match="disabled_policy"):
        Miniport(disabled_policy="drop")


@pytest.mark.parametrize("which", ["both", "ipv4"])
def test_an_ipv4_sa_is_refused_while_esp_for_ipv4_is_disabled(pure, which):
    """ADD_SA of an IPv4 ESP SA while ESP for IPv4 is off (IPsecV2, or IPsecV2IPv4 alone)
    is refused: the NIC does not offer what is disabled."""
    stack = _stack(pure)
    params = (ndis.NdisOffloadParameters(ipsec_v2=ndis.OffloadIpsecV2.DISABLED) if which == "both"
              else ndis.NdisOffloadParameters(ipsec_v2_ipv4=ndis.OffloadIpsecV2.DISABLED))
    assert stack.miniport.set_offload_parameters(params) == ndis.NdisStatus.SUCCESS
    sa = _sa(stack)
    entry = sa.config.add_sa_entry(False)
    assert stack.miniport.add_sa(entry) != ndis.NdisStatus.SUCCESS
    assert not entry.offload_handle
