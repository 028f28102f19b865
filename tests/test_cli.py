"""The command line end to end: demo, encrypt, wireshark-sa, bench. Every capture written
is checked by decrypting it with scapy (an independent ESP implementation)."""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import ARP, Ether

import ipsecoffload
from ipsecoffload.cli.main import _Progress, main
from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, read_pcap, write_pcap
from ipsecoffload.io.safile import load_sa_file, wireshark_esp_sa

REPO = Path(ipsecoffload.__file__).resolve().parents[1]
T0_NS = 1_700_000_000 * 10**9
BENCH_KEYS = {"size", "path", "suite", "pps", "gbps", "limit_gbps", "naive_pps", "ratio_limit",
              "ratio_naive"}

GCM_KEY = "00112233445566778899aabbccddeeff" + "01020304"
CBC_KEY = "a5" * 32
SHA256_KEY = "5a" * 32
SHA1_KEY = "c3" * 20
CBC128_KEY = "3c" * 16
GCM256_KEY = "77" * 36

SAS = [
    {"name": "gcm4", "selector": {"src": "10.0.0.0/8", "proto": "tcp"}, "mode": "transport",
     "spi": "0x00002001", "encryption": "aes-gcm-128", "key": GCM_KEY},
    {"name": "tun6in4", "selector": {"src": "2001:db8:1::/48"}, "mode": "tunnel",
     "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"}, "spi": 8194,
     "encryption": "aes-cbc-256", "key": CBC_KEY, "integrity": "hmac-sha256-128",
     "auth_key": SHA256_KEY},
    {"name": "esnhmac", "selector": {"src": "172.20.0.0/16"}, "spi": "0x2003",
     "encryption": "aes-cbc-128", "key": CBC128_KEY, "integrity": "hmac-sha1-96",
     "auth_key": SHA1_KEY, "esn": True, "seq": 2**32 - 5},
    {"name": "natt6", "selector": {"proto": "udp", "dport": 5000}, "spi": "0x2004",
     "encryption": "aes-gcm-256", "icv_len": 12, "key": GCM256_KEY,
     "udp_encap": {"sport": 4500, "dport": 4500}},
]
KEYS = (GCM_KEY, CBC_KEY, SHA256_KEY, SHA1_KEY, CBC128_KEY, GCM256_KEY)


# -- captures ---------------------------------------------------------------------------------
def tcp4(src="10.0.0.1", dst="10.9.9.9", payload=b"hello", seq=1000, **ip):
    return bytes(IP(src=src, dst=dst, **ip) / TCP(sport=40000, dport=443, seq=seq, flags="A")
                 / payload)


def udp6(src="2001:db8:1::1", dst="2001:db8:9::9", dport=53, payload=b"question"):
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=40001, dport=dport) / payload)


def mixed_packets():
    """Every SA, clear traffic, and TCP packets big enough for LSO at MSS 1000."""
    packets = []
    for i in range(12):
        packets += [
            tcp4(payload=bytes([i]) * (40 + 90 * i), seq=1000 + i),
            udp6(payload=bytes([i]) * (10 + i)),
            tcp4(src="172.20.1.1", payload=bytes([i]) * (100 + i), seq=5000 + i),
            udp6(src="2001:db8:7::1", dport=5000, payload=bytes([i]) * 33),
            bytes(IP(src="10.0.0.1", dst="10.9.9.9") / UDP(dport=53) / b"clear"),  # no SA
        ]
    packets.insert(7, tcp4(payload=bytes(range(256)) * 20))  # LSO, transport
    packets.insert(20, tcp4(src="172.20.1.1", payload=bytes(range(200)) * 25))  # LSO, ESN
    big6 = bytes(IPv6(src="2001:db8:1::1", dst="2001:db8:9::9") / TCP(flags="A")
                 / (b"z" * 4000))
    packets.insert(30, big6)  # tunnel SA: no LSO, one big ESP packet
    return packets


def ether(packet: bytes) -> bytes:
    ethertype = b"\x08\x00" if packet[0] >> 4 == 4 else b"\x86\xdd"
    return b"\x02\x00\x00\x00\x00\xbb" + b"\x02\x00\x00\x00\x00\xaa" + ethertype + packet


def write_capture(path, packets, linktype=LINKTYPE_ETHERNET, frames=None):
    frames = frames or [ether(p) if linktype == LINKTYPE_ETHERNET else p for p in packets]
    write_pcap(path, linktype, frames, [T0_NS + i * 1000 for i in range(len(frames))])
    return path


@pytest.fixture
def sa_file(tmp_path):
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(SAS))
    return path


