"""Hardening of the OIDs, the command line and the public API (issue 11 items 5 and 6, and the
command-line part of item 2): each test names the fault it guards against."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from ipsecoffload import Miniport, SaConfig, ndis
from ipsecoffload.control.satable import MAX_SERIAL
from ipsecoffload.datapath.layout import HANDLE_SLOT_BITS, HANDLE_SLOT_MASK
from ipsecoffload.ndis import NdisStatus

GCM_KEY = bytes(range(20))
GCM = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY, name="gcm")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _delete(mp: Miniport, handle: int) -> None:
    assert mp.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=handle)) == NdisStatus.SUCCESS


# -- item 5: OIDs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["add_sa", "add_sa_ex"])
@pytest.mark.parametrize("pointer_size", [None, 4])
def test_an_x86_header_size_is_accepted(kind, pointer_size):
    """The Size check used the x64 NDIS_SIZEOF value even for an x86 request."""
    mp = Miniport(pointer_size=pointer_size)
    entry = GCM.add_sa_entry(ipv6=False)
    if kind == "add_sa":
        entry.header.size = ndis.SIZEOF_ADD_SA_REV1[4]
        assert mp.add_sa(entry) == NdisStatus.SUCCESS
    else:
        ex = ndis.IpsecOffloadV2AddSaEx(
            num_ext_hdrs=entry.num_ext_hdrs, flags=entry.flags, src_address=entry.src_address,
            dest_address=entry.dest_address, sec_assoc=entry.sec_assoc, key_data=entry.key_data)
        ex.header.size = ndis.SIZEOF_ADD_SA_EX_REV1[4]
        raw = ex.to_bytes(4)
        status = mp.add_sa_ex(raw) if pointer_size == 4 else mp.add_sa_ex(ex)
        assert status == NdisStatus.SUCCESS
    assert len(mp.sas) == 1


def test_an_x86_size_is_too_small_for_an_x64_miniport():
    mp = Miniport(pointer_size=8)
    entry = GCM.add_sa_entry(ipv6=False)
    entry.header.size = ndis.SIZEOF_ADD_SA_REV1[4]
    assert mp.add_sa(entry) == NdisStatus.INVALID_DATA
    entry.header.size = ndis.SIZEOF_ADD_SA_REV1[8]
    assert mp.add_sa(entry) == NdisStatus.SUCCESS


def test_pointer_size_is_checked():
    with pytest.raises(ValueError, match="pointer_size"):
        Miniport(pointer_size=2)


def test_handles_stay_below_2_to_the_32_and_fit_the_x86_layout():
    """After 4096 ADDs the serial pushed handles past 2**32: the x86 OffloadHandle (32 bits)
    could not carry them."""
    mp = Miniport()
    seen = set()
    for i in range(MAX_SERIAL + 10):
        entry = GCM.add_sa_entry(ipv6=False)
        assert mp.add_sa(entry) == NdisStatus.SUCCESS, i
        handle = entry.offload_handle
        assert 0 < handle < 2**32
        assert ndis.IpsecOffloadV2AddSa.from_bytes(entry.to_bytes(4), 4).offload_handle == handle
        if i < MAX_SERIAL:
            assert handle not in seen  # no handle comes back before MAX_SERIAL more ADDs
        seen.add(handle)
        _delete(mp, handle)
    assert mp.counters["sa_added"] == MAX_SERIAL + 10


def test_a_live_handle_is_never_issued_again():
    mp = Miniport()
    keep = GCM.add_sa_entry(ipv6=False)
    assert mp.add_sa(keep) == NdisStatus.SUCCESS
    other = SaConfig(spi=0x2002, encryption="aes-gcm-128", key=GCM_KEY)
    for _ in range(MAX_SERIAL + 5):
        entry = other.add_sa_entry(ipv6=False)
        assert mp.add_sa(entry) == NdisStatus.SUCCESS
        assert entry.offload_handle != keep.offload_handle
        assert entry.offload_handle & HANDLE_SLOT_MASK != keep.offload_handle & HANDLE_SLOT_MASK
        _delete(mp, entry.offload_handle)
    assert mp.sa_record(keep.offload_handle)["spi"] == 0x1001
    assert keep.offload_handle >> HANDLE_SLOT_BITS == 1


def test_a_duplicate_inbound_spi_for_the_same_destination_is_refused():
    """Two inbound SAs with equal SPI, endpoints, IP version and UDP encapsulation: the
    receive lookup (docs/spec-gaps.md G28) can never find the second; it was accepted
    silently."""
    mp = Miniport()
    first = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY, dst="192.0.2.7")
    again = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=bytes(20), dst="192.0.2.7")
    entry = first.add_sa_entry(ipv6=False, inbound=True)
    assert mp.add_sa(entry) == NdisStatus.SUCCESS
    assert mp.add_sa(again.add_sa_entry(ipv6=False, inbound=True)) == NdisStatus.INVALID_DATA
    assert mp.counters["add_sa_rejected.INVALID_DATA"] == 1
    # what the lookup does tell apart is accepted
    for sa, ipv6 in ((again, True),
                     (SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY,
                               dst="192.0.2.8"), False),
                     (SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY,
                               src="192.0.2.1", dst="192.0.2.7"), False),
                     (SaConfig(spi=0x1002, encryption="aes-gcm-128", key=GCM_KEY,
                               dst="192.0.2.7"), False),
                     (SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY,
                               dst="192.0.2.7", udp_encap=(4500, 4500)), False)):
        assert mp.add_sa(sa.add_sa_entry(ipv6=ipv6, inbound=True)) == NdisStatus.SUCCESS
    # once the first is deleted its SPI is free again
    _delete(mp, entry.offload_handle)
    assert mp.add_sa(again.add_sa_entry(ipv6=False, inbound=True)) == NdisStatus.SUCCESS


def test_a_duplicate_outbound_spi_is_counted():
    """Outbound SAs are found by handle: a duplicate is accepted, but not silently."""
    mp = Miniport()
    entries = [GCM.add_sa_entry(ipv6=False) for _ in range(3)]
    for entry in entries:
        assert mp.add_sa(entry) == NdisStatus.SUCCESS
    assert mp.counters["sa_added_duplicate_spi"] == 2
    assert mp.add_sa(GCM.add_sa_entry(ipv6=False, inbound=True)) == NdisStatus.SUCCESS
    _delete(mp, entries[0].offload_handle)
    assert mp.add_sa(GCM.add_sa_entry(ipv6=False)) == NdisStatus.SUCCESS
    assert mp.counters["sa_added_duplicate_spi"] == 3
    for entry in entries[1:]:
        _delete(mp, entry.offload_handle)
    assert mp.counters["sa_added_duplicate_spi"] == 3


# -- item 6: the command line -----------------------------------------------------------------
from ipsecoffload.cli.main import main  # noqa: E402
from ipsecoffload.io.pcap import (LINKTYPE_ETHERNET, MAX_RECORD_LEN, PcapError,  # noqa: E402
                                  PcapReader, write_pcap)

KEY_HEX = "40c9343ec96c147b86fa948ee1d641d28a188da1"  # AES-128 key || salt, as typed by a user
CBC_KEY_HEX = "000102030405060708090a0b0c0d0e0f"
HMAC_KEY_HEX = "6465666768696a6b6c6d6e6f7071727374757677"


def _gcm_sa(**changes) -> dict:
    sa = {"name": "web", "spi": "0x00001001", "encryption": "aes-gcm-128", "key": KEY_HEX,
          "selector": {"proto": "tcp"}, "seq": 1}
    sa.update(changes)
    return sa


def _tcp_frame(i: int, payload: int = 100) -> bytes:
    """Ethernet | IPv4 | TCP | payload, checksums left zero (the stack does not check them)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1000 + i, 0, 0x50, 0x18, 8192, 0, 0)
    body = tcp + bytes([i & 0xFF]) * payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), i, 0, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2]))
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + body


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "plain.pcap"
    write_pcap(path, LINKTYPE_ETHERNET, [_tcp_frame(i) for i in range(20)],
               [1_700_000_000 * 10**9 + i * 1000 for i in range(20)])
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_short_line(err: str, limit: int = 400) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err[:500]
    assert len(lines[0]) <= limit, lines[0][:500]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("content, expect", [
    ('[{"spi": 1, "encryption": "aes-gcm-128", "seq": ' + "9" * 5000 + "}]", "5000 digits"),
    ("[" * 100_000 + "]" * 100_000, "too deeply"),
    ("[" + " " * (5 << 20) + "]", "larger than"),
    ('[{"spi": 1e999999}]', ""),
], ids=["5000-digit integer", "100000 nested lists", "5 MiB file", "huge float"])
def test_an_unusable_sa_file_is_one_line_and_exit_2(tmp_path, plain, capsys, content, expect):
    """These ended in a traceback (ValueError, RecursionError) or read without a bound."""
    sa = tmp_path / "sa.json"
    sa.write_text(content)
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap", "--sa", sa)
    assert code == 2
    assert expect in _one_short_line(err)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_sa_file_dev_zero_ends_quickly(tmp_path, plain, capsys):
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap",
                        "--sa", "/dev/zero")
    assert code == 2 and "larger than" in _one_short_line(err)


