"""BulkReader's read-ahead (io/bulk.py): the next chunk read on a thread into a spare buffer
while the current one is scanned. The records it yields are those of the synchronous reader
and of the record-by-record twin, whatever the chunk size and wherever a record or pcapng
block is cut by a chunk's end; errors of a read ahead reach the caller; close() leaves no read
in flight."""
import io
import os
import random
import struct

import pytest

from ipsecoffload.io.bulk import BulkReader
from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapError, PcapReader, \
    write_pcap
from ipsecoffload.io.pcapng import idb_bytes, shb_bytes

T0 = 1_700_000_000 * 10**9


def frames(seed: int, count: int, longest: int) -> list:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice((0, 1, 20, 60, 1400, longest, rng.randrange(longest))))
            for _ in range(count)]


def pcap_file(path, data: list) -> None:
    write_pcap(path, LINKTYPE_RAW, data, [T0 + k * 1001 for k in range(len(data))],
               nanosecond=True)


def pcapng_file(path, data: list) -> list:
    """Two interfaces (Ethernet in microseconds, raw IP in nanoseconds) taking the frames in
    turn; returns the (ts_ns, iface, frame) each record should read as."""
    out = [shb_bytes(), idb_bytes(LINKTYPE_ETHERNET, 0, 6), idb_bytes(LINKTYPE_RAW, 0, 9)]
    want = []
    for k, frame in enumerate(data):
        iface, t = k % 2, T0 + k * 1_000_003
        units = t // 1000 if iface == 0 else t
        padded = frame + bytes(-len(frame) % 4)
        total = 32 + len(padded)
        out.append(struct.pack("<IIIIIII", 6, total, iface, units >> 32, units & 0xFFFFFFFF,
                               len(frame), len(frame)) + padded + struct.pack("<I", total))
        want.append(((t // 1000) * 1000 if iface == 0 else t, iface, frame))
    path.write_bytes(b"".join(out))
    return want


def read_all(path_or_file, *, chunk: int, batch: int, background) -> list:
    with BulkReader(path_or_file, chunk=chunk, background=background) as reader:
        got = [(int(b.pkts["ts_ns"][i]), int(b.pkts["iface"][i]), b.record(i))
               for b in reader.batches(batch) for i in range(len(b))]
        assert reader.bytes_consumed == reader.bytes_read
        if reader.size is not None:
            assert reader.bytes_read == reader.size
    return got


@pytest.mark.parametrize("chunk", [64, 300, 4096, 1 << 16])
@pytest.mark.parametrize("batch", [1, 7, 256])
def test_read_ahead_pcap_equals_the_twin(tmp_path, chunk, batch):
    data = frames(chunk + batch, 400, 9000)
    path = tmp_path / "in.pcap"
    pcap_file(path, data)
    with PcapReader(path) as twin:
        want = [(r.ts_ns, 0, r.data) for r in twin]
    assert [f for _, _, f in want] == data
    assert read_all(path, chunk=chunk, batch=batch, background=True) == want
    assert read_all(path, chunk=chunk, batch=batch, background=False) == want


@pytest.mark.parametrize("chunk", [64, 300, 4096, 1 << 16])
@pytest.mark.parametrize("batch", [1, 64])
def test_read_ahead_pcapng_equals_the_sync_reader(tmp_path, chunk, batch):
    data = frames(chunk * 3 + batch, 300, 20000)
    path = tmp_path / "in.pcapng"
    want = pcapng_file(path, data)
    assert read_all(path, chunk=chunk, batch=batch, background=True) == want
    assert read_all(path, chunk=chunk, batch=batch, background=False) == want


def test_read_ahead_truncated_last_record(tmp_path):
    path = tmp_path / "cut.pcap"
    data = frames(3, 50, 3000)
    pcap_file(path, data)
    path.write_bytes(path.read_bytes()[:-5])  # the last record cut short
    with BulkReader(path, chunk=256, background=True) as reader:
        got = [b.record(i) for b in reader.batches(16) for i in range(len(b))]
        assert got == data[:-1]
        assert len(reader.warnings) == 1 and "truncated" in reader.warnings[0]


def test_read_ahead_on_regular_files_only(tmp_path):
    path = tmp_path / "in.pcap"
    pcap_file(path, frames(1, 10, 100))
    with BulkReader(path) as reader:
        assert reader._pool is not None
    assert reader._pool is None and reader._pending is None
    r, w = os.pipe()
    with open(w, "wb") as wf:
        wf.write(path.read_bytes())
    with open(r, "rb") as rf, BulkReader(rf) as reader:
        assert reader._pool is None  # a pipe may block: read where the caller waits
        assert sum(len(b) for b in reader.batches(4)) == 10


def test_close_with_a_read_in_flight(tmp_path):
    path = tmp_path / "in.pcap"
    pcap_file(path, frames(2, 2000, 1500))
    with BulkReader(path, chunk=4096, limit=3, background=True) as reader:
        assert sum(len(b) for b in reader.batches(2)) == 3
        file = reader._file
    assert file.closed and reader._pool is None


class FailingFile(io.FileIO):
    """A regular file whose reads fail from the n-th on."""

    def __init__(self, path, fail_at: int):
        super().__init__(path, "rb")
        self.calls, self.fail_at = 0, fail_at

    def readinto(self, buffer):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise OSError(5, "Input/output error")
        return super().readinto(buffer)


@pytest.mark.parametrize("fail_at", [2, 3, 5])
def test_an_error_of_a_read_ahead_is_raised(tmp_path, fail_at):
    path = tmp_path / "in.pcap"
    pcap_file(path, frames(4, 500, 1500))
    with FailingFile(path, fail_at) as f:
        with pytest.raises(OSError, match="Input/output error"):
            with BulkReader(f, chunk=4096, background=True) as reader:
                for _ in reader.batches(8):
                    pass
        assert reader._pool is None


def test_corrupt_record_after_a_read_ahead(tmp_path):
    path = tmp_path / "bad.pcap"
    pcap_file(path, frames(5, 100, 1000))
    path.write_bytes(path.read_bytes() + struct.pack("<IIII", 0, 0, 10**8, 10**8))
    with BulkReader(path, chunk=512, background=True) as reader:
        with pytest.raises(PcapError, match="corrupt"):
            for _ in reader.batches(8):
                pass