# -- decrypting with scapy --------------------------------------------------------------------
CRYPT = {"aes-gcm": "AES-GCM", "aes-cbc": "AES-CBC", "null": "NULL"}
AUTH = {None: "NULL", "hmac-sha1-96": "HMAC-SHA1-96", "hmac-sha256-128": "SHA2-256-128",
        "hmac-md5-96": "HMAC-MD5-96"}


def scapy_sa(config):
    extra = {}
    if config.mode == "tunnel":
        outer = IPv6 if ":" in config.tunnel_src else IP
        extra["tunnel_header"] = outer(src=config.tunnel_src, dst=config.tunnel_dst)
    if config.udp_encap:
        extra["nat_t_header"] = UDP(sport=config.udp_encap[0], dport=config.udp_encap[1])
    return SecurityAssociation(
        ESP, spi=config.spi, crypt_algo=CRYPT[config.encryption[:7]], crypt_key=config.key,
        crypt_icv_size=16 if config.gcm else None, auth_algo=AUTH[config.integrity],
        auth_key=config.auth_key or None, esn_en=config.esn, **extra)


def ip_layer(frame: bytes, linktype: int):
    if linktype == LINKTYPE_ETHERNET:
        return Ether(frame).payload
    return (IP if frame[0] >> 4 == 4 else IPv6)(frame)


def widen_gcm_icv(esp, config, seq_hi: int) -> None:
    """scapy decrypts AES-GCM with cryptography's AESGCM, which takes only 16-byte tags, so
    it cannot check an 8- or 12-byte ICV. Check the short ICV here with GCM's
    min_tag_length, then put the full tag in its place for scapy (RFC 4106 nonce and AAD)."""
    n = config.icv
    iv, text, icv = esp.data[:8], esp.data[8:-n], esp.data[-n:]
    key, nonce = config.key[:-4], config.key[-4:] + iv
    aad = struct.pack("!III", esp.spi, seq_hi, esp.seq) if config.esn else \
        struct.pack("!II", esp.spi, esp.seq)
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, icv, min_tag_length=n)).decryptor()
    decryptor.authenticate_additional_data(aad)
    plain = decryptor.update(text) + decryptor.finalize()  # InvalidTag if the ICV is wrong
    esp.data = iv + text + AESGCM(key).encrypt(nonce, plain, aad)[-16:]


class Decryptor:
    """Decrypts the ESP frames of a capture in order. The wire carries the low 32 bits of
    an ESN; the high word is counted here from the SA's first SN and each wrap."""

    def __init__(self, policies):
        self.configs = {p.config.spi: p.config for p in policies}
        self.sas = {spi: scapy_sa(c) for spi, c in self.configs.items()}
        self.seq_hi = {spi: c.seq >> 32 for spi, c in self.configs.items()}
        self.last_seq = {}
        self.esp_seq = defaultdict(list)  # SPI -> 64-bit SNs in output order

    def __call__(self, packet):
        if ESP not in packet:
            return packet
        spi, seq = packet[ESP].spi, packet[ESP].seq
        if seq < self.last_seq.get(spi, 0):
            self.seq_hi[spi] += 1
        self.last_seq[spi] = seq
        self.esp_seq[spi].append(self.seq_hi[spi] << 32 | seq)
        config = self.configs[spi]
        if config.gcm and config.icv != 16:
            widen_gcm_icv(packet[ESP], config, self.seq_hi[spi])
        return self.sas[spi].decrypt(packet, esn=self.seq_hi[spi])