@pytest.mark.parametrize("field, value", [
    ("encryption", KEY_HEX), ("mode", KEY_HEX), ("spi", KEY_HEX), ("protocol", KEY_HEX),
    ("icv_len", KEY_HEX), ("seq", KEY_HEX), ("esn", KEY_HEX),
    ("selector", {"src": KEY_HEX}), ("tunnel", {"src": KEY_HEX, "dst": "192.0.2.1"}),
    ("encryption", KEY_HEX[:16]), ("spi", "0x" + KEY_HEX), ("name", ["x", KEY_HEX]),
])
def test_a_key_typed_into_another_field_is_not_echoed(tmp_path, plain, capsys, field, value):
    sa = _gcm_sa(**{field: value})
    if field == "tunnel":
        sa["mode"] = "tunnel"
    path = tmp_path / "sa.json"
    path.write_text(json.dumps([sa]))
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap", "--sa", path)
    line = _one_short_line(err)
    assert code == 2 and field in line
    assert KEY_HEX[:16] not in line


def test_a_key_typed_into_integrity_is_not_echoed(tmp_path, plain, capsys):
    sa = {"spi": 5, "encryption": "aes-cbc-128", "key": CBC_KEY_HEX, "integrity": HMAC_KEY_HEX,
          "auth_key": HMAC_KEY_HEX}
    path = tmp_path / "sa.json"
    path.write_text(json.dumps([sa]))
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap", "--sa", path)
    line = _one_short_line(err)
    assert code == 2 and "integrity" in line and HMAC_KEY_HEX[:16] not in line


