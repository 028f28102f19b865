import io
import logging
import struct
import time
import warnings
from decimal import Decimal

import numpy as np
import pytest

from ipsecoffload.io import pcap  # an import error fails the module, never a fallback

LINKTYPE_ETHERNET = pcap.LINKTYPE_ETHERNET
LINKTYPE_RAW = pcap.LINKTYPE_RAW
PcapError = pcap.PcapError
PcapReader = pcap.PcapReader
PcapRecord = pcap.PcapRecord
PcapTruncatedWarning = pcap.PcapTruncatedWarning
PcapWriter = pcap.PcapWriter
l2_length = pcap.l2_length
read_pcap = pcap.read_pcap
write_pcap = pcap.write_pcap

T0 = 1_700_000_000  # seconds, late 2023


def ipv4_packet(i: int, payload_len: int = 20) -> bytes:
    total = 20 + payload_len
    if total > 0xFFFF:
        total = 0  # an LSO super-frame leaves the length to the segmenter
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return header + bytes((i + k) & 0xFF for k in range(payload_len))


def ipv6_packet(i: int, payload_len: int = 16) -> bytes:
    header = struct.pack("!IHBB16s16s", 0x60000000, payload_len, 17, 64,
                         b"\x20\x01" + b"\x00" * 13 + b"\x01", b"\x20\x01" + b"\x00" * 13 + b"\x02")
    return header + bytes((i * 3 + k) & 0xFF for k in range(payload_len))


def eth_frame(i: int, payload_len: int = 20) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ipv4_packet(i, payload_len)


def handmade_pcap(order: str, nanosecond: bool, linktype: int, records, snaplen: int = 65535) -> bytes:
    """A capture built with struct alone, independently of the writer under test."""
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts_sec, ts_frac, data in records:
        out.append(struct.pack(order + "IIII", ts_sec, ts_frac, len(data), len(data)))
        out.append(data)
    return b"".join(out)


