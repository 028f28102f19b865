"""`ipsecoffload decrypt` end to end: the SA file that encrypted a capture decrypts it, to the
plain packets byte for byte; failures are counted exactly as the README's JSON keys say;
scapy-encrypted captures decrypt too."""
import json
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import ARP, Dot1Q, Ether

from ipsecoffload.cli.main import main
from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, read_pcap, write_pcap

T0 = 1_700_000_000 * 10**9
GCM_KEY = "00112233445566778899aabbccddeeff01020304"
SAS = [
    {"name": "gcm4", "selector": {"src": "10.0.0.0/8", "proto": "tcp"}, "mode": "transport",
     "spi": "0x00002001", "encryption": "aes-gcm-128", "key": GCM_KEY},
    {"name": "tun6in4", "selector": {"src": "2001:db8:1::/48"}, "mode": "tunnel",
     "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"}, "spi": 8194,
     "encryption": "aes-cbc-256", "key": "a5" * 32, "integrity": "hmac-sha256-128",
     "auth_key": "5a" * 32},
    {"name": "esn", "selector": {"src": "172.20.0.0/16"}, "spi": "0x2003",
     "encryption": "aes-cbc-128", "key": "3c" * 16, "integrity": "hmac-sha1-96",
     "auth_key": "c3" * 20, "esn": True, "seq": 2**32 - 5},
    {"name": "natt", "selector": {"proto": "udp", "dport": 5000}, "spi": "0x2004",
     "encryption": "aes-gcm-256", "icv_len": 12, "key": "77" * 36,
     "udp_encap": {"sport": 4500, "dport": 4500}},
]
SUMMARY_KEYS = {"version", "packets_in", "packets_out", "clear", "no_sa", "malformed", "sas"}


def plain_packets():
    packets = []
    for i in range(12):
        packets.append(bytes(IP(src="10.0.0.1", dst="10.9.9.9") / TCP(sport=40000, dport=443,
                                                                       seq=i) / (b"w" * i)))
        packets.append(bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:9::9") / UDP(dport=53)
                             / (b"t" * (i + 1))))
        packets.append(bytes(IP(src="172.20.0.5", dst="172.21.0.1") / UDP(dport=9) / bytes(i)))
        packets.append(bytes(IP(src="192.168.0.1", dst="192.168.0.2") / UDP(dport=5000)
                             / b"nat"))
        packets.append(bytes(IP(src="198.51.100.1", dst="198.51.100.2") / UDP(dport=7)))
    return packets


def ether(packet: bytes) -> bytes:
    kind = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=kind)) + packet


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def encrypted(tmp_path, capsys):
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps(SAS))
    plain = [ether(p) for p in plain_packets()] + [bytes(Ether() / ARP())]
    write_pcap(tmp_path / "plain.pcap", LINKTYPE_ETHERNET, plain,
               [T0 + 1000 * i for i in range(len(plain))])
    code, _, err = run(capsys, "encrypt", "-i", tmp_path / "plain.pcap", "-o",
                       tmp_path / "esp.pcap", "--sa", sa)
    assert code == 0, err
    return tmp_path, sa, plain


def test_decrypt_gives_back_the_plain_capture(encrypted, capsys):
    tmp_path, sa, plain = encrypted
    code, out, err = run(capsys, "decrypt", "-i", tmp_path / "esp.pcap", "-o",
                         tmp_path / "dec.pcap", "--sa", sa, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary) == SUMMARY_KEYS
    assert summary["packets_in"] == summary["packets_out"] == len(plain)
    assert summary["no_sa"] == summary["malformed"] == 0
    assert summary["clear"] == 12 + 1  # the unmatched UDP packets and the ARP frame
    for name, stats in summary["sas"].items():
        assert set(stats) == {"packets", "crypto_status", "replayed"}
        assert stats["packets"] == 12, name
        assert stats["crypto_status"] == {"SUCCESS": 12}
        assert stats["replayed"] == 0
    _, records = read_pcap(tmp_path / "dec.pcap")
    # the MAC addresses, the timestamps and every byte of the packets come back
    assert [r.data for r in records] == plain
    assert [r.ts_ns for r in records] == [T0 + 1000 * i for i in range(len(plain))]