def test_a_short_wrong_value_is_still_quoted(tmp_path, plain, capsys):
    path = tmp_path / "sa.json"
    path.write_text(json.dumps([_gcm_sa(mode="tunel")]))
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap", "--sa", path)
    assert code == 2 and "'tunel'" in _one_short_line(err)


def test_a_long_sa_name_is_cut_in_messages_and_refused_in_the_file(tmp_path, plain, capsys):
    path = tmp_path / "sa.json"
    path.write_text(json.dumps([_gcm_sa(name="N" * 200, spi="bad")]))
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap", "--sa", path)
    line = _one_short_line(err, limit=250)
    assert code == 2 and "NNN...'" in line and "spi" in line
    path.write_text(json.dumps([_gcm_sa(name="N" * 1_000_000)]))
    code, _, err = _run(capsys, "encrypt", "-i", plain, "-o", tmp_path / "o.pcap", "--sa", path)
    assert code == 2 and "at most 256 characters" in _one_short_line(err, limit=250)


def test_not_a_pcap_does_not_print_the_files_bytes(tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes.fromhex(KEY_HEX) * 4)
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps([_gcm_sa()]))
    for command in ("encrypt", "decrypt"):
        code, _, err = _run(capsys, command, "-i", secret, "-o", tmp_path / "o.pcap", "--sa", sa)
        line = _one_short_line(err)
        assert code == 2 and "not a pcap" in line
        assert KEY_HEX[:8].lower() not in line.lower()


def test_a_bad_record_timestamp_is_no_traceback(tmp_path, plain, capsys):
    data = bytearray(plain.read_bytes())
    struct.pack_into("<II", data, 24, 0xFFFFFFFF, 0xFFFFFFFF)  # 2106 and 4295 s of "usec"
    bad = tmp_path / "badts.pcap"
    bad.write_bytes(bytes(data))
    sa = tmp_path / "sa.json"
    ah = tmp_path / "ah.json"  # an AH SA: the Python framing and pcap writer
    sa.write_text(json.dumps([_gcm_sa()]))
    ah.write_text(json.dumps([{"name": "ah", "protocol": "ah", "spi": 7,
                               "integrity": "hmac-sha1-96", "auth_key": HMAC_KEY_HEX}]))
    outputs = []
    for sa_file, fmt in ((sa, "pcap"), (sa, "pcapng"), (ah, "pcap")):
        out_path = tmp_path / f"o-{sa_file.stem}.{fmt}"
        code, out, err = _run(capsys, "encrypt", "-q", "--format", fmt, "-i", bad, "-o",
                              out_path, "--sa", sa_file, "--json")
        assert "Traceback" not in err
        assert code == 0, err
        assert json.loads(out)["packets_in"] == 20
        if fmt == "pcap":
            outputs.append([r.ts_ns for r in PcapReader(out_path)])
    assert outputs[0] == outputs[1]  # both paths write the same (wrapped) timestamp