def check_decrypts(plain_path, esp_path, policies, mss=None):
    """Every plain packet comes back: one ESP or clear frame equal to it after decryption,
    or LSO segments whose TCP payloads reassemble to its payload. Returns counts."""
    linktype, plain = read_pcap(plain_path)
    out_linktype, out = read_pcap(esp_path)
    assert out_linktype == linktype
    by_ts = defaultdict(list)
    for record in out:
        by_ts[record.ts_ns].append(record.data)
    assert [r.ts_ns for r in out] == sorted(r.ts_ns for r in out)  # input order kept
    decrypt = Decryptor(policies)
    counts = defaultdict(int)
    for record in plain:
        original = bytes(ip_layer(record.data, linktype))
        frames = by_ts.pop(record.ts_ns)
        packets = [ip_layer(frame, linktype) for frame in frames]
        counts["esp" if any(ESP in p for p in packets) else "clear"] += 1
        clear = [decrypt(p) for p in packets]
        if len(clear) == 1:
            assert bytes(clear[0]) == original
            continue
        counts["lso"] += 1
        counts["segments"] += len(clear)
        payload = bytes(IP(original)[TCP].payload if original[0] >> 4 == 4
                        else IPv6(original)[TCP].payload)
        segments = [bytes(p[TCP].payload) for p in clear]
        assert all(len(s) <= mss for s in segments) and b"".join(segments) == payload
        seqs = [p[TCP].seq for p in clear]
        assert seqs == [seqs[0] + sum(map(len, segments[:k])) for k in range(len(segments))]
    assert not by_ts
    for sns in decrypt.esp_seq.values():
        assert sns == list(range(sns[0], sns[0] + len(sns)))  # consecutive, in output order
    return counts, decrypt


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- demo -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of ``python -m ipsecoffload demo --out DIR``."""
    directory = tmp_path_factory.mktemp("demo") / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-m", "ipsecoffload", "demo", "--out",
                           str(directory)], capture_output=True, text=True, env=env,
                          cwd=directory.parent, timeout=120)
    return directory, done


def test_demo_runs_and_reports(demo):
    directory, done = demo
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress: stderr is not a terminal
    for name in ("plain.pcap", "esp.pcap", "sa.json", "esp_sa"):
        assert (directory / name).stat().st_size > 0
    out = done.stdout
    assert "demo keys" in out and "packets/s" in out
    for name in ("web4", "site6", "esn6", "natt4", "(clear)"):
        assert name in out
    assert out.splitlines()[-1].startswith("To decrypt in Wireshark:")
    assert "esp.enable_encryption_decode:TRUE" in out.splitlines()[-1]


def test_demo_capture_decrypts_to_the_plain_packets(demo):
    directory, _ = demo
    policies = load_sa_file(directory / "sa.json")
    assert [p.name for p in policies] == ["web4", "site6", "esn6", "natt4"]
    counts, decrypt = check_decrypts(directory / "plain.pcap", directory / "esp.pcap",
                                     policies, mss=1400)
    assert counts["lso"] >= 10 and counts["segments"] > counts["lso"] * 5
    assert counts["clear"] > 0 and counts["esp"] > 200
    esn = next(p.config for p in policies if p.name == "esn6")
    sns = decrypt.esp_seq[esn.spi]
    assert sns[0] < 2**32 <= sns[-1]  # the ESN SA crossed into the next high word


def test_demo_files_agree_with_the_commands(demo, capsys):
    directory, _ = demo
    code, out, err = run_cli(capsys, "wireshark-sa", "--sa", directory / "sa.json")
    assert code == 0
    # one note on stderr: the ESN SA, whose ICVs Wireshark cannot check
    assert len(err.splitlines()) == 1 and "'esn6'" in err and "ESN" in err
    assert out == (directory / "esp_sa").read_text()
    assert out.splitlines() == wireshark_esp_sa(load_sa_file(directory / "sa.json"))


TSHARK_REQUIRED = os.environ.get("IPSECOFFLOAD_REQUIRE_TSHARK", "") not in ("", "0")


def tshark_or_skip() -> str:
    """tshark's path; a skip without it, a failure when CI requires it (.ci/run installs it)."""
    path = shutil.which("tshark")
    if path is None:
        if TSHARK_REQUIRED:
            pytest.fail("tshark is not installed but IPSECOFFLOAD_REQUIRE_TSHARK is set")
        pytest.skip("tshark not installed")
    return path