def test_failures_are_counted_under_their_sa_and_dropped(encrypted, capsys):
    tmp_path, sa, plain = encrypted
    _, records = read_pcap(tmp_path / "esp.pcap")
    frames = [r.data for r in records]
    tampered = bytearray(frames[0])
    tampered[-1] ^= 1  # gcm4's ICV
    truncated = frames[1][:len(frames[1]) - 20]  # tun6in4, the IP length past the end
    replay = frames[2]  # esn, again
    unknown = bytearray(frames[0])
    unknown[14 + 20:14 + 24] = b"\x00\x00\x99\x99"  # an SPI nobody has
    extra = [bytes(tampered), truncated, replay, bytes(unknown), b"\x02" * 12 + b"\x08\x00\x45"]
    write_pcap(tmp_path / "bad.pcap", LINKTYPE_ETHERNET, frames + extra)
    code, out, err = run(capsys, "decrypt", "-i", tmp_path / "bad.pcap", "-o",
                         tmp_path / "dec.pcap", "--sa", sa, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["packets_in"] == len(frames) + 5
    assert summary["no_sa"] == 1
    assert summary["malformed"] == 1
    assert summary["packets_out"] == len(frames)
    sas = summary["sas"]
    assert sas["gcm4"]["crypto_status"] == {"SUCCESS": 12, "TRANSPORT_ESP_AUTH_FAILED": 1}
    assert sas["gcm4"]["packets"] == 13
    assert sas["tun6in4"]["crypto_status"] == {"SUCCESS": 12, "INVALID_PACKET_SYNTAX": 1}
    assert sas["esn"]["replayed"] == 1 and sas["esn"]["packets"] == 13
    # --keep-failed writes the failures exactly as read, in order
    code, out, err = run(capsys, "decrypt", "-i", tmp_path / "bad.pcap", "-o",
                         tmp_path / "keep.pcap", "--sa", sa, "--keep-failed")
    assert code == 0, err
    _, kept = read_pcap(tmp_path / "keep.pcap")
    assert [r.data for r in kept][len(frames):] == extra
    assert [r.data for r in kept][:len(frames)] == plain


def test_replay_window_zero_turns_off_only_the_replay_check(encrypted, capsys):
    tmp_path, sa, plain = encrypted
    _, records = read_pcap(tmp_path / "esp.pcap")
    frames = [r.data for r in records]
    write_pcap(tmp_path / "twice.pcap", LINKTYPE_ETHERNET, frames + frames)
    code, out, _ = run(capsys, "decrypt", "-i", tmp_path / "twice.pcap", "-o",
                       tmp_path / "dec.pcap", "--sa", sa, "--json")
    assert json.loads(out)["sas"]["natt"]["replayed"] == 12
    code, out, _ = run(capsys, "decrypt", "-i", tmp_path / "twice.pcap", "-o",
                       tmp_path / "dec.pcap", "--sa", sa, "--json", "--replay-window", "0")
    summary = json.loads(out)
    assert summary["packets_out"] == 2 * len(plain)
    assert all(s["replayed"] == 0 for s in summary["sas"].values())


def test_count_stops_early(encrypted, capsys):
    tmp_path, sa, _ = encrypted
    code, out, _ = run(capsys, "decrypt", "-i", tmp_path / "esp.pcap", "-o",
                       tmp_path / "dec.pcap", "--sa", sa, "--json", "-c", "7", "--batch", "3")
    assert json.loads(out)["packets_in"] == 7
    assert len(read_pcap(tmp_path / "dec.pcap")[1]) == 7


def test_scapy_encrypted_capture_with_vlan_tags(tmp_path, capsys):
    """Traffic scapy encrypted, behind an 802.1Q tag, raw and Ethernet."""
    key = bytes.fromhex(GCM_KEY)
    sa = SecurityAssociation(ESP, spi=0x2001, crypt_algo="AES-GCM", crypt_key=key,
                             auth_algo="NULL")
    plain = [IP(src="10.0.0.1", dst="10.9.9.9") / TCP(seq=i) / (b"v" * i) for i in range(1, 6)]
    esp = [bytes(sa.encrypt(p, seq_num=i + 1)) for i, p in enumerate(plain)]
    (tmp_path / "sa.json").write_text(json.dumps(SAS[:1]))
    tagged = [bytes(Ether() / Dot1Q(vlan=7) / IP(e)) for e in esp]
    write_pcap(tmp_path / "vlan.pcap", LINKTYPE_ETHERNET, tagged)
    write_pcap(tmp_path / "raw.pcap", LINKTYPE_RAW, esp)
    for name, frames in (("vlan", tagged), ("raw", esp)):
        code, out, err = run(capsys, "decrypt", "-i", tmp_path / f"{name}.pcap", "-o",
                             tmp_path / f"{name}-dec.pcap", "--sa", tmp_path / "sa.json",
                             "--json")
        assert code == 0, err
        assert json.loads(out)["sas"]["gcm4"]["crypto_status"] == {"SUCCESS": 5}
        got = [r.data for r in read_pcap(tmp_path / f"{name}-dec.pcap")[1]]
        prefix = 18 if name == "vlan" else 0
        assert [g[prefix:] for g in got] == [bytes(p) for p in plain]
        if name == "vlan":
            assert all(g[:18] == f[:18] for g, f in zip(got, frames))


def test_unusable_input_leaves_no_output(tmp_path, capsys):
    (tmp_path / "sa.json").write_text(json.dumps(SAS))
    (tmp_path / "junk.pcap").write_bytes(b"not a capture at all")
    out = tmp_path / "out.pcap"
    code, _, err = run(capsys, "decrypt", "-i", tmp_path / "junk.pcap", "-o", out, "--sa",
                       tmp_path / "sa.json")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ipsecoffload")] == []
    # an existing destination is left untouched on failure
    out.write_bytes(b"keep me")
    code, _, _ = run(capsys, "decrypt", "-i", tmp_path / "junk.pcap", "-o", out, "--sa",
                     tmp_path / "sa.json")
    assert code == 2 and out.read_bytes() == b"keep me"
    code, _, err = run(capsys, "decrypt", "-i", tmp_path / "sa.json", "-o", tmp_path / "sa.json",
                       "--sa", tmp_path / "sa.json")
    assert code == 2 and json.loads((tmp_path / "sa.json").read_text()) == SAS


@pytest.mark.parametrize("window", ["-1", "4097", "x"])
def test_bad_replay_window_is_a_usage_error(tmp_path, capsys, window):
    code, _, err = run(capsys, "decrypt", "-i", "in.pcap", "-o", "out.pcap", "--sa", "sa.json",
                       "--replay-window", window)
    assert code == 2 and "window" in err


def test_output_file_mode_follows_the_umask(encrypted, capsys):
    tmp_path, sa, _ = encrypted
    old = os.umask(0o022)
    try:
        run(capsys, "decrypt", "-i", tmp_path / "esp.pcap", "-o", tmp_path / "dec.pcap", "--sa", sa)
    finally:
        os.umask(old)
    assert (tmp_path / "dec.pcap").stat().st_mode & 0o777 == 0o644


def test_pcapng_in_and_out_and_standard_streams(encrypted, capsys, monkeypatch):
    """encrypt --format pcapng, then decrypt the pcapng: the records come back (scapy reads
    the file); and decrypt -o - writes the capture to standard output, the summary to stderr."""
    from scapy.utils import rdpcap
    tmp_path, sa, plain = encrypted
    code, _, err = run(capsys, "encrypt", "-i", tmp_path / "plain.pcap", "-o",
                       tmp_path / "esp.pcapng", "--sa", sa, "--format", "pcapng")
    assert code == 0, err
    code, out, err = run(capsys, "decrypt", "-i", tmp_path / "esp.pcapng", "-o",
                         tmp_path / "dec.pcapng", "--sa", sa, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["packets_out"] == len(plain)
    assert (tmp_path / "dec.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    assert [bytes(p) for p in rdpcap(str(tmp_path / "dec.pcapng"))] == plain
    code, _, err = run(capsys, "decrypt", "-i", tmp_path / "esp.pcapng", "-o",
                       tmp_path / "dec.pcap", "--sa", sa, "--format", "pcap")
    assert code == 0 and [r.data for r in read_pcap(tmp_path / "dec.pcap")[1]] == plain

    import io
    import sys

    class Buffered(io.StringIO):
        def __init__(self):
            super().__init__()
            self.buffer = io.BytesIO()
    fake = Buffered()
    monkeypatch.setattr(sys, "stdout", fake)
    assert main(["decrypt", "-i", str(tmp_path / "esp.pcap"), "-o", "-", "--sa", str(sa),
                 "--json"]) == 0
    monkeypatch.undo()
    (tmp_path / "stdout.pcap").write_bytes(fake.buffer.getvalue())
    assert [r.data for r in read_pcap(tmp_path / "stdout.pcap")[1]] == plain
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["packets_out"] == len(plain)


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_workers_give_the_one_worker_output(encrypted, capsys, workers):
    """--workers N: the same capture and the same summary as one worker, failures and replays
    included (the SAs spread over N stacks by SPI group, each SA's window in one of them)."""
    tmp_path, sa, plain = encrypted
    _, records = read_pcap(tmp_path / "esp.pcap")
    # a replay, a tampered frame and a frame of no SA, among the rest
    data = [r.data for r in records]
    tampered = bytearray(data[0])
    tampered[-1] ^= 1
    spoofed = bytearray(data[1])
    spoofed[14 + 20 + 3] ^= 0x55  # another SPI
    data += [data[2], bytes(tampered), bytes(spoofed)]
    write_pcap(tmp_path / "mixed.pcap", LINKTYPE_ETHERNET, data,
               [T0 + 1000 * i for i in range(len(data))])
    outs = []
    for n in (1, workers):
        code, out, err = run(capsys, "decrypt", "-i", tmp_path / "mixed.pcap", "-o",
                             tmp_path / f"dec{n}.pcap", "--sa", sa, "--json", "--workers", n)
        assert code == 0, err
        summary = json.loads(out)
        summary.pop("version")
        outs.append((summary, (tmp_path / f"dec{n}.pcap").read_bytes()))
    assert outs[0] == outs[1]
    assert outs[0][0]["no_sa"] == 1
    assert sum(s["replayed"] for s in outs[0][0]["sas"].values()) == 1


def test_workers_must_be_positive(tmp_path, capsys):
    code, _, err = run(capsys, "decrypt", "-i", tmp_path / "x.pcap", "-o", tmp_path / "y.pcap",
                       "--sa", tmp_path / "sa.json", "--workers", "0")
    assert code == 2 and "workers" in err


def _link_length_reference(frame: bytes, ethernet: bool) -> int:
    """The link header before IP, as decrypt defines it: raw IP 0; Ethernet 14 plus 4 per
    802.1Q / 802.1ad / 0x9100 tag (three at most), -1 when not IP."""
    if not ethernet:
        return 0
    if len(frame) < 14:
        return -1
    l2 = 14
    for _ in range(3):
        kind = int.from_bytes(frame[l2 - 2:l2], "big")
        if kind in (0x8100, 0x88A8, 0x9100) and len(frame) >= l2 + 4:
            l2 += 4
        else:
            break
    kind = int.from_bytes(frame[l2 - 2:l2], "big")
    return l2 if kind in (0x0800, 0x86DD) else -1


def test_capture_link_parse_equals_its_reference():
    """The compiled link-header pass of decrypt's bulk path on random records: tags 0 to 4
    (the fourth is not stripped), truncated ones, other EtherTypes, raw IP records."""
    import random

    import numpy as np

    from ipsecoffload import _fastpath
    from ipsecoffload.host.tx_frame import HOST_PKT_DTYPE
    rng = random.Random(3)
    types = (0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x0806, 0x1234)
    records = []
    for _ in range(3000):
        head = bytes(12)
        for _ in range(rng.randrange(5)):
            head += rng.choice(types[2:5]).to_bytes(2, "big") + bytes(2)
        head += rng.choice(types).to_bytes(2, "big")
        frame = head + bytes(rng.randrange(30))
        records.append((frame[:rng.randrange(len(frame) + 1)] if rng.random() < 0.3 else frame,
                        rng.random() < 0.85))
    arena = np.frombuffer(b"".join(f for f, _ in records), np.uint8).copy()
    pkts = np.zeros(len(records), HOST_PKT_DTYPE)
    pkts["cap_len"] = [len(f) for f, _ in records]
    pkts["off"] = np.concatenate([[0], np.cumsum(pkts["cap_len"])[:-1]])
    pkts["link"] = [1 if eth else 0 for _, eth in records]
    n_ip = _fastpath.capture_link_parse(arena, pkts.view(np.uint8), len(pkts),
                                        np.asarray((0x8100, 0x88A8, 0x9100), np.int64),
                                        0x0800, 0x86DD)
    want = [_link_length_reference(f, eth) for f, eth in records]
    assert pkts["l2_len"].tolist() == want
    assert n_ip == sum(w >= 0 for w in want)
    assert set(pkts["kind"].tolist()) == {1} and set(pkts["nbl"].tolist()) == {-1}