def test_a_4_gib_snaplen_does_not_let_a_huge_record_through(tmp_path):
    path = tmp_path / "snap.pcap"
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0xFFFFFFFF, 1)
    path.write_bytes(head + struct.pack("<IIII", 0, 0, 512 << 20, 512 << 20) + bytes(64))
    with pytest.raises(PcapError, match="limit"):
        list(PcapReader(path))
    assert MAX_RECORD_LEN <= 64 << 20


@pytest.mark.parametrize("argv", [
    ["bench", "--min-time", "inf"], ["bench", "--min-time", "nan"],
    ["bench", "--min-time", "61"], ["bench", "--batch", "100000000"],
    ["bench", "--batch", "9" * 5000], ["bench", "--sizes", ",".join(["64"] * 1000)],
    ["encrypt", "-i", "x", "-o", "y", "--sa", "z", "--batch", "100000000"],
    ["decrypt", "-i", "x", "-o", "y", "--sa", "z", "--batch", "100000000"],
])
def test_runaway_arguments_are_refused(capsys, argv):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    _one_short_line(err, limit=300)


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_gives_a_message_and_a_nonzero_status(tmp_path, signame, command):
    """SIGHUP killed the run without a word; both signals now say so and exit 128 + signum,
    leaving the destination as it was."""
    signum = getattr(signal, signame, None)
    if signum is None:
        pytest.skip(f"no {signame} here")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps([_gcm_sa()]))
    dest = tmp_path / "dest.pcap"
    dest.write_bytes(b"precious")
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "ipsecoffload", command, "-q", "-i",
                             str(fifo), "-o", str(dest), "--sa", str(sa), "--batch", "4"],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    frames = [_tcp_frame(i) for i in range(50)]
    with open(fifo, "wb") as feed:
        buffer = tmp_path / "p.pcap"
        write_pcap(buffer, LINKTYPE_ETHERNET, frames, [i * 1000 for i in range(50)])
        feed.write(buffer.read_bytes()[:3000])  # a partial capture: the reader waits for more
        feed.flush()
        for _ in range(40):  # until the run is under way (its temporary output exists)
            if any(p.name.startswith(".dest.pcap.") for p in tmp_path.iterdir()):
                break
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    text = err.decode()
    assert signame in text and "Traceback" not in text and len(text.splitlines()) == 1
    assert dest.read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest.pcap.")]


# -- item 6: the Python API ---------------------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    (dict(esn="no"), "esn"), (dict(esn=1), "esn"), (dict(encryption=["x"]), "encryption"),
    (dict(encryption=None, integrity={}, protocol="ah"), "integrity"),
    (dict(udp_encap=5), "udp_encap"), (dict(udp_encap=(True, 4500)), "udp_encap"),
    (dict(spi=True), "spi"), (dict(spi=2**70), "spi"), (dict(seq="1"), "seq"),
    (dict(name=b"x"), "name"), (dict(src=5), "src"), (dict(mode=None), "mode"),
    (dict(icv_len="16"), "icv_len"), (dict(tunnel_src=1, mode="tunnel"), "tunnel_src"),
])
def test_saconfig_wrong_types_are_value_errors_naming_the_field(changes, field):
    """SaConfig(esn="no") turned ESN on; other wrong types gave AttributeError/TypeError from
    a lookup, or a 4-byte-int IP address."""
    kwargs = dict(spi=1, encryption="aes-gcm-128", key=GCM_KEY)
    kwargs.update(changes)
    with pytest.raises(ValueError, match=field):
        SaConfig(**kwargs)


def test_saconfig_errors_do_not_echo_a_key():
    with pytest.raises(ValueError) as caught:
        SaConfig(spi=1, encryption=KEY_HEX, key=GCM_KEY)
    assert KEY_HEX[:16] not in str(caught.value)