def tshark_esp_fields(tshark: str, capture: Path, esp_sa: Path) -> list:
    """(SPI, ICV good, ICV bad, protocols) of every ESP frame, as Wireshark dissects it with
    decryption and ICV checking on and the exported SA table. DNS is not dissected: the
    demo's DNS payloads are random bytes, and a DNS dissector exception would end the frame
    before the ESP dissector adds its ICV verdict."""
    from ipsecoffload.io.wireshark import TSHARK_OPTIONS

    options = list(TSHARK_OPTIONS)
    for line in esp_sa.read_text().splitlines():
        options += ["-o", f"uat:esp_sa:{line}"]
    done = subprocess.run([tshark, "-n", "-r", str(capture), *options,
                           "--disable-protocol", "dns", "-Y", "esp", "-T", "fields",
                           "-e", "esp.spi", "-e", "esp.icv_good", "-e", "esp.icv_bad",
                           "-e", "frame.protocols"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [tuple(line.split("\t")) for line in done.stdout.splitlines()]


def test_tshark_decrypts_and_verifies_every_frame_of_the_non_esn_sas(demo):
    """Wireshark, which nobody here wrote, decrypts every ESP frame of the demo's non-ESN SAs
    and finds each ICV good; the inner packet it finds is the one the mode puts there.
    (Wireshark's SA table has no ESN: the ESN SA's ICVs are not checkable, and that SA's
    frames are only counted.)"""
    tshark = tshark_or_skip()
    directory, _ = demo
    policies = {p.config.spi: p for p in load_sa_file(directory / "sa.json")}
    rows = tshark_esp_fields(tshark, directory / "esp.pcap", directory / "esp_sa")
    _, esp = read_pcap(directory / "esp.pcap")
    frames_per_spi = defaultdict(int)
    for record in esp:
        packet = Ether(record.data)
        if ESP in packet:
            frames_per_spi[packet[ESP].spi] += 1
    seen = defaultdict(int)
    for spi_text, good, bad, protocols in rows:
        spi = int(spi_text, 16)
        seen[spi] += 1
        config = policies[spi].config
        if config.esn:
            continue
        assert (good, bad) == ("1", "0"), (policies[spi].name, protocols)
        inner = protocols.split(":esp:", 1)[1].split(":")[0]
        assert inner in (("ip", "ipv6") if config.mode == "tunnel" else ("tcp", "udp")), \
            protocols
    assert dict(seen) == dict(frames_per_spi)  # tshark saw every ESP frame, and only those
    non_esn = [spi for spi, p in policies.items() if not p.config.esn]
    assert len(non_esn) >= 3 and all(seen[spi] > 0 for spi in non_esn)


def test_tshark_finds_a_flipped_byte(demo, tmp_path):
    """The check above can fail: one ciphertext byte flipped in one frame of each non-ESN SA
    makes Wireshark report exactly those ICVs bad."""
    tshark = tshark_or_skip()
    directory, _ = demo
    policies = {p.config.spi: p for p in load_sa_file(directory / "sa.json")}
    linktype, records = read_pcap(directory / "esp.pcap")
    frames, flipped = [], set()
    for record in records:
        frame = bytearray(record.data)
        packet = Ether(record.data)
        if ESP in packet and not policies[packet[ESP].spi].config.esn \
                and packet[ESP].spi not in flipped:
            flipped.add(packet[ESP].spi)
            # the ICV's last byte: a flipped CBC ciphertext byte would also garble the
            # decrypted pad length, and Wireshark then may give no ICV verdict at all
            frame[-1] ^= 0x01
        frames.append(bytes(frame))
    write_pcap(tmp_path / "tampered.pcap", linktype, frames, [r.ts_ns for r in records])
    rows = tshark_esp_fields(tshark, tmp_path / "tampered.pcap", directory / "esp_sa")
    bad = [int(spi, 16) for spi, good, bad_flag, _ in rows
           if bad_flag == "1" and not policies[int(spi, 16)].config.esn]
    assert sorted(bad) == sorted(flipped) and len(flipped) >= 3, rows


# -- encrypt ----------------------------------------------------------------------------------
@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_RAW], ids=["ethernet", "raw"])
def test_encrypt_with_lso(tmp_path, sa_file, capsys, linktype):
    plain = write_capture(tmp_path / "plain.pcap", mixed_packets(), linktype)
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp.pcap",
                             "--sa", sa_file, "--mss", 1000)
    assert (code, err) == (0, "")
    counts, decrypt = check_decrypts(plain, tmp_path / "esp.pcap", load_sa_file(sa_file),
                                     mss=1000)
    assert counts["lso"] == 3 and counts["clear"] == 12
    sns = decrypt.esp_seq[0x2003]
    assert sns[0] == 2**32 - 5 and sns[-1] >= 2**32  # ESN + HMAC across the high word
    assert "gcm4" in out and "(clear)" in out and "packets/s" in out
    if linktype == LINKTYPE_ETHERNET:  # the capture's MAC addresses are kept
        _, esp = read_pcap(tmp_path / "esp.pcap")
        assert {r.data[:12] for r in esp} == {ether(b"\x45")[:12]}


def test_encrypt_json_summary(tmp_path, sa_file, capsys):
    plain = write_capture(tmp_path / "plain.pcap", mixed_packets())
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp.pcap",
                             "--sa", sa_file, "--mss", 1000, "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["packets_in"] == len(mixed_packets())
    assert list(summary["sas"]) == ["gcm4", "tun6in4", "esnhmac", "natt6"]
    gcm4 = summary["sas"]["gcm4"]
    assert gcm4["packets"] == 13 and gcm4["lso_packets"] == 2 and gcm4["status"] == {
        "SUCCESS": 13}
    assert gcm4["frames_out"] == 11 + gcm4["lso_segments"]
    assert summary["clear"]["packets"] == 12
    assert summary["sas"]["tun6in4"]["lso_packets"] == 0  # never LSO in tunnel mode
    assert summary["malformed"] == {"total": 0, "reasons": {}}
    assert summary["frames_out"] == sum(s["frames_out"] for s in summary["sas"].values()) + 12
    assert summary["bytes_in"] == (tmp_path / "plain.pcap").stat().st_size - 24 - 16 * len(
        mixed_packets())
    assert summary["packets_per_second"] > 0
    for key in KEYS:
        assert key not in out


