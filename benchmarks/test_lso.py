"""Combined LSO + ESP (docs/protocol.md section 11): 64 KiB TCP super-packets into 1448-byte
segments (MSS 1448), AES-128-GCM transport over IPv4, 16 super-packets per ``Miniport.send``
call; the figure is Gbit/s of TCP payload, printed against the raw cipher measured in the
same run (``limit``).

Works alone (it measures its own limit) and together with test_send_path.py:
``python -m pytest benchmarks/test_lso.py benchmarks/test_send_path.py -q -k "lso or limit"``.
"""
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecoffload import HostStack, Miniport, PacketBatchBuilder, SaConfig
from ipsecoffload.cli.bench import resend

BATCH = 16
MSS = 1448
PAYLOAD = 65535 - 20 - 20  # the largest plain IPv4 TCP packet: 46 segments
_NBL_FIELDS = ("offload_handle", "next_header", "pad_length", "esp_off4", "lso_info", "l2_len")


def _tcp_packet(payload_len: int) -> bytes:
    """A plain IPv4 TCP packet (ACK|PSH) with ``payload_len`` bytes of data."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    data = bytes(i & 0xFF for i in range(payload_len))
    total = 20 + len(tcp) + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2]))
    return ip + tcp + data


def prepared_lso(batch: int = BATCH):
    """A miniport with one AES-128-GCM transport SA and ``batch`` LSOv2 super-packet NBLs."""
    miniport = Miniport()
    stack = HostStack(miniport)
    sa = stack.add_sa(SaConfig(spi=0x1000, encryption="aes-gcm-128",
                               key=bytes(range(16)) + b"salt"))
    packet = _tcp_packet(PAYLOAD)
    builder = PacketBatchBuilder()
    for _ in range(batch):
        one = stack.build_lso(packet, sa, MSS)
        builder.add_nbl([one.frame(0)], **{name: int(getattr(one, name)[0])
                                           for name in _NBL_FIELDS})
    return miniport, builder.build()


def test_lso_limit(benchmark, record):
    """The raw cipher on one 1 MiB buffer (same as test_send_path.test_limit), so the
    ratio prints when this file runs alone."""
    benchmark.group = "reference"
    aead, nonce, aad = AESGCM(bytes(16)), bytes(12), bytes(8)
    data, out = memoryview(bytearray(1 << 20)), bytearray((1 << 20) + 16)
    record("limit", 0, benchmark, 1, 1 << 20)
    benchmark(aead.encrypt_into, nonce, data, aad, out)


def test_lso_send(benchmark, record):
    benchmark.group = "lso 64 KiB -> MSS 1448"
    miniport, frames = prepared_lso()
    result = miniport.send(frames)  # warm up, and make sure it really segments
    assert not result.status.any()
    assert result.wire.num_buffers == BATCH * -(-PAYLOAD // MSS)
    record("lso", 65536, benchmark, BATCH, BATCH * PAYLOAD)
    benchmark(resend, miniport, frames)