def test_one_bad_value_does_not_poison_the_batch_builder():
    from ipsecoffload import PacketBatchBuilder
    builder = PacketBatchBuilder()
    builder.add_nbl([b"good"], next_header=17)
    for frames, oob, error in (([b"x"], dict(offload_handle=-1), ValueError),
                               ([b"x"], dict(pad_length=300), ValueError),
                               ([b"x"], dict(offload_handle="a"), TypeError),
                               ([b"x"], dict(lso_info=2**64), ValueError),
                               ([5], {}, TypeError), (["ab"], {}, TypeError),
                               (b"abc", {}, TypeError), ([b"x", 7], {}, TypeError)):
        with pytest.raises(error):
            builder.add_nbl(frames, **oob)
        batch = builder.build()  # still the one good NBL
        assert len(batch) == 1 and batch.frames() == [b"good"]
    for override, name in ((dict(offload_handle=-1), "offload_handle"),
                           (dict(next_header="x"), "next_header"),
                           (dict(pad_length=[1, 2]), "pad_length")):
        with pytest.raises(ValueError, match=name):
            builder.build(**override)
    assert builder.build(next_header=[6]).next_header.tolist() == [6]


@pytest.mark.parametrize("call, name", [
    (lambda: Miniport("caps"), "capabilities"),
    (lambda: Miniport(strict_salt="no"), "strict_salt"),
    (lambda: Miniport(pure_python="yes"), "pure_python"),
    (lambda: Miniport(random_source=5), "random_source"),
    (lambda: Miniport().send("abc"), "send"),
    (lambda: Miniport().send([1, 2]), "item 0"),
    (lambda: Miniport().receive([None]), "item 0"),
    (lambda: Miniport().add_sa(None), "add_sa"),
    (lambda: Miniport().add_sa_ex("abc"), "add_sa_ex"),
    (lambda: Miniport().delete_sa(5), "delete_sa"),
    (lambda: Miniport().update_sa(None), "update_sa"),
])
def test_miniport_wrong_types_are_type_errors(call, name):
    with pytest.raises(TypeError, match=name):
        call()


def test_wrong_types_elsewhere_in_the_api(tmp_path, plain):
    import ipsecoffload
    from ipsecoffload import HostStack
    with pytest.raises(TypeError, match="miniport"):
        HostStack(5)
    with pytest.raises(ValueError, match="sa_delete_after"):
        Miniport(sa_delete_after=True)
    for batch in ("x", 0, 2**70, True):
        with pytest.raises(ValueError, match="batch_size"):
            ipsecoffload.encrypt_pcap(plain, tmp_path / "o.pcap", [_gcm_sa()], batch_size=batch)
        with pytest.raises(ValueError, match="batch_size"):
            ipsecoffload.decrypt_pcap(plain, tmp_path / "o.pcap", [_gcm_sa()], batch_size=batch)


# -- item 2, the command line: encrypt --update-sa ------------------------------------------------
def _esp_sns(path) -> dict:
    """SPI -> the ESP sequence numbers (low 32 bits) of an Ethernet/IPv4 capture, in order."""
    sns: dict = {}
    for record in PcapReader(path):
        ip = record.data[14:]
        if ip[9] != 50:
            continue
        spi, sn = struct.unpack_from("!II", ip, (ip[0] & 15) * 4)
        sns.setdefault(spi, []).append(sn)
    return sns


def _two_sas() -> list:
    return [_gcm_sa(selector={"proto": "tcp", "dport": 443}),
            {"spi": "0x00002002", "encryption": "aes-gcm-256", "key": "11" * 36, "esn": True,
             "name": "esn", "seq": 2**32 - 5}]


def _frames_for_both(n: int) -> list:
    frames = [_tcp_frame(i) for i in range(n)]
    other = []
    for frame in frames:  # the same packets to port 80: the second SA (no selector) takes them
        other.append(frame[:14 + 22] + struct.pack("!H", 80) + frame[14 + 24:])
    return [f for pair in zip(frames, other) for f in pair]