def test_without_mss_big_packets_stay_whole(tmp_path, sa_file, capsys):
    plain = write_capture(tmp_path / "plain.pcap", mixed_packets())
    code, out, _ = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp.pcap",
                           "--sa", sa_file, "--json")
    assert code == 0 and json.loads(out)["frames_out"] == len(mixed_packets())
    counts, _ = check_decrypts(plain, tmp_path / "esp.pcap", load_sa_file(sa_file))
    assert counts["lso"] == 0


def test_streaming_batches_give_the_same_capture(tmp_path, sa_file, capsys):
    """Batches of 3 and one batch of 256: GCM output is deterministic (IV = SN), so the
    captures must be byte-identical; the whole file also decrypts in order."""
    gcm_only = tmp_path / "gcm.json"
    gcm_only.write_text(json.dumps([SAS[0], SAS[3]]))
    plain = write_capture(tmp_path / "plain.pcap", mixed_packets())
    for batch in (3, 256):
        code, _, _ = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / f"{batch}.pcap",
                             "--sa", gcm_only, "--mss", 1000, "--batch", batch)
        assert code == 0
    assert (tmp_path / "3.pcap").read_bytes() == (tmp_path / "256.pcap").read_bytes()
    check_decrypts(plain, tmp_path / "3.pcap", load_sa_file(gcm_only), mss=1000)


def test_malformed_packets_are_counted_and_the_rest_processed(tmp_path, sa_file, capsys):
    good = [tcp4(payload=b"one"), udp6(payload=b"two"), tcp4(payload=b"three")]
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:aa") / ARP())
    frames = [
        ether(good[0]),
        ether(tcp4()[:30]),  # IP total length beyond the captured bytes
        ether(b"\x75" + bytes(39)),  # IP version 7
        ether(bytes(IP(src="10.0.0.1") / TCP(dataofs=15))),  # TCP header past the end
        ether(bytes(IP(src="10.0.0.1", flags="MF") / TCP() / (b"f" * 64))),  # fragment, gcm4
        ether(bytes(IP(src="192.0.2.9", frag=20, proto=17) / (b"f" * 64))),  # fragment, clear
        arp,  # not IP: passes unchanged
        b"\x02\x00",  # shorter than an Ethernet header
        ether(good[1]),
        ether(good[2]) + bytes(6),  # link padding after the IP packet
    ]
    plain = write_capture(tmp_path / "plain.pcap", None, frames=frames)
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp.pcap",
                             "--sa", sa_file, "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["malformed"] == {"total": 5, "reasons": {
        "truncated": 1, "not IPv4 or IPv6": 1, "bad TCP header": 1,
        "IP fragment (IPsec is not offloaded for fragments)": 1, "truncated link header": 1}}
    assert summary["not_ip"] == 1 and summary["clear"]["packets"] == 1
    assert summary["sas"]["gcm4"]["packets"] == 2 and summary["sas"]["tun6in4"]["packets"] == 1
    _, esp = read_pcap(tmp_path / "esp.pcap")
    kept = [0, 5, 6, 8, 9]  # input indices with output, in order
    assert [r.ts_ns for r in esp] == [T0_NS + i * 1000 for i in kept]
    assert esp[2].data == arp
    decrypt = Decryptor(load_sa_file(sa_file))
    assert bytes(decrypt(Ether(esp[0].data).payload)) == good[0]
    assert bytes(decrypt(Ether(esp[3].data).payload)) == good[1]
    assert bytes(decrypt(Ether(esp[4].data).payload)) == good[2]
    code, out, _ = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp2.pcap",
                           "--sa", sa_file)
    assert code == 0 and "malformed (dropped): 5" in out and "not IP" in out