class ReadSpy(io.RawIOBase):
    """A binary stream that records the size of every read request."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)
        self.requests = []
        self.name = "spy.pcap"

    def readable(self):
        return True

    def read(self, n=-1):
        self.requests.append(n)
        return self._inner.read(n)

    def tell(self):
        return self._inner.tell()


# -- round trips --------------------------------------------------------------------------

def test_round_trip_microsecond_ethernet(tmp_path):
    path = tmp_path / "us.pcap"
    frames = [eth_frame(i, 10 + i) for i in range(5)]
    times = [T0 + i + 0.25 + i * 1e-6 for i in range(5)]
    with PcapWriter(path, LINKTYPE_ETHERNET) as writer:
        for frame, ts in zip(frames, times):
            writer.write(frame, ts)
    with PcapReader(path) as reader:
        assert reader.linktype == LINKTYPE_ETHERNET
        assert reader.nanosecond is False
        assert reader.byte_order == "little"
        assert reader.snaplen == 262144
        records = list(reader)
    assert [r.data for r in records] == frames
    assert [r.orig_len for r in records] == [len(f) for f in frames]
    assert [r.ts_ns for r in records] == [(T0 + i) * 10**9 + 250_000_000 + i * 1000 for i in range(5)]
    assert all(isinstance(r.data, bytes) for r in records)


def test_round_trip_nanosecond_raw(tmp_path):
    path = tmp_path / "ns.pcap"
    frames = [ipv4_packet(i) if i % 2 else ipv6_packet(i) for i in range(6)]
    stamps = [T0 * 10**9 + 123_456_789 + i * 7 for i in range(6)]
    with PcapWriter(path, LINKTYPE_RAW, nanosecond=True) as writer:
        for frame, ts_ns in zip(frames, stamps):
            writer.write(frame, ts_ns=ts_ns)
    reader = PcapReader(path)
    assert (reader.linktype, reader.nanosecond) == (LINKTYPE_RAW, True)
    records = list(reader)
    reader.close()
    assert [r.data for r in records] == frames
    assert [r.ts_ns for r in records] == stamps


def test_written_header_layout(tmp_path):
    path = tmp_path / "h.pcap"
    with PcapWriter(path, LINKTYPE_RAW, nanosecond=True) as writer:
        writer.write(b"\x45" + b"\x00" * 19, ts_ns=5 * 10**9 + 42)
    data = path.read_bytes()
    assert data[:24] == struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 101)
    assert data[24:40] == struct.pack("<IIII", 5, 42, 20, 20)
    assert len(data) == 24 + 16 + 20


def test_timestamp_forms(tmp_path):
    path = tmp_path / "ts.pcap"
    before = time.time_ns()
    with PcapWriter(path, LINKTYPE_RAW, nanosecond=True) as writer:
        writer.write(ipv4_packet(0), T0)  # int seconds
        writer.write(ipv4_packet(1), T0 + 0.5)  # float seconds
        writer.write(ipv4_packet(2), ts_ns=T0 * 10**9 + 1)
        writer.write(ipv4_packet(3))  # now
        with pytest.raises(ValueError):
            writer.write(ipv4_packet(4), 1.0, ts_ns=1)
        with pytest.raises(ValueError):
            writer.write(ipv4_packet(4), -1.0)
        with pytest.raises(ValueError):
            writer.write(ipv4_packet(4), float("nan"))
    after = time.time_ns()
    records = read_pcap(path)[1]
    assert [r.ts_ns for r in records[:3]] == [T0 * 10**9, T0 * 10**9 + 500_000_000, T0 * 10**9 + 1]
    assert before <= records[3].ts_ns <= after
    assert records[1].ts == T0 + 0.5


def test_microsecond_rounding_carries_into_seconds(tmp_path):
    path = tmp_path / "carry.pcap"
    with PcapWriter(path, LINKTYPE_RAW) as writer:
        writer.write(ipv4_packet(0), ts_ns=T0 * 10**9 + 999_999_600)
        writer.write(ipv4_packet(1), ts_ns=T0 * 10**9 + 1_499)
    data = path.read_bytes()
    assert struct.unpack_from("<II", data, 24) == (T0 + 1, 0)
    assert [r.ts_ns for r in read_pcap(path)[1]] == [(T0 + 1) * 10**9, T0 * 10**9 + 1000]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_handmade_files_in_both_byte_orders(tmp_path, order, nanosecond):
    frac = 123_456_789 if nanosecond else 123_456
    records_in = [(T0 + i, frac + i, eth_frame(i)) for i in range(4)]
    path = tmp_path / "hand.pcap"
    path.write_bytes(handmade_pcap(order, nanosecond, LINKTYPE_ETHERNET, records_in))
    with PcapReader(path) as reader:
        assert reader.byte_order == ("little" if order == "<" else "big")
        assert reader.nanosecond is nanosecond
        assert reader.snaplen == 65535
        assert reader.version == (2, 4)
        records = list(reader)
    scale = 1 if nanosecond else 1000
    assert [(r.ts_ns, r.data, r.orig_len) for r in records] == [
        (s * 10**9 + f * scale, d, len(d)) for s, f, d in records_in
    ]


def test_orig_len_is_preserved_on_read(tmp_path):
    data = handmade_pcap(">", False, LINKTYPE_RAW, [])
    data += struct.pack(">IIII", T0, 0, 20, 1500) + ipv4_packet(0, 0)
    path = tmp_path / "short.pcap"
    path.write_bytes(data)
    (record,) = read_pcap(path)[1]
    assert (record.orig_len, len(record.data)) == (1500, 20)


# -- link types ---------------------------------------------------------------------------

def test_l2_length():
    assert l2_length(LINKTYPE_ETHERNET) == 14
    assert l2_length(LINKTYPE_RAW) == 0
    assert l2_length(pcap.LINKTYPE_IPV4) == 0
    assert l2_length(pcap.LINKTYPE_IPV6) == 0
    with pytest.raises(PcapError, match="113"):
        l2_length(113)


@pytest.mark.parametrize("linktype", [pcap.LINKTYPE_IPV4, pcap.LINKTYPE_IPV6])
def test_ipv4_ipv6_linktypes_read_as_raw(tmp_path, linktype):
    frame = ipv4_packet(1) if linktype == pcap.LINKTYPE_IPV4 else ipv6_packet(1)
    path = tmp_path / "lt.pcap"
    path.write_bytes(handmade_pcap("<", False, linktype, [(T0, 0, frame)]))
    with PcapReader(path) as reader:
        assert reader.linktype == LINKTYPE_RAW
        assert reader.file_linktype == linktype
        assert [r.data for r in reader] == [frame]


def test_unsupported_linktype_on_read(tmp_path):
    path = tmp_path / "sll.pcap"
    path.write_bytes(handmade_pcap("<", False, 113, [(T0, 0, b"x" * 20)]))
    with pytest.raises(PcapError, match=r"sll\.pcap.*link type 113"):
        PcapReader(path)


@pytest.mark.parametrize("linktype", [0, 113, pcap.LINKTYPE_IPV4])
def test_unsupported_linktype_on_write(tmp_path, linktype):
    with pytest.raises(PcapError, match=f"link type {linktype}"):
        PcapWriter(tmp_path / "w.pcap", linktype)


# -- sizes --------------------------------------------------------------------------------

def test_64k_frame_round_trip(tmp_path):
    big = eth_frame(7, 65535 + 54 - 34)
    assert len(big) == 65535 + 54
    path = tmp_path / "big.pcap"
    write_pcap(path, LINKTYPE_ETHERNET, [eth_frame(1), big, eth_frame(2)], [1, 2, 3], nanosecond=True)
    linktype, records = read_pcap(path)
    assert linktype == LINKTYPE_ETHERNET
    assert records[1].data == big and records[1].orig_len == len(big)
    assert [r.ts_ns for r in records] == [1, 2, 3]


def test_frames_longer_than_snaplen_are_cut(tmp_path):
    path = tmp_path / "snap.pcap"
    frame = ipv4_packet(0, 200)
    with PcapWriter(path, LINKTYPE_RAW, snaplen=64) as writer:
        writer.write(frame, 0)
    with PcapReader(path) as reader:
        assert reader.snaplen == 64
        (record,) = list(reader)
    assert record.data == frame[:64]
    assert record.orig_len == len(frame)


def test_bad_snaplen():
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), LINKTYPE_RAW, snaplen=0)


# -- batches and streaming ----------------------------------------------------------------

def test_write_batch_numpy_and_generators(tmp_path):
    arena = np.frombuffer(b"".join(ipv4_packet(i, 10) for i in range(4)), dtype=np.uint8)
    frames = [arena[i * 30:(i + 1) * 30] for i in range(4)]
    stamps = np.arange(4, dtype=np.int64) * 1000 + T0 * 10**9
    buf = io.BytesIO()
    with PcapWriter(buf, LINKTYPE_RAW, nanosecond=True) as writer:
        writer.write_batch(frames, stamps)
        writer.write_batch((ipv4_packet(i, 10) for i in range(4, 6)), iter([7, 8]))
        writer.write_batch([memoryview(ipv4_packet(9))])  # timestamps default to now
        with pytest.raises(ValueError, match="2 frames but 1 timestamps"):
            writer.write_batch([b"a", b"b"], [1])
        with pytest.raises(ValueError, match="different lengths"):
            writer.write_batch(iter([b"a", b"b"]), iter([1]))
        assert writer.records_written == 8  # the generator mismatch wrote its first frame
    assert not buf.closed
    buf.seek(0)
    records = list(PcapReader(buf))
    assert [r.data for r in records[:6]] == [ipv4_packet(i, 10) for i in range(6)]
    assert [r.ts_ns for r in records[:6]] == [int(s) for s in stamps] + [7, 8]
    assert records[6].data == ipv4_packet(9)


def test_write_after_close(tmp_path):
    writer = PcapWriter(tmp_path / "c.pcap", LINKTYPE_RAW)
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")


def _ten_record_file(tmp_path, count=10):
    path = tmp_path / f"ten_{count}.pcap"
    write_pcap(path, LINKTYPE_RAW, [ipv4_packet(i, 80) for i in range(count)],
               [T0 * 10**9 + i for i in range(count)], nanosecond=True)
    return path


def test_batches_stream_batch_by_batch(tmp_path):
    path = _ten_record_file(tmp_path)
    record_size = 16 + 100
    with open(path, "rb", buffering=0) as f:  # unbuffered: tell() is what was really read
        reader = PcapReader(f)
        assert f.tell() == 24
        sizes, positions, seen = [], [], []
        for batch in reader.batches(3):
            sizes.append(len(batch))
            positions.append(f.tell())
            seen.extend(r.ts_ns - T0 * 10**9 for r in batch)
    assert sizes == [3, 3, 3, 1]
    assert positions == [24 + record_size * n for n in (3, 6, 9, 10)]
    assert seen == list(range(10))


def test_reader_memory_does_not_depend_on_file_size(tmp_path):
    maxima = []
    for count in (10, 1000):
        spy = ReadSpy(_ten_record_file(tmp_path, count).read_bytes())
        reader = PcapReader(spy)
        first = next(reader.batches(3))
        assert len(first) == 3
        assert spy.tell() == 24 + 3 * 116
        assert sum(len(b) for b in reader.batches(3)) == count - 3
        maxima.append(max(spy.requests))
    assert maxima == [116 - 16, 116 - 16]


def test_iteration_and_batches_share_the_stream(tmp_path):
    reader = PcapReader(_ten_record_file(tmp_path))
    first = next(reader)
    rest = [r for batch in reader.batches(4) for r in batch]
    assert [first] + rest == read_pcap(_ten_record_file(tmp_path))[1]
    assert list(reader) == []
    with pytest.raises(ValueError):
        next(reader.batches(0))
    reader.close()


def test_batches_empty_capture(tmp_path):
    path = tmp_path / "none.pcap"
    write_pcap(path, LINKTYPE_ETHERNET, [])
    assert path.stat().st_size == 24
    with PcapReader(path) as reader:
        assert list(reader.batches(3)) == []


# -- errors -------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(PcapError, match=r"empty\.pcap' is empty"):
        PcapReader(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pcap"
    path.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(PcapError, match=r"garbage\.pcap.*not a pcap.*magic") as caught:
        read_pcap(path)
    assert "47494638" not in str(caught.value)  # the file's bytes are never shown


def test_tiny_garbage_file(tmp_path):
    path = tmp_path / "tiny.pcap"
    path.write_bytes(b"ab")
    with pytest.raises(PcapError, match=r"tiny\.pcap.*too short.*only 2"):
        PcapReader(path)


def test_short_global_header(tmp_path):
    path = tmp_path / "hdr.pcap"
    path.write_bytes(struct.pack("<IHH", 0xA1B2C3D4, 2, 4))
    with pytest.raises(PcapError, match=r"hdr\.pcap.*24 bytes.*only 8"):
        PcapReader(path)


def test_pcapng_magic(tmp_path):
    path = tmp_path / "cap.pcapng"
    path.write_bytes(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28))
    with pytest.raises(PcapError, match=r"cap\.pcapng.*pcapng.*not supported"):
        PcapReader(path)


def test_bad_version(tmp_path):
    path = tmp_path / "v.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1))
    with pytest.raises(PcapError, match="version 3.0"):
        PcapReader(path)


def test_truncated_record_header(tmp_path):
    path = _ten_record_file(tmp_path, 4)
    data = path.read_bytes() + struct.pack("<II", T0, 0)  # 8 of 16 header bytes
    path.write_bytes(data)
    with pytest.warns(PcapTruncatedWarning, match=r"read 4 complete record.*last record was truncated"):
        linktype, records = read_pcap(path)
    assert [r.data for r in records] == [ipv4_packet(i, 80) for i in range(4)]


def test_truncated_record_data(tmp_path):
    path = _ten_record_file(tmp_path, 5)
    path.write_bytes(path.read_bytes()[:-30])
    reader = PcapReader(path)
    with pytest.warns(PcapTruncatedWarning, match=r"read 4 complete record.*truncated.*70 of 100"):
        batches = list(reader.batches(3))
    assert [len(b) for b in batches] == [3, 1]
    assert [r.data for b in batches for r in b] == [ipv4_packet(i, 80) for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(reader) == []  # warned once, then stays at end
    reader.close()


def test_absurd_incl_len_is_corruption_not_allocation():
    data = handmade_pcap("<", False, LINKTYPE_RAW, [(T0, 0, ipv4_packet(0))])
    data += struct.pack("<IIII", T0, 0, 0xFFFFFFF0, 0xFFFFFFF0) + b"\x00" * 64
    spy = ReadSpy(data)
    reader = PcapReader(spy)
    assert next(reader).data == ipv4_packet(0)
    with pytest.raises(PcapError, match=r"spy\.pcap.*corrupt.*record 2.*4294967280"):
        next(reader)
    assert max(spy.requests) <= 16 + 40


def test_incl_len_over_snaplen_in_short_file_reads_in_chunks():
    # Larger than the snap length but under the 16 MiB limit: accepted, then found truncated.
    data = handmade_pcap("<", False, LINKTYPE_RAW, [], snaplen=1500)
    data += struct.pack("<IIII", T0, 0, 10 * 2**20, 10 * 2**20) + b"\x00" * 100
    spy = ReadSpy(data)
    with pytest.warns(PcapTruncatedWarning, match=r"read 0 complete record.*100 of 10485760"):
        assert list(PcapReader(spy)) == []
    assert max(spy.requests) <= 2**20


def test_non_file_argument():
    with pytest.raises(TypeError):
        PcapReader(12.5)


# -- cross-check against scapy ------------------------------------------------------------

scapy_utils = pytest.importorskip("scapy.utils")
logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.layers.inet import IP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402


def _mixed_frames(linktype):
    if linktype == LINKTYPE_ETHERNET:
        return [eth_frame(i, 20 + 3 * i) for i in range(5)]
    return [ipv4_packet(i, 20 + i) if i % 2 else ipv6_packet(i, 24) for i in range(5)]


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_RAW])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_scapy_reads_our_files(tmp_path, linktype, nanosecond):
    frames = _mixed_frames(linktype)
    stamps = [T0 * 10**9 + i * 1_000_001_000 + (123_456_789 if nanosecond else 123_456_000)
              for i in range(len(frames))]
    path = tmp_path / "ours.pcap"
    write_pcap(path, linktype, frames, stamps, nanosecond=nanosecond)
    packets = scapy_utils.rdpcap(str(path))
    assert [bytes(p) for p in packets] == frames
    assert [int(Decimal(p.time) * 10**9) for p in packets] == stamps
    raw = scapy_utils.RawPcapReader(str(path))
    assert raw.linktype == linktype
    assert [data for data, _ in raw] == frames
    raw.close()


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_RAW])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_we_read_scapy_files(tmp_path, linktype, nanosecond):
    frames = _mixed_frames(linktype)
    packets = []
    stamps = []
    for i, frame in enumerate(frames):
        if linktype == LINKTYPE_ETHERNET:
            packet = Ether(frame)
        else:
            packet = IP(frame) if frame[0] >> 4 == 4 else IPv6(frame)
        frac = 987_654_321 if nanosecond else 987_654_000
        packet.time = Decimal(T0 + i) + Decimal(frac) / 10**9
        stamps.append((T0 + i) * 10**9 + frac)
        packets.append(packet)
    path = tmp_path / "scapy.pcap"
    scapy_utils.wrpcap(str(path), packets, linktype=linktype, nano=nanosecond)
    with PcapReader(path) as reader:
        assert reader.linktype == linktype
        assert reader.nanosecond is nanosecond
        records = list(reader)
    assert [r.data for r in records] == frames
    assert [r.orig_len for r in records] == [len(f) for f in frames]
    assert [r.ts_ns for r in records] == stamps