@pytest.mark.parametrize("workers", [1, 3])
def test_update_sa_lets_the_next_run_continue_the_sequence_numbers(tmp_path, capsys, workers):
    """Two runs from one SA file started at the same seq: with AES-GCM the same nonces
    twice. With --update-sa the second run continues where the first stopped, ESN high word
    included, with --workers too."""
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps(_two_sas()))
    os.chmod(sa, 0o600)
    plain = tmp_path / "plain.pcap"
    write_pcap(plain, LINKTYPE_ETHERNET, _frames_for_both(10), [i * 1000 for i in range(20)])
    runs = []
    for k in range(2):
        out = tmp_path / f"esp{k}.pcap"
        code, _, err = _run(capsys, "encrypt", "-q", "-i", plain, "-o", out, "--sa", sa,
                            "--update-sa", "--workers", workers, "--batch", 7)
        assert code == 0, err
        assert "updated seq of 2 SA(s)" in err
        runs.append(_esp_sns(out))
    assert runs[0][0x1001] == list(range(1, 11)) and runs[1][0x1001] == list(range(11, 21))
    low = [(2**32 - 5 + i) & 0xFFFFFFFF for i in range(20)]
    assert runs[0][0x2002] == low[:10] and runs[1][0x2002] == low[10:]
    document = json.loads(sa.read_text())
    assert [entry["seq"] for entry in document] == [21, 2**32 - 5 + 20]
    # every other key and value kept, in order
    expected = _two_sas()
    for entry, original in zip(document, expected):
        original["seq"] = entry["seq"]
        assert list(entry) == list(original) and entry == original
    assert os.stat(sa).st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sa.json.")]


def test_without_update_sa_the_sa_file_is_never_written(tmp_path, plain, capsys):
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps([_gcm_sa()]))
    before = sa.read_bytes()
    os.utime(sa, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    for k in range(2):
        code, _, err = _run(capsys, "encrypt", "-q", "-i", plain, "-o", tmp_path / f"o{k}.pcap",
                            "--sa", sa)
        assert code == 0, err
    assert sa.read_bytes() == before
    assert os.stat(sa).st_mtime_ns == 1_600_000_000 * 10**9
    assert _esp_sns(tmp_path / "o0.pcap") == _esp_sns(tmp_path / "o1.pcap")  # why it matters


def test_update_sa_on_the_python_path(tmp_path, plain, capsys):
    """An AH SA sends the capture through the Python framer: its next seq is kept too."""
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps([{"name": "ah", "protocol": "ah", "spi": 7,
                               "integrity": "hmac-sha1-96", "auth_key": HMAC_KEY_HEX,
                               "seq": 100}]))
    code, _, err = _run(capsys, "encrypt", "-q", "-i", plain, "-o", tmp_path / "o.pcap",
                        "--sa", sa, "--update-sa")
    assert code == 0, err
    assert json.loads(sa.read_text())[0]["seq"] == 120


def test_update_sa_refuses_a_file_that_changed_during_the_run(tmp_path):
    from ipsecoffload.io.safile import SaFileError, load_sa_file, update_sa_file_seq
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps([_gcm_sa()]))
    policies = load_sa_file(sa)
    sa.write_text(json.dumps([_gcm_sa(spi="0x00009999")]))
    before = sa.read_bytes()
    with pytest.raises(SaFileError, match="changed during the run"):
        update_sa_file_seq(sa, policies, {"web": 50})
    assert sa.read_bytes() == before


def test_update_sa_follows_a_symlink(tmp_path, plain, capsys):
    real = tmp_path / "real.json"
    real.write_text(json.dumps([_gcm_sa()]))
    link = tmp_path / "sa.json"
    link.symlink_to(real)
    code, _, err = _run(capsys, "encrypt", "-q", "-i", plain, "-o", tmp_path / "o.pcap",
                        "--sa", link, "--update-sa")
    assert code == 0, err
    assert link.is_symlink() and json.loads(real.read_text())[0]["seq"] == 21


# -- item 6: the dependency floors ------------------------------------------------------------------
def test_the_declared_floors_are_true_and_ci_installs_them():
    """pyproject.toml said cryptography>=42, but bench needs AESGCM.encrypt_into (47)."""
    tomllib = pytest.importorskip("tomllib")
    import re
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    floors = {}
    for dep in deps:
        match = re.fullmatch(r"(\w+)>=([\d.]+)(; python_version [<=>]+ '3\.\d+')?", dep)
        assert match, dep
        floors.setdefault(match.group(1), []).append(match.group(2))
    assert floors["cryptography"] == ["47"]
    assert sorted(floors["numpy"]) == ["1.24", "1.26", "2.1"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    for pin in ("cryptography==47.0.0", '"1.24.0"', '"1.26.0"', '"2.1.0"'):
        assert pin in ci
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    assert hasattr(AESGCM, "encrypt_into")