def test_packets_the_sa_cannot_take_are_dropped_and_counted(tmp_path, capsys):
    """A 65500-byte IPv4 packet cannot grow by the ESP overhead; the sequence numbers (no
    ESN) run out after 3 packets. What can go out does, in order."""
    sa_file = tmp_path / "sa.json"
    sa_file.write_text(json.dumps([{k: v for k, v in SAS[0].items() if k != "name"}
                                   | {"seq": 2**32 - 3, "selector": {"dst": "10.9.9.9"}}]))
    too_big = bytes(IP(src="10.0.0.1", dst="10.9.9.9") / UDP() / (b"b" * 65472))
    packets = [tcp4(payload=b"a"), too_big] + [tcp4(payload=bytes([i])) for i in range(5)]
    plain = write_capture(tmp_path / "plain.pcap", packets, LINKTYPE_RAW)
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp.pcap",
                             "--sa", sa_file, "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)["sas"]["sa0"]
    assert summary["status"] == {"SUCCESS": 3} and summary["dropped"] == {
        "refused by the host stack": 1, "sequence numbers exhausted": 3}
    _, esp = read_pcap(tmp_path / "esp.pcap")
    assert [r.ts_ns for r in esp] == [T0_NS + i * 1000 for i in (0, 2, 3)]
    assert [IP(r.data)[ESP].seq for r in esp] == [2**32 - 3, 2**32 - 2, 2**32 - 1]


def test_truncated_last_record_keeps_the_complete_ones(tmp_path, sa_file, capsys):
    plain = write_capture(tmp_path / "plain.pcap", [tcp4(payload=bytes([i]) * 50)
                                                     for i in range(4)])
    data = plain.read_bytes()
    plain.write_bytes(data[:-20])
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "esp.pcap",
                             "--sa", sa_file, "--json")
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipsecoffload: warning:")
    assert "truncated" in lines[0]
    assert json.loads(out)["packets_in"] == 3 and json.loads(out)["warnings"]
    assert len(read_pcap(tmp_path / "esp.pcap")[1]) == 3


def pcap_header(linktype):
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


BAD_CAPTURES = {
    "missing": None,
    "empty": b"",
    "garbage": b"this is not a capture file at all",
    # pcapng is read (tests/test_e2e.py); a section header whose byte-order magic is wrong
    # is not a capture
    "pcapng bad byte order": bytes.fromhex(
        "0a0d0d0a1c000000efbeadde01000000ffffffffffffffff1c000000"),
    "pcapng packet of no interface": bytes.fromhex(
        "0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000") + struct.pack(
        "<8I", 6, 32, 0, 0, 0, 0, 0, 32),
    "unsupported link type": pcap_header(105) + struct.pack("<IIII", 0, 0, 4, 4) + b"abcd",
}
BAD_SA_FILES = {
    "bad JSON": '[{"name": "x", ',
    "wrong key length": json.dumps([dict(SAS[0], key=GCM_KEY[:32])]),
    "unknown encryption": json.dumps([dict(SAS[0], encryption="aes-ctr-128")]),
    "unknown field": json.dumps([dict(SAS[0], lifetime=3600)]),
    "missing": None,
}


def assert_one_error_line(code, out, err, *words):
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ipsecoffload: error: ")
    for word in words:
        assert word in lines[0]
    for key in KEYS + (GCM_KEY[:32],):
        assert key not in err


@pytest.mark.parametrize("content", list(BAD_CAPTURES.values()), ids=list(BAD_CAPTURES))
def test_unusable_capture(tmp_path, sa_file, capsys, content):
    plain = tmp_path / "in.pcap"
    if content is not None:
        plain.write_bytes(content)
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", tmp_path / "out.pcap",
                             "--sa", sa_file)
    assert_one_error_line(code, out, err, "in.pcap")
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.parametrize("content", list(BAD_SA_FILES.values()), ids=list(BAD_SA_FILES))
def test_unusable_sa_file(tmp_path, capsys, content):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    plain = write_capture(tmp_path / "plain.pcap", [tcp4()])
    for command in (["encrypt", "-i", plain, "-o", tmp_path / "out.pcap", "--sa", bad],
                    ["wireshark-sa", "--sa", bad]):
        code, out, err = run_cli(capsys, *command)
        assert_one_error_line(code, out, err, "bad.json")
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["encrypt", "-i", "x.pcap"], ["encrypt", "-i", "a", "-o", "b", "--sa",
                                                      "c", "--mss", "0"],
    ["bench", "--sizes", "64,big"], ["bench", "--sizes", "20"], ["bench", "--min-time", "0"],
], ids=["no command", "unknown command", "missing options", "mss 0", "sizes text",
        "size too small", "min-time 0"])
def test_usage_errors_are_one_line(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert_one_error_line(code, out, err, "--help")


def test_output_into_a_missing_directory(tmp_path, sa_file, capsys):
    plain = write_capture(tmp_path / "plain.pcap", [tcp4()])
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o",
                             tmp_path / "nowhere" / "out.pcap", "--sa", sa_file)
    assert_one_error_line(code, out, err, "out.pcap")


def test_output_must_not_be_the_input(tmp_path, sa_file, capsys):
    plain = write_capture(tmp_path / "plain.pcap", [tcp4()])
    before = plain.read_bytes()
    code, out, err = run_cli(capsys, "encrypt", "-i", plain, "-o", plain, "--sa", sa_file)
    assert_one_error_line(code, out, err, "is the input")
    assert plain.read_bytes() == before


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "encrypt", "wireshark-sa", "bench"):
        assert command in out
    assert main(["wireshark-sa", "--help"]) == 0
    assert "outputs key material" in " ".join(capsys.readouterr().out.split())


# -- wireshark-sa -----------------------------------------------------------------------------
def test_wireshark_sa_output(sa_file, capsys):
    code, out, err = run_cli(capsys, "wireshark-sa", "--sa", sa_file)
    assert code == 0
    assert err.splitlines() == ["ipsecoffload: note: SA 'esnhmac' (SPI 0x00002003): ESN — "
                                "Wireshark's esp_sa table has no extended sequence numbers, "
                                "so it reports every ICV of this SA bad; the AES-CBC payload "
                                "still decrypts"]
    for key in KEYS:
        assert key not in err
    rows = [line[1:-1].split('","') for line in out.splitlines()]
    assert all(len(row) == 8 for row in rows)
    assert [row[0] for row in rows] == ["IPv4", "IPv4", "IPv4", "IPv4", "IPv6"]
    assert rows[0] == ["IPv4", "*", "*", "0x00002001", "AES-GCM with 16 octet ICV [RFC4106]",
                       "0x" + GCM_KEY, "NULL", ""]
    assert rows[1] == ["IPv4", "192.0.2.1", "192.0.2.2", "0x00002002", "AES-CBC [RFC3602]",
                       "0x" + CBC_KEY, "HMAC-SHA-256-128 [RFC4868]", "0x" + SHA256_KEY]
    assert rows[2][4:] == ["AES-CBC [RFC3602]", "0x" + CBC128_KEY, "HMAC-SHA-1-96 [RFC2404]",
                           "0x" + SHA1_KEY]
    assert rows[3][4] == rows[4][4] == "AES-GCM with 12 octet ICV [RFC4106]"


# -- bench ------------------------------------------------------------------------------------
def test_bench_json(capsys):
    code, out, err = run_cli(capsys, "bench", "--json", "--sizes", "64", "--batch", "8",
                             "--min-time", "0.01")
    assert (code, err) == (0, "")
    [row] = json.loads(out)
    assert set(row) == BENCH_KEYS and row["size"] == 64
    assert (row["path"], row["suite"]) == ("send", "aes-gcm-128")
    assert all(row[key] > 0 for key in BENCH_KEYS - {"path", "suite"})


@pytest.mark.parametrize("args,path,suite,size", [
    (("--path", "lso", "--sizes", "3000", "--mss", "1000"), "lso", "aes-gcm-128", 3000),
    (("--encryption", "aes-cbc-128", "--integrity", "hmac-sha256-128"), "send",
     "aes-cbc-128+hmac-sha256-128", 64),
    (("--encryption", "null", "--integrity", "aes-gmac-128"), "send", "null+aes-gmac-128", 64),
    (("--encryption", "none", "--ah", "hmac-sha256-128"), "send", "ah-hmac-sha256-128", 64),
    (("--ah", "hmac-sha256-128"), "send", "aes-gcm-128+ah-hmac-sha256-128", 64),
    (("--encryption", "aes-cbc-128", "--ah", "aes-gmac-128"), "send",
     "aes-cbc-128+ah-aes-gmac-128", 64),
    (("--path", "lso", "--sizes", "3000", "--mss", "1000", "--encryption", "none", "--ah",
      "hmac-sha1-96"), "lso", "ah-hmac-sha1-96", 3000),
])
def test_bench_paths_and_suites(capsys, args, path, suite, size):
    sizes = () if "--sizes" in args else ("--sizes", "64")
    code, out, err = run_cli(capsys, "bench", "--json", "--batch", "4", "--min-time", "0.01",
                             *sizes, *args)
    assert (code, err) == (0, "")
    [row] = json.loads(out)
    assert (row["path"], row["suite"], row["size"]) == (path, suite, size)
    assert all(row[key] > 0 for key in BENCH_KEYS - {"path", "suite"})


@pytest.mark.parametrize("args", [("--min-time", "inf"), ("--min-time", "nan"),
                                  ("--min-time", "61"), ("--batch", "100000000"),
                                  ("--encryption", "aes-ctr-128"),
                                  ("--encryption", "aes-cbc-128"),
                                  ("--encryption", "none"), ("--ah", "hmac-sha3"),
                                  ("--path", "lso", "--mss", "0"),
                                  ("--sas", "8"), ("--workers", "2"),
                                  ("--path", "e2e", "--sas", "5000"),
                                  ("--path", "e2e", "--workers", "0")])
def test_bench_refuses_runaway_or_unknown_arguments(capsys, args):
    code, out, err = run_cli(capsys, "bench", "--sizes", "64", *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_bench_e2e_over_several_sas_and_workers(capsys):
    """bench --path e2e --sas N --workers M: the capture spread over N SAs, encrypted with
    M workers; the rows name both (the keys of a default row stay the design's)."""
    code, out, err = run_cli(capsys, "bench", "--json", "--path", "e2e", "--sizes", "200",
                             "--sas", "3", "--workers", "2", "--min-time", "0.01")
    assert (code, err) == (0, "")
    [row] = json.loads(out)
    assert set(row) == BENCH_KEYS | {"sas", "workers"}
    assert (row["path"], row["sas"], row["workers"]) == ("e2e", 3, 2) and row["pps"] > 0


def test_bench_e2e_output_is_removed_outside_the_timing(monkeypatch):
    """The e2e harness: each call encrypts to a new output in its own temporary directory;
    tidy() removes that output (and only it), and _rate runs tidy after every call without
    counting it in the rate."""
    from ipsecoffload.cli import bench
    work, units, _, _, cleanup = bench.prepared_e2e(200, 1448, bench.Suite())
    try:
        directory = os.path.dirname(work.plain)
        work.tidy()  # before any call: nothing to remove
        assert sorted(os.listdir(directory)) == ["plain.pcap"]
        work()
        assert sorted(os.listdir(directory)) == ["out.pcap.1", "plain.pcap"]
        work()  # a call removes the output before it, so outputs never pile up
        assert sorted(os.listdir(directory)) == ["out.pcap.2", "plain.pcap"]
        work.tidy()
        work.tidy()
        assert sorted(os.listdir(directory)) == ["plain.pcap"]
        clock = iter(range(0, 10**6, 5))
        monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
        calls: list = []
        rate = bench._rate(lambda: calls.append("run"),
                           min_time=20, tidy=lambda: (calls.append("tidy"), next(clock)))
        # each timed call spans one clock step (5); each tidy's own step is not counted
        assert calls == ["run", "tidy"] * 5 and rate == 4 / 20
    finally:
        cleanup()


def test_bench_table(capsys):
    code, out, _ = run_cli(capsys, "bench", "--sizes", "64,128", "--batch", "4",
                           "--min-time", "0.01")
    assert code == 0 and len(out.splitlines()) == 3 and "Gbit/s" in out


# -- progress ---------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_drawn_on_a_terminal_only():
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = _Progress("encrypt", stream, interval=0)
        progress(256)
        progress(512)
        progress.close()
    assert pipe.getvalue() == ""
    drawn = terminal.getvalue()
    assert "\rencrypt: 256 packets" in drawn and "\rencrypt: 512 packets" in drawn
    assert drawn.endswith("\r") and "\n" not in drawn  # erased, leaving stdout's lines alone


# -- bench --plot -------------------------------------------------------------------------------
def test_bench_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the "plot" extra; the "test" extra installs it
    out = tmp_path / "bench.png"
    code, text, err = run_cli(capsys, "bench", "--sizes", "64,512", "--batch", "4",
                              "--min-time", "0.01", "--plot", out)
    assert (code, err) == (0, "")
    assert "ours/naive" in text
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bench_plot_without_matplotlib_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = run_cli(capsys, "bench", "--sizes", "64", "--batch", "4",
                             "--min-time", "0.01", "--plot", tmp_path / "x.png")
    assert code == 2 and len(err.splitlines()) == 1 and "matplotlib" in err
    assert not (tmp_path / "x.png").exists()


# -- help and errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["demo", "encrypt", "wireshark-sa", "bench"])
def test_help_shows_examples(capsys, command):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("examples:\n", 1)[1]
    runs = [line for line in examples.splitlines()
            if line.strip().startswith(f"ipsecoffload {command}")]
    assert len(runs) >= 2, out
    if command in ("encrypt", "wireshark-sa"):
        assert 'section "SA file"' in " ".join(out.split())


def test_json_errors_also_go_to_stdout_as_json(tmp_path, capsys):
    code, out, err = run_cli(capsys, "encrypt", "-i", tmp_path / "missing.pcap", "-o",
                             tmp_path / "out.pcap", "--sa", tmp_path / "missing.json", "--json")
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("ipsecoffload: error: ")
    assert json.loads(out) == {"error": err.strip()[len("ipsecoffload: error: "):]}
    code, out, err = run_cli(capsys, "bench", "--json", "--sizes", "7")
    assert code == 2 and "error" in json.loads(out)
