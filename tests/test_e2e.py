"""End to end at data-plane speed: the compiled host framer against the Python framer (its
twin) byte for byte, the list API's per-packet faults, the bulk pcap/pcapng reader and writer
(cross-checked with scapy and, where installed, tshark/editcap), standard input and output,
output that is never lost, VLAN-tagged traffic."""
import contextlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.utils import rdpcap

import ipsecoffload
from ipsecoffload.cli.main import main
from ipsecoffload.control.miniport import Miniport
from ipsecoffload.host import tx_frame
from ipsecoffload.host.saconfig import SaConfig
from ipsecoffload.host.stack import HostStack
from ipsecoffload.io.bulk import BulkReader
from ipsecoffload.io.capture import encrypt_capture, encrypt_capture_python
from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapReader, read_pcap, write_pcap
from ipsecoffload.io.pcapng import idb_bytes, shb_bytes
from ipsecoffload.io.safile import load_sa_file

fp = tx_frame.kernels()
pytestmark = pytest.mark.skipif(fp is None, reason="needs the compiled kernels")
REPO = Path(ipsecoffload.__file__).resolve().parents[1]
T0 = 1_700_000_000 * 10**9
GCM = bytes(range(20))


def test_struct_layouts_match_the_dtypes():
    sizes = fp.HOST_STRUCT_SIZES
    assert sizes == {"HostSelector": tx_frame.HOST_SELECTOR_DTYPE.itemsize,
                     "HostPkt": tx_frame.HOST_PKT_DTYPE.itemsize,
                     "HostSa": tx_frame.HOST_SA_DTYPE.itemsize}
    dtypes = {"HostSelector": tx_frame.HOST_SELECTOR_DTYPE, "HostPkt": tx_frame.HOST_PKT_DTYPE,
              "HostSa": tx_frame.HOST_SA_DTYPE}
    for name, fields in fp.host_struct_offsets().items():
        for field, offset in fields.items():
            assert dtypes[name].fields[field][1] == offset, (name, field)
    assert [int(m) for m in fp.PktKind] == [tx_frame.PKT_DROP, tx_frame.PKT_NOT_IP,
                                            tx_frame.PKT_CLEAR, tx_frame.PKT_ESP,
                                            tx_frame.PKT_LSO]
    faults = {m.name: int(m) for m in fp.PktFault}
    assert faults["FAULT_EXHAUSTED"] == tx_frame.FAULT_EXHAUSTED
    assert faults["FAULT_WRONG_VERSION"] == tx_frame.FAULT_REFUSED_FIRST
    assert {v for k, v in faults.items() if k != "FAULT_NONE"} == \
        set(tx_frame.MALFORMED_TEXT) | set(tx_frame.FAULT_DETAIL) | {16}
    from ipsecoffload.io import bulk
    assert [int(m) for m in fp.ScanStatus] == [bulk.SCAN_MORE, bulk.SCAN_FULL,
                                               bulk.SCAN_CORRUPT, bulk.SCAN_BLOCK,
                                               bulk.SCAN_OVERSIZE]


# -- the compiled framer against the Python framer ----------------------------------------------
def random_packets(rng, version, count=24):
    packets = []
    for i in range(count):
        size = rng.choice([0, 1, 7, 40, 300, 1400])
        payload = bytes(rng.getrandbits(8) for _ in range(size))
        l4 = (TCP(sport=rng.randrange(1, 65535), dport=443, flags="A") if i % 2
              else UDP(sport=rng.randrange(1, 65535), dport=53))
        if version == 4:
            ip = IP(src="10.0.0.1", dst="10.1.2.3", tos=rng.randrange(256), id=i,
                    flags="DF" if i % 3 else 0, ttl=rng.randrange(1, 255))
            if i % 4 == 0:
                ip.options = [IPOption_RR(routers=["1.2.3.4"])]
            packets.append(bytes(ip / l4 / payload))
        else:
            ip = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=rng.randrange(256),
                      fl=rng.randrange(1 << 20))
            ext = [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=["2001:db8::9"]),
                   IPv6ExtHdrDestOpt(), None][i % 4]
            packets.append(bytes((ip / ext / l4 / payload) if ext is not None
                                 else (ip / l4 / payload)))
    return packets


CONFIGS = {
    "transport-gcm": dict(encryption="aes-gcm-128", key=GCM),
    "transport-gcm8-udp": dict(encryption="aes-gcm-256", key=bytes(36), icv_len=8,
                               udp_encap=(4500, 4500)),
    "transport-cbc-esn": dict(encryption="aes-cbc-128", key=bytes(16), integrity="hmac-sha1-96",
                              auth_key=bytes(20), esn=True, seq=2**33 + 7),
    "tunnel4-cbc": dict(encryption="aes-cbc-256", key=bytes(32), integrity="hmac-sha256-128",
                        auth_key=bytes(32), mode="tunnel", tunnel_src="192.0.2.1",
                        tunnel_dst="192.0.2.2"),
    "tunnel6-gcm-udp": dict(encryption="aes-gcm-128", key=GCM, mode="tunnel",
                            tunnel_src="2001:db8:f::1", tunnel_dst="2001:db8:f::2",
                            udp_encap=(4500, 4501)),
    "null-gmac": dict(encryption="null", integrity="aes-gmac-128", auth_key=GCM),
    # AH and AH + ESP (RFC 4302): the compiled framer frames them too
    "ah-sha256": dict(protocol="ah", integrity="hmac-sha256-128", auth_key=bytes(range(32))),
    "ah-gmac-esn-tunnel4": dict(protocol="ah", integrity="aes-gmac-128", auth_key=GCM,
                                esn=True, seq=2**33 + 7, mode="tunnel",
                                tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2"),
    "ah-sha1-tunnel6": dict(protocol="ah", integrity="hmac-sha1-96", auth_key=bytes(20),
                            mode="tunnel", tunnel_src="2001:db8:f::1",
                            tunnel_dst="2001:db8:f::2"),
    "ah+esp-gcm": dict(protocol="ah+esp", encryption="aes-gcm-128", key=GCM, ah_spi=0x4321,
                       ah_integrity="hmac-sha256-128", ah_auth_key=bytes(32)),
    "ah+esp-cbc-gmac-tunnel6": dict(protocol="ah+esp", encryption="aes-cbc-128",
                                    key=bytes(16), integrity="hmac-sha1-96",
                                    auth_key=bytes(20), ah_spi=0x4322,
                                    ah_integrity="aes-gmac-128", ah_auth_key=GCM,
                                    mode="tunnel", tunnel_src="2001:db8:f::1",
                                    tunnel_dst="2001:db8:f::2"),
}


@contextlib.contextmanager
def compiled_framing_calls():
    """A list that gets, per tx_frame.stack_send call made inside, whether the compiled
    framer framed the packets (True) or handed them back to the Python framer (False)."""
    calls: list = []
    original = tx_frame.stack_send

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result is not None)
        return result
    tx_frame.stack_send = spy
    try:
        yield calls
    finally:
        tx_frame.stack_send = original


@pytest.mark.parametrize("link", ["ethernet", "raw"])
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("tunnel_df", ["copy", "set"])
def test_compiled_framer_equals_the_python_framer(name, version, link, tunnel_df):
    rng = random.Random(f"{name}{version}{link}")
    packets = random_packets(rng, version)
    stacks = [HostStack(Miniport(), link=link, ipv4_id=0xFFF0, ttl=33, tunnel_df=tunnel_df)
              for _ in range(2)]
    stacks[1].compiled_framing = False
    sas = [s.add_sa(SaConfig(spi=0x1234, **CONFIGS[name])) for s in stacks]
    with compiled_framing_calls() as calls:
        for _ in range(2):  # two batches: the SNs and IDs carry on
            fast, slow = (s.build(packets, sa) for s, sa in zip(stacks, sas))
            assert fast.frames() == slow.frames()
            assert fast.oob.tobytes() == slow.oob.tobytes()
            assert sas[0].next_seq == sas[1].next_seq
            assert stacks[0].next_ipv4_id == stacks[1].next_ipv4_id
        fast, slow = (s.send(packets, sa) for s, sa in zip(stacks, sas))
    assert calls and all(calls)  # the compiled framer did frame them
    assert list(fast.status) == list(slow.status)
    if "cbc" not in name:
        assert fast.wire.frames() == slow.wire.frames()  # deterministic IVs
    else:
        assert [len(f) for f in fast.wire.frames()] == [len(f) for f in slow.wire.frames()]


def test_what_the_compiled_framer_refuses_falls_back_with_todays_errors():
    stack = HostStack(Miniport())
    sa = stack.add_sa(SaConfig(spi=7, encryption="aes-gcm-128", key=GCM, seq=2**32 - 2))
    fragment = bytes(IP(src="10.0.0.1", flags="MF") / UDP() / b"x")
    with pytest.raises(ValueError, match="fragment"):
        stack.send([bytes(IP() / UDP()), fragment], sa)
    assert sa.next_seq == 2**32 - 2
    big = bytes(IP() / UDP() / (b"b" * 65480))
    with pytest.raises(ValueError, match="65535"):
        stack.send([big], sa)
    assert sa.next_seq == 2**32 - 2
    stack.send([bytes(IP() / UDP())] * 2, sa)
    with pytest.raises(Exception, match="sequence numbers"):
        stack.send([bytes(IP() / UDP())], sa)


def test_send_batch_reports_bad_packets_by_index_and_sends_the_rest():
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(SaConfig(spi=9, encryption="aes-gcm-128", key=GCM))
    tunnel = stack.add_sa(SaConfig(spi=10, encryption="aes-gcm-128", key=GCM, mode="tunnel",
                                   tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2"))
    good = IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"hello"  # a scapy packet
    packets = [good, b"\x75" + bytes(30), bytes(good)[:10], bytearray(bytes(good)),
               bytes(IP(flags="MF") / UDP()), bytes(IP(flags="MF") / UDP()), bytes(good)]
    sas = [sa, sa, sa, sa, sa, tunnel, None]
    result = stack.send_batch(packets, sas)
    assert [i for i, _ in result.faults] == [1, 2, 4]
    assert sum(result.counts.values()) == 3
    assert (result.nbl >= 0).tolist() == [True, False, False, True, False, True, True]
    assert list(result.result.status) == [0, 0, 0, 0]
    frames = result.result.wire.frames()
    assert ESP in IP(frames[0]) and ESP in IP(frames[2]) and frames[3] == bytes(good)
    assert sa.next_seq == 3 and tunnel.next_seq == 2


def test_send_batch_lso_super_packets_in_one_send():
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(SaConfig(spi=11, encryption="aes-gcm-128", key=GCM))
    big = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A", seq=k) / (b"p" * 5000))
           for k in range(3)]
    result = stack.send_batch(big, sa, mss=1448)
    assert not result.faults and len(result.result.status) == 3
    assert len(result.result.wire) == 12 and sa.next_seq == 13  # 4 segments each


def _lso_candidates(rng, count=160):
    """TCP packets fit and unfit for LSO (flags, urgent pointer, sizes, IPv6 destination
    options before and after a routing header, a TCP header cut short), UDP and garbage."""
    packets = []
    for i in range(count):
        payload = b"x" * rng.choice([0, 1, 99, 100, 101, 1448, 1449, 2999, 3000, 3001, 9000,
                                     60000])
        flags = rng.choice(["A", "PA", "S", "R", "U", "SA", "F"])
        tcp = TCP(sport=1000 + i, dport=80, flags=flags,
                  urgptr=rng.choice([0, 0, 0, 5]), dataofs=rng.choice([None, None, 8]))
        if rng.random() < 0.5:
            ip = IP(src="10.0.0.1", dst="10.0.0.2")
            packet = bytes(ip / tcp / payload) if len(payload) < 65000 else bytes(ip / tcp)
        else:
            ext = rng.choice([None, IPv6ExtHdrDestOpt(),
                              IPv6ExtHdrRouting(addresses=["2001:db8::9"]) / IPv6ExtHdrDestOpt(),
                              IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()])
            ip = IPv6(src="2001:db8::1", dst="2001:db8::2")
            packet = bytes(ip / ext / tcp / payload) if ext is not None else bytes(
                ip / tcp / payload)
        kind = rng.random()
        if kind < 0.1:
            packet = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / payload[:3000])
        elif kind < 0.15:
            packet = packet[:rng.randrange(len(packet) + 1)]  # cut anywhere
        elif kind < 0.2:
            packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(60)))
        packets.append(packet)
    return packets


@pytest.mark.parametrize("seed", range(6))
def test_compiled_lso_decision_equals_the_python_twin(seed):
    """send_batch's LSO decision (host_mark_lso) against host/tx_frame.py _mark_lso, row for
    row, over transport, tunnel and no SA, several MSS values and LSOv2 limits."""
    rng = random.Random(seed)
    stack = HostStack(Miniport(), link="raw")
    transport = stack.add_sa(SaConfig(spi=11, encryption="aes-gcm-128", key=GCM))
    tunnel = stack.add_sa(SaConfig(spi=12, encryption="aes-gcm-128", key=GCM, mode="tunnel",
                                   tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2"))
    packets = _lso_candidates(rng)
    per_packet = [rng.choice([transport, transport, tunnel, None]) for _ in packets]
    distinct = [transport, tunnel]
    index = {id(transport): 0, id(tunnel): 1}
    limits = [(65535, 2), (3000, 3), (10000, 2), (65535, 40), (65535, 2), (9000, 2)][seed]
    lso_limits = lambda version, v6: limits  # noqa: E731
    mss = [1448, 100, 536, 1, 9000, 1448][seed]
    arena, pkts = tx_frame._pack(packets)
    fp.host_parse_for_stack(arena, pkts.view(np.uint8), len(packets))
    pkts["sa"] = [index[id(s)] if s is not None else -1 for s in per_packet]
    pkts["kind"][(pkts["sa"] < 0) & (pkts["kind"] == tx_frame.PKT_ESP)] = tx_frame.PKT_CLEAR
    twin = pkts.copy()
    tx_frame._mark_lso(twin, arena, mss, distinct, per_packet, index, lso_limits)
    fp.host_mark_lso(arena, pkts.view(np.uint8), len(packets), mss,
                     tx_frame.sa_table(distinct).view(np.uint8), len(distinct),
                     tx_frame.lso_limit_array(lso_limits))
    assert pkts.tobytes() == twin.tobytes()
    assert (twin["kind"] == tx_frame.PKT_LSO).any()  # the case is exercised


def test_compiled_lso_decision_refuses_bad_rows():
    stack = HostStack(Miniport(), link="raw")
    sa = stack.add_sa(SaConfig(spi=11, encryption="aes-gcm-128", key=GCM))
    arena, pkts = tx_frame._pack([bytes(IP() / TCP(flags="A") / (b"x" * 3000))])
    fp.host_parse_for_stack(arena, pkts.view(np.uint8), 1)
    table = tx_frame.sa_table([sa]).view(np.uint8)
    limits = tx_frame.lso_limit_array()
    for field, value, match in (("sa", 1, "names SA"), ("sa", -1, "names SA"),
                                ("ip_len", 99999, "outside"), ("off", 5, "outside")):
        bad = pkts.copy()
        bad[field] = value
        with pytest.raises(ValueError, match=match):
            fp.host_mark_lso(arena, bad.view(np.uint8), 1, 1000, table, 1, limits)
    with pytest.raises(ValueError, match="mss"):
        fp.host_mark_lso(arena, pkts.view(np.uint8), 1, 0, table, 1, limits)
    with pytest.raises(ValueError, match="limits"):
        fp.host_mark_lso(arena, pkts.view(np.uint8), 1, 1000, table, 1, limits[:2])
    fp.host_mark_lso(arena, pkts.view(np.uint8), 1, 1000, table, 1, limits)
    assert pkts["kind"][0] == tx_frame.PKT_LSO and pkts["nsn"][0] == 3


# -- captures ------------------------------------------------------------------------------
SAS = [
    {"name": "gcm4", "selector": {"src": "10.0.0.0/8", "proto": "tcp"}, "spi": "0x2001",
     "encryption": "aes-gcm-128", "key": GCM.hex()},
    {"name": "tun6in4", "selector": {"src": "2001:db8:1::/48"}, "mode": "tunnel",
     "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"}, "spi": 8194,
     "encryption": "aes-gcm-256", "key": "77" * 36},
    {"name": "esn", "selector": {"src": "172.20.0.0/16"}, "spi": "0x2003",
     "encryption": "aes-gcm-128", "key": "11" * 20, "esn": True, "seq": 2**32 - 5},
    {"name": "natt", "selector": {"proto": "udp", "dport": 5000}, "spi": "0x2004",
     "encryption": "aes-gcm-256", "icv_len": 12, "key": "22" * 36,
     "udp_encap": {"sport": 4500, "dport": 4500}},
]


def mixed_frames():
    frames = []
    for i in range(40):
        for packet in (
                IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A", seq=i) / (bytes([i]) * (40 + 97 * i)),
                IPv6(src="2001:db8:1::1", dst="2001:db8:9::9") / UDP() / (b"q" * i),
                IP(src="172.20.1.1", dst="10.9.9.9") / TCP(flags="A") / (b"e" * (i * 50)),
                IPv6(src="2001:db8:7::1", dst="2001:db8::2") / UDP(dport=5000) / b"n",
                IP(src="10.0.0.1", dst="10.9.9.9") / UDP(dport=53) / b"clear"):
            frames.append(bytes(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")
                                / packet))
    frames.insert(3, b"\x02\x00")  # shorter than an Ethernet header
    frames.insert(9, bytes(Ether() / IP(src="10.0.0.1") / TCP(dataofs=15)))  # bad TCP
    return frames


@pytest.fixture
def sa_file(tmp_path):
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(SAS))
    return path


def write_plain(path, frames, linktype=LINKTYPE_ETHERNET, nanosecond=False):
    write_pcap(path, linktype, frames, [T0 + i * 1001 for i in range(len(frames))],
               nanosecond=nanosecond)
    return path


# the same traffic through AH and AH + ESP SAs (RFC 4302), LSO and an ESN crossing included
SAS_AH = [
    {"name": "ah4", "selector": {"src": "10.0.0.0/8", "proto": "tcp"}, "protocol": "ah",
     "spi": "0x3001", "integrity": "hmac-sha256-128", "auth_key": "33" * 32},
    {"name": "bundle6in4", "selector": {"src": "2001:db8:1::/48"}, "protocol": "ah+esp",
     "mode": "tunnel", "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"}, "spi": "0x3002",
     "encryption": "aes-gcm-128", "key": "66" * 20,
     "ah": {"spi": "0x3003", "integrity": "aes-gmac-128", "auth_key": "44" * 20}},
    {"name": "esn", "selector": {"src": "172.20.0.0/16"}, "protocol": "ah+esp",
     "spi": "0x3004", "encryption": "aes-gcm-128", "key": "11" * 20, "esn": True,
     "seq": 2**32 - 5, "ah": {"spi": "0x3005", "integrity": "hmac-sha1-96",
                               "auth_key": "55" * 20}},
    {"name": "ah6", "selector": {"proto": "udp", "dport": 5000}, "protocol": "ah",
     "spi": "0x3006", "integrity": "aes-gmac-256", "auth_key": "22" * 36},
]


@pytest.mark.parametrize("mss", [None, 1000])
@pytest.mark.parametrize("batch", [7, 4096])
@pytest.mark.parametrize("sa_set", ["esp", "ah"])
def test_capture_compiled_equals_the_python_twin(tmp_path, sa_file, mss, batch, sa_set):
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames())
    if sa_set == "ah":
        sa_file = tmp_path / "sa_ah.json"
        sa_file.write_text(json.dumps(SAS_AH))
    policies = load_sa_file(sa_file)
    fast = encrypt_capture(plain, tmp_path / "fast.pcap", policies, mss=mss, batch_size=batch)
    slow = encrypt_capture_python(plain, tmp_path / "slow.pcap", policies, mss=mss)
    assert (tmp_path / "fast.pcap").read_bytes() == (tmp_path / "slow.pcap").read_bytes()
    a, b = fast.as_dict(), slow.as_dict()
    for d in (a, b):
        d.pop("seconds"), d.pop("packets_per_second"), d.pop("output")
    assert a == b
    assert a["sas"]["esn"]["status"] == {"SUCCESS": 40}


@pytest.mark.parametrize("batch", [7, 4096])
def test_many_esn_sas_crossing_2_32_in_one_batch_equal_the_twin(tmp_path, batch):
    """60 ESN SAs, most of them crossing 2**32 inside a batch (the vectorized high-word check
    of frame_and_send decides which need UPDATE_SA), a clear packet and a malformed one among
    them: the compiled capture equals the record-by-record twin byte for byte and in its
    summary, and decrypt gives every packet back."""
    from ipsecoffload.io.decrypt import decrypt_capture
    from ipsecoffload.io.safile import parse_sa_list
    n_sa = 60
    sas = [{"name": f"sa{k}", "spi": 0x5000 + k, "encryption": "aes-gcm-128",
            "key": bytes([k + 1]) * 20, "esn": True, "seq": 2**32 - 1 - (k % 4),
            "selector": {"dst": f"10.7.{k // 200}.{k % 200 + 1}/32"}}
           for k in range(n_sa)]
    policies = parse_sa_list(json.loads(json.dumps(sas, default=lambda b: b.hex())))
    frames = []
    for i in range(5 * n_sa):
        k = (i * 7) % n_sa
        frames.append(bytes(IP(src="10.0.0.1", dst=f"10.7.{k // 200}.{k % 200 + 1}", id=i)
                            / UDP(sport=1000 + i) / (bytes([i % 251]) * (i % 90))))
    frames.insert(17, bytes(IP(src="10.0.0.1", dst="192.0.2.99") / UDP() / b"clear"))
    frames.insert(40, b"\x45\x00")
    plain = write_plain(tmp_path / "plain.pcap", frames, linktype=LINKTYPE_RAW)
    fast = encrypt_capture(plain, tmp_path / "fast.pcap", policies, batch_size=batch)
    slow = encrypt_capture_python(plain, tmp_path / "slow.pcap", policies)
    assert (tmp_path / "fast.pcap").read_bytes() == (tmp_path / "slow.pcap").read_bytes()
    a, b = fast.as_dict(), slow.as_dict()
    for d in (a, b):
        d.pop("seconds"), d.pop("packets_per_second"), d.pop("output")
    assert a == b
    assert all(fast.sas[f"sa{k}"].packets == 5 for k in range(n_sa))
    assert fast.next_seq == slow.next_seq == {f"sa{k}": 2**32 + 4 - (k % 4) for k in range(n_sa)}
    opened = decrypt_capture(tmp_path / "fast.pcap", tmp_path / "open.pcap", policies,
                             batch_size=batch)
    assert opened.packets_out == len(frames) - 1  # the malformed one has no SA to open it
    assert all(opened.sas[f"sa{k}"].crypto_status == {"SUCCESS": 5} for k in range(n_sa))
    _, back = read_pcap(tmp_path / "open.pcap")
    assert [r.data for r in back] == [f for i, f in enumerate(frames) if i != 40]


def test_capture_summary_counts_failed_sends_as_the_twin_does(tmp_path, sa_file):
    """A NIC that fails some sends (an output cap under some frames: NDIS_STATUS_RESOURCES,
    docs/send-path.md "Limits"): the compiled summary (capture_account, then its numpy count
    of the rare rows) names every status, refusal and malformed packet as the
    record-by-record twin does."""
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames())
    policies = load_sa_file(sa_file)
    dicts = []
    for run, name in ((encrypt_capture, "fast"), (encrypt_capture_python, "slow")):
        miniport = Miniport()
        miniport.max_send_output = 200
        summary = run(plain, tmp_path / f"{name}.pcap", policies, miniport=miniport)
        d = summary.as_dict()
        d.pop("seconds"), d.pop("packets_per_second"), d.pop("output")
        dicts.append(d)
    assert dicts[0] == dicts[1]
    statuses = {k for sa in dicts[0]["sas"].values() for k in sa["status"]}
    assert "RESOURCES" in statuses and "SUCCESS" in statuses, statuses
    assert dicts[0]["malformed"]["total"] > 0


def test_bulk_reader_equals_the_record_reader(tmp_path):
    rng = random.Random(5)
    frames = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 2000)))
              for _ in range(300)]
    for order in ("<", ">"):
        for ns in (False, True):
            path = tmp_path / f"x{order == '<'}{ns}.pcap"
            write_plain(path, frames, LINKTYPE_RAW, nanosecond=ns)
            if order == ">":  # the same records big-endian
                data = path.read_bytes()
                out = [struct.pack(">IHHiIII", *struct.unpack("<IHHiIII", data[:24]))]
                pos = 24
                while pos < len(data):
                    head = struct.unpack("<IIII", data[pos:pos + 16])
                    out += [struct.pack(">IIII", *head), data[pos + 16:pos + 16 + head[2]]]
                    pos += 16 + head[2]
                path.write_bytes(b"".join(out))
            with PcapReader(path) as twin:
                want = [(r.ts_ns, r.data) for r in twin]
            with BulkReader(path, chunk=4096) as reader:
                got = [(int(b.pkts["ts_ns"][i]), b.record(i))
                       for b in reader.batches(64) for i in range(len(b))]
            assert got == want


def pcapng_input(path, frames_by_iface):
    """Two sections' worth of interfaces: Ethernet (microseconds) and raw IP (nanoseconds),
    EPBs interleaved, an SPB, and a block to skip (a Name Resolution Block)."""
    out = [shb_bytes(), idb_bytes(LINKTYPE_ETHERNET, 0, 6), idb_bytes(LINKTYPE_RAW, 0, 9)]
    nrb = struct.pack("<II", 4, 16) + struct.pack("<HH", 0, 0) + struct.pack("<I", 16)
    out.append(nrb)
    ts = []
    for k, (iface, frame) in enumerate(frames_by_iface):
        t = T0 + k * 1_000_003
        units = t // 1000 if iface == 0 else t
        ts.append((t // 1000) * 1000 if iface == 0 else t)
        padded = frame + bytes(-len(frame) % 4)
        total = 32 + len(padded)
        out.append(struct.pack("<IIIIIII", 6, total, iface, units >> 32, units & 0xFFFFFFFF,
                               len(frame), len(frame)) + padded + struct.pack("<I", total))
    path.write_bytes(b"".join(out))
    return ts


@pytest.mark.parametrize("out_format", [None, "pcap"])
def test_pcapng_multi_interface_nanoseconds(tmp_path, sa_file, out_format):
    eth = Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")
    pkts = [(0, bytes(eth / IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A") / b"a")),
            (1, bytes(IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A") / b"b")),
            (1, bytes(IP(src="192.0.2.7", dst="10.9.9.9") / UDP() / b"c")),
            (0, bytes(eth / IPv6(src="2001:db8:1::1", dst="2001:db8::2") / UDP() / b"d"))]
    plain = tmp_path / "in.pcapng"
    ts = pcapng_input(plain, pkts)
    out = tmp_path / "out.any"
    code = main(["encrypt", "-q", "-i", str(plain), "-o", str(out), "--sa", str(sa_file),
                 "--json"] + (["--format", out_format] if out_format else []))
    if out_format == "pcap":  # two link types cannot share one pcap file
        assert code == 2 and not out.exists()
        return
    assert code == 0
    records = rdpcap(str(out))  # scapy reads the pcapng we wrote
    assert len(records) == 4
    assert [int(r.time * 10**9) // 1000 for r in records] == [t // 1000 for t in ts]
    assert ESP in records[0][Ether] and ESP in records[1] and bytes(records[2]) == pkts[2][1]
    assert ESP in records[3]
    if shutil.which("tshark"):
        done = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e",
                               "frame.interface_id", "-e", "frame.protocols",
                               "-e", "frame.time_epoch"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = [line.split("\t") for line in done.stdout.splitlines()]
        assert [line[0] for line in lines] == ["0", "1", "1", "0"]
        assert "esp" in lines[0][1] and "esp" in lines[1][1]
        # nanoseconds kept on the raw-IP interface
        assert lines[1][2].replace(".", "").lstrip("0").startswith(str(ts[1]).rstrip("0")[:18])


def test_pcap_to_pcapng_and_back_agrees_with_editcap(tmp_path, sa_file):
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames(), nanosecond=True)
    assert main(["encrypt", "-q", "-i", str(plain), "-o", str(tmp_path / "a.pcap"), "--sa",
                 str(sa_file)]) == 0
    assert main(["encrypt", "-q", "-i", str(plain), "-o", str(tmp_path / "b.pcapng"), "--sa",
                 str(sa_file), "--format", "pcapng"]) == 0
    _, a = read_pcap(tmp_path / "a.pcap")
    b = rdpcap(str(tmp_path / "b.pcapng"))
    assert [r.data for r in a] == [bytes(p) for p in b]
    with BulkReader(tmp_path / "b.pcapng") as reader:
        got = [(int(x.pkts["ts_ns"][i]), x.record(i)) for x in reader.batches(100)
               for i in range(len(x))]
    assert got == [(r.ts_ns, r.data) for r in a]
    if shutil.which("editcap"):
        subprocess.run(["editcap", "-F", "pcap", "--capture-comment", "", str(tmp_path / "b.pcapng"),
                        str(tmp_path / "c.pcap")], check=False, capture_output=True, timeout=60)
        if not (tmp_path / "c.pcap").exists():
            subprocess.run(["editcap", "-F", "pcap", str(tmp_path / "b.pcapng"),
                            str(tmp_path / "c.pcap")], check=True, capture_output=True,
                           timeout=60)
        with PcapReader(tmp_path / "c.pcap") as reader:
            assert [r.data for r in reader] == [r.data for r in a]


def test_vlan_tagged_traffic_is_protected(tmp_path, sa_file):
    inner = IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A") / b"secret payload"
    frames = [bytes(Ether() / Dot1Q(vlan=7) / inner),
              bytes(Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=9) / inner)]
    plain = write_plain(tmp_path / "plain.pcap", frames)
    assert main(["encrypt", "-q", "-i", str(plain), "-o", str(tmp_path / "esp.pcap"), "--sa",
                 str(sa_file)]) == 0
    _, out = read_pcap(tmp_path / "esp.pcap")
    for frame, record in zip(frames, out):
        assert b"secret payload" not in record.data
        assert record.data[:16] == frame[:16]  # MACs and the first tag kept
        packet = Ether(record.data)
        assert Dot1Q in packet and ESP in packet
    sa = load_sa_file(sa_file)[0].config
    from scapy.layers.ipsec import SecurityAssociation
    scapy_sa = SecurityAssociation(ESP, spi=sa.spi, crypt_algo="AES-GCM", crypt_key=sa.key,
                                   crypt_icv_size=16)
    assert bytes(scapy_sa.decrypt(Ether(out[0].data)[IP])) == bytes(inner)


def run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ipsecoffload", *map(str, args)], env=env,
                          capture_output=True, timeout=120, **kw)


def test_stdin_to_stdout_round_trip(tmp_path, sa_file):
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames())
    assert main(["encrypt", "-q", "-i", str(plain), "-o", str(tmp_path / "file.pcap"), "--sa",
                 str(sa_file)]) == 0
    done = run(["encrypt", "-i", "-", "-o", "-", "--sa", sa_file, "--json"],
               input=plain.read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tmp_path / "file.pcap").read_bytes()
    summary = json.loads(done.stderr.decode().strip().splitlines()[-1])
    assert summary["version"] == ipsecoffload.__version__ and summary["packets_in"] == 202


def test_count_stops_after_n_packets(tmp_path, sa_file, capsys):
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames())
    assert main(["encrypt", "-q", "-c", "10", "-i", str(plain), "-o", str(tmp_path / "o.pcap"),
                 "--sa", str(sa_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["packets_in"] == 10


def test_failures_leave_the_destination_untouched(tmp_path, sa_file, capsys):
    frames = mixed_frames()
    plain = write_plain(tmp_path / "plain.pcap", frames)
    data = bytearray(plain.read_bytes())
    # record 50 claims more bytes than the snap length: a corrupt capture, after good batches
    pos = 24
    for _ in range(50):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    struct.pack_into("<I", data, pos + 8, 10**7)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    dest = tmp_path / "dest.pcap"
    dest.write_bytes(b"precious")
    code = main(["encrypt", "-q", "--batch", "8", "-i", str(bad), "-o", str(dest), "--sa",
                 str(sa_file)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and "corrupt" in err
    assert dest.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pcap", "dest.pcap", "plain.pcap",
                                                          "sa.json"]
    # the SA file is never an output
    code = main(["encrypt", "-q", "-i", str(plain), "-o", str(sa_file), "--sa", str(sa_file)])
    assert code == 2 and "SA file" in capsys.readouterr().err
    assert json.loads(sa_file.read_text()) == SAS


def test_python_twin_counts_and_never_removes_the_destination(tmp_path, sa_file):
    """The record-by-record path (pure-Python mode, via SAs) stops after ``count`` packets,
    and a failure leaves the destination as it was (io/atomic.py), no file of its own left."""
    frames = mixed_frames()
    plain = write_plain(tmp_path / "plain.pcap", frames)
    policies = load_sa_file(sa_file)
    summary = encrypt_capture_python(plain, tmp_path / "five.pcap", policies, count=5)
    # the fourth record is two bytes, no link header: dropped and counted
    assert summary.packets_in == 5 and len(read_pcap(tmp_path / "five.pcap")[1]) == 4
    dest = tmp_path / "dest.pcap"
    dest.write_bytes(b"precious")

    def interrupt(packets):  # as a SIGINT after the first batch would
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encrypt_capture_python(plain, dest, policies, batch_size=8, progress=interrupt)
    assert dest.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.pcap", "five.pcap",
                                                          "plain.pcap", "sa.json"]
    with pytest.raises(Exception, match="SA file"):
        encrypt_capture_python(plain, sa_file, policies, protect=[(sa_file, "SA file")])
    assert json.loads(sa_file.read_text()) == SAS


def test_interrupted_run_leaves_the_destination_untouched(tmp_path, sa_file):
    big = [bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A") / (b"x" * 1400))
           ] * 20000
    plain = write_plain(tmp_path / "plain.pcap", big)
    dest = tmp_path / "dest.pcap"
    dest.write_bytes(b"precious")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    # reading from a FIFO fed slowly: the run is under way when SIGTERM comes
    proc = subprocess.Popen([sys.executable, "-m", "ipsecoffload", "encrypt", "-q", "-i",
                             str(fifo), "-o", str(dest), "--sa", str(sa_file), "--batch", "64"],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    with open(fifo, "wb") as feed:
        feed.write(plain.read_bytes()[:2_000_000])
        feed.flush()
        import time
        for _ in range(100):
            if any(p.name.startswith(".dest.pcap.") for p in tmp_path.iterdir()):
                break
            time.sleep(0.05)
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode != 0
    assert dest.read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest.pcap.")]


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_one_worker_output(tmp_path, sa_file, workers):
    """Shards by SA sent at once: the same bytes and the same summary as one worker (every SA
    here has deterministic IVs), ESN crossings and LSO included."""
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames())
    policies = load_sa_file(sa_file)
    one = encrypt_capture(plain, tmp_path / "one.pcap", policies, mss=1000, batch_size=16)
    many = encrypt_capture(plain, tmp_path / "many.pcap", policies, mss=1000, batch_size=16,
                           workers=workers)
    assert (tmp_path / "one.pcap").read_bytes() == (tmp_path / "many.pcap").read_bytes()
    a, b = one.as_dict(), many.as_dict()
    for d in (a, b):
        d.pop("seconds"), d.pop("packets_per_second"), d.pop("output")
    assert a == b


def test_json_errors_are_objects_on_stdout(tmp_path, sa_file, capsys):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    code = main(["encrypt", "-i", str(bad), "-o", str(tmp_path / "o.pcap"), "--sa",
                 str(sa_file), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bad.pcap" in json.loads(out)["error"]


def test_mutated_captures_fail_cleanly_or_encrypt(tmp_path, sa_file):
    """Random byte flips and cuts of a pcap and a pcapng capture: the run encrypts what it can
    or stops with PcapError; nothing else escapes and the destination is left as it was."""
    from ipsecoffload.io.pcap import PcapError
    rng = random.Random(11)
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames()[:60])
    assert main(["encrypt", "-q", "-i", str(plain), "-o", str(tmp_path / "ng.pcapng"), "--sa",
                 str(sa_file), "--format", "pcapng"]) == 0
    policies = load_sa_file(sa_file)
    dest = tmp_path / "dest"
    for source in (plain, tmp_path / "ng.pcapng"):
        data = source.read_bytes()
        for trial in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randrange(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            if trial % 3 == 0:
                mutated = mutated[:rng.randrange(len(mutated))]
            bad = tmp_path / "bad"
            bad.write_bytes(bytes(mutated))
            dest.write_bytes(b"keep")
            try:
                encrypt_capture(bad, dest, policies, mss=1000, batch_size=rng.choice([1, 7, 64]))
            except PcapError:
                assert dest.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "dest", "ng.pcapng",
                                                          "plain.pcap", "sa.json"]


def _pcapng_blocks(order, blocks):
    """A pcapng section in byte order ``order``: SHB then (type, body) blocks."""
    def block(btype, body):
        body += bytes(-len(body) % 4)
        total = 12 + len(body)
        return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)
    shb = block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    return shb + b"".join(block(t, b) for t, b in blocks)


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_byte_orders_simple_packets_and_skipped_blocks(tmp_path, order):
    packets = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / (b"x" * k)) for k in range(5)]
    idb = struct.pack(order + "HHI", LINKTYPE_RAW, 0, 0) + \
        struct.pack(order + "HHB3x", 9, 1, 0x80 | 20) + struct.pack(order + "HH", 0, 0)
    blocks = [(1, idb), (5, b"\0" * 12)]  # an Interface Statistics Block: skipped
    units = [3 << 20, (5 << 20) + (1 << 19)]  # 2**-20 s units: 3 s and 5.5 s
    for k, packet in enumerate(packets[:2]):
        blocks.append((6, struct.pack(order + "IIIII", 0, units[k] >> 32, units[k] & 0xFFFFFFFF,
                                      len(packet), len(packet)) + packet))
    for packet in packets[2:]:
        blocks.append((3, struct.pack(order + "I", len(packet)) + packet))
    # a second section starts over with its own interfaces
    data = _pcapng_blocks(order, blocks) + _pcapng_blocks(order, [(1, idb), (6, struct.pack(
        order + "IIIII", 0, 0, 1 << 20, len(packets[0]), len(packets[0])) + packets[0])])
    path = tmp_path / "in.pcapng"
    path.write_bytes(data)
    with BulkReader(path, chunk=256) as reader:
        got = [(int(b.pkts["ts_ns"][i]), int(b.pkts["iface"][i]), b.record(i))
               for b in reader.batches(2) for i in range(len(b))]
        assert len(reader.interfaces) == 2
    assert got == [(3 * 10**9, 0, packets[0]), (5_500_000_000, 0, packets[1])] + \
        [(0, 0, p) for p in packets[2:]] + [(10**9, 1, packets[0])]


def test_devices_are_streamed_and_never_removed(tmp_path, sa_file, capsys):
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames()[:20])
    assert main(["encrypt", "-q", "-i", str(plain), "-o", os.devnull, "--sa",
                 str(sa_file)]) == 0
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(plain.read_bytes()[:24] + struct.pack("<IIII", 0, 0, 10**8, 10**8))
    assert main(["encrypt", "-q", "-i", str(bad), "-o", os.devnull, "--sa", str(sa_file)]) == 2
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    assert not [p for p in Path(os.path.dirname(os.devnull)).glob(".null.*")]


def test_progress_shows_a_percentage_when_the_size_is_known(tmp_path, sa_file, monkeypatch):
    cli_main = sys.modules["ipsecoffload.cli.main"]
    seen = []

    class Recorder(cli_main._Progress):
        def __init__(self, label, stream=None, interval=0.1):
            super().__init__(label, stream, interval)
            self.enabled, self.interval = True, 0
            self.stream = type("S", (), {"write": seen.append, "flush": lambda s: None,
                                         "isatty": lambda s: True})()
    monkeypatch.setattr(cli_main, "_Progress", Recorder)
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames())
    assert main(["encrypt", "--batch", "50", "-i", str(plain), "-o", str(tmp_path / "o.pcap"),
                 "--sa", str(sa_file)]) == 0
    assert any("%" in text and "packets" in text and "/s" in text for text in seen)
    seen.clear()
    assert main(["encrypt", "-q", "--batch", "50", "-i", str(plain), "-o",
                 str(tmp_path / "o.pcap"), "--sa", str(sa_file)]) == 0
    assert not seen


@pytest.mark.parametrize("compiled", [True, False])
def test_host_stack_send_takes_scapy_packets(compiled):
    stack = HostStack(Miniport(), link="raw")
    stack.compiled_framing = compiled
    sa = stack.add_sa(SaConfig(spi=12, encryption="aes-gcm-128", key=GCM))
    packet = IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"scapy"
    result = stack.send([packet, bytes(packet)], sa)
    frames = result.wire.frames()
    assert len(frames) == 2 and ESP in IP(frames[0])
    assert frames[0][8:] != frames[1][8:] and len(frames[0]) == len(frames[1])


def test_background_writer_keeps_order_and_raises_the_threads_error(tmp_path):
    """BulkWriter(background=True): the same bytes as writing inline, buffers from
    emit_buffer reused only once their write is done, and an error of the writer thread
    raised by the next write or by close."""
    from ipsecoffload.io.bulk import BulkWriter
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames()[:20])
    chunks = [bytes([i]) * (1000 + 37 * i) for i in range(30)]
    outputs = []
    for background in (False, True):
        path = tmp_path / f"out{int(background)}.bin"
        with BulkReader(plain) as reader, open(path, "wb") as f:
            writer = BulkWriter(f, "pcap", reader, background=background)
            for chunk in chunks:
                buf = writer.emit_buffer(len(chunk))
                buf[:len(chunk)] = np.frombuffer(chunk, np.uint8)
                writer.write(buf.data[:len(chunk)])
            writer.close()
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[1][24:] == b"".join(chunks)

    class Failing:
        def __init__(self):
            self.calls = 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                raise OSError(28, "No space left on device")
            return len(data)

    with BulkReader(plain) as reader:
        writer = BulkWriter(Failing(), "pcap", reader, background=True)
        with pytest.raises(OSError, match="No space"):
            for chunk in chunks:
                writer.write(chunk)
            writer.close()
        writer.abandon()  # the error path: nothing left running
        assert writer._pool is None


def _pieces_bytes(pieces, n):
    import ctypes
    return b"".join(ctypes.string_at(int(pieces[2 * i]), int(pieces[2 * i + 1]))
                    for i in range(n))


@pytest.mark.parametrize("fmt", [0, 1, 2])
@pytest.mark.parametrize("sharded", [False, True])
def test_capture_pieces_equal_capture_emit(fmt, sharded):
    """capture_pieces (headers apart, frames where they lie) lays out the bytes capture_emit
    copies: pcap in micro- and nanoseconds, pcapng EPBs with their padding on two
    interfaces, empty frames, frames over the snap length, packets with several frames, none,
    or one; wire arenas joined or a list of shards; the same per-packet counts."""
    from ipsecoffload.datapath.layout import WIRE_FRAME_DTYPE
    rng = random.Random(fmt * 2 + sharded)
    n = 60
    pkts = np.zeros(n, tx_frame.HOST_PKT_DTYPE)
    pkts["kind"] = tx_frame.PKT_ESP
    pkts["ts_ns"] = [T0 + rng.randrange(10**12) for _ in range(n)]
    pkts["iface"] = [rng.randrange(2) for _ in range(n)]
    rows, nbl = [], 0
    for i in range(n):
        frames = rng.choice([0, 1, 1, 1, 3])
        pkts["nbl"][i] = nbl if frames else -1
        for _ in range(frames):
            rows.append((nbl, rng.choice([0, 1, 5, 63, 64, 65, 1400, 1500, 3000])))
        nbl += 1 if frames else 0
    table = np.zeros(len(rows), WIRE_FRAME_DTYPE)
    table["nbl"] = [r[0] for r in rows]
    table["len"] = [r[1] for r in rows]
    table["off"] = np.concatenate([[0], np.cumsum(table["len"])[:-1]])
    total = int(table["len"].sum())
    joined = np.frombuffer(bytes(rng.getrandbits(8) for _ in range(total)), np.uint8).copy()
    cut = int(table["off"][len(rows) // 2])
    wire = [joined[:cut].copy(), joined[cut:].copy()] if sharded else joined
    unit_ns = np.array([1000, 1], np.int64)
    snaplen = 1450
    out = np.zeros(total + 36 * (len(rows) + n) + 64, np.uint8)
    f1, b1 = np.zeros(n, np.int64), np.zeros(n, np.int64)
    used = fp.capture_emit(fmt, out, pkts.view(np.uint8), 0, n, np.zeros(1, np.uint8), wire,
                           table.view(np.uint8), len(rows), snaplen, unit_ns, f1, b1)
    heads = np.zeros(35 * len(rows) + 4, np.uint8)
    pieces = np.zeros(2 * (2 * len(rows) + 1), np.uint64)
    f2, b2 = np.zeros(n, np.int64), np.zeros(n, np.int64)
    count, nbytes = fp.capture_pieces(fmt, heads, pieces, pkts.view(np.uint8), 0, n, wire,
                                      table.view(np.uint8), len(rows), snaplen, unit_ns, f2,
                                      b2)
    assert nbytes == used and _pieces_bytes(pieces, count) == out[:used].tobytes()
    assert (f1 == f2).all() and (b1 == b2).all()
    assert all(pieces[2 * i + 1] for i in range(count))  # no empty piece


def test_capture_pieces_and_write_pieces_refuse_bad_input(tmp_path):
    from ipsecoffload.datapath.layout import WIRE_FRAME_DTYPE
    pkts = np.zeros(2, tx_frame.HOST_PKT_DTYPE)
    pkts["kind"], pkts["nbl"] = tx_frame.PKT_ESP, [0, 1]
    table = np.zeros(2, WIRE_FRAME_DTYPE)
    table["nbl"], table["len"], table["off"] = [0, 1], [10, 10], [0, 10]
    wire = np.zeros(20, np.uint8)
    counts = np.zeros(2, np.int64), np.zeros(2, np.int64)
    units = np.array([1000], np.int64)

    def pieces_of(p=pkts, t=table, w=wire, heads=74, pairs=5, dtype=np.uint64):
        return fp.capture_pieces(0, np.zeros(heads, np.uint8), np.zeros(2 * pairs, dtype),
                                 p.view(np.uint8), 0, 2, w, t.view(np.uint8), 2, 1500, units,
                                 *counts)
    assert pieces_of()[1] == 2 * 16 + 20
    with pytest.raises(ValueError, match="too small"):
        pieces_of(heads=40)
    with pytest.raises(ValueError, match="too small"):
        pieces_of(pairs=4)
    with pytest.raises(TypeError, match="uint64"):
        pieces_of(dtype=np.int64)
    with pytest.raises(ValueError, match="outside the wire arena"):
        pieces_of(w=wire[:15])
    not_ip = pkts.copy()
    not_ip["kind"][1] = tx_frame.PKT_NOT_IP  # a record of the input arena: never referenced
    with pytest.raises(ValueError, match="input arena"):
        pieces_of(p=not_ip)
    read_fd, write_fd = os.pipe()
    try:
        good = np.array([wire.ctypes.data, 4], np.uint64)
        with pytest.raises(ValueError, match="pieces asked"):
            fp.write_pieces(write_fd, good, 2)
        with pytest.raises(ValueError, match="empty"):
            fp.write_pieces(write_fd, np.array([wire.ctypes.data, 0], np.uint64), 1)
        with pytest.raises(TypeError, match="uint64"):
            fp.write_pieces(write_fd, good.astype(np.int64), 1)
        assert fp.write_pieces(write_fd, good, 0) == 0
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert fp.write_pieces(write_fd, good, 1) != 0  # EBADF, as an errno, not a crash


def test_write_pieces_writes_every_piece_in_order_through_a_pipe():
    """More pieces than one writev takes, and more bytes than a pipe holds: a reader thread
    drains the pipe while write_pieces blocks; the bytes arrive whole and in order."""
    import threading
    rng = random.Random(5)
    blobs = [np.frombuffer(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 700))),
                           np.uint8).copy() for _ in range(700)]
    pieces = np.array([v for b in blobs for v in (b.ctypes.data, len(b))], np.uint64)
    read_fd, write_fd = os.pipe()
    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(read_fd, 5000),
                                                               b"")))
    reader.start()
    try:
        assert fp.write_pieces(write_fd, pieces, len(blobs)) == 0
    finally:
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    assert b"".join(got) == b"".join(b.tobytes() for b in blobs)


@pytest.fixture
def write_pieces_calls(monkeypatch):
    """The piece count of every BulkWriter.write_pieces call made in the test, in order."""
    from ipsecoffload.io.bulk import BulkWriter
    calls: list = []
    real = BulkWriter.write_pieces
    monkeypatch.setattr(BulkWriter, "write_pieces",
                        lambda self, *a: (calls.append(a[1]), real(self, *a))[1])
    return calls


@pytest.mark.parametrize("out_format", ["pcap", "pcapng"])
@pytest.mark.parametrize("mss", [None, 1000])
def test_frames_written_in_place_equal_the_copied_output(tmp_path, sa_file, monkeypatch,
                                                         write_pieces_calls, out_format, mss):
    """encrypt's output written from the wire arenas (write_pieces) is byte for byte the
    output copied into emit buffers first (capture_emit), nanosecond input and Ethernet
    included; a batch with a not-IP record keeps the copy."""
    from ipsecoffload.io import capture
    frames = [bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A", seq=i)
                    / (bytes([i]) * (300 + 61 * i))) for i in range(90)]
    frames.insert(50, bytes(Ether(type=0x0806) / (b"arp" * 20)))  # not IP: copied as read
    plain = write_plain(tmp_path / "plain.pcap", frames, nanosecond=True)
    policies = load_sa_file(sa_file)
    outputs = []
    for minimum in (0, 10**9):
        monkeypatch.setattr(capture, "PIECES_MIN_FRAME", minimum)
        out = tmp_path / f"out{minimum}.{out_format}"
        summary = encrypt_capture(plain, out, policies, mss=mss, batch_size=32,
                                  output_format=out_format)
        outputs.append((out.read_bytes(), summary.frames_out, summary.bytes_out))
        if minimum:
            assert not write_pieces_calls
        else:  # every batch but the one with the ARP record
            assert len(write_pieces_calls) >= 2
            write_pieces_calls.clear()
    assert outputs[0] == outputs[1]
    assert len(rdpcap(str(tmp_path / f"out0.{out_format}"))) == outputs[0][1]


@pytest.mark.parametrize("out_format", ["pcap", "pcapng"])
@pytest.mark.parametrize("keep_failed", [False, True])
def test_decrypted_frames_written_in_place_equal_the_copied_output(tmp_path, sa_file,
                                                                   monkeypatch,
                                                                   write_pieces_calls,
                                                                   out_format, keep_failed):
    """decrypt's output written from the delivered arena (write_pieces) is byte for byte the
    output copied into emit buffers first (capture_emit), pcap and pcapng, nanosecond input,
    and the same summary; a batch with a record written as read (not IP, clear, or a failure
    under --keep-failed) keeps the copy; the decrypted packets are the plaintext."""
    from ipsecoffload.io import decrypt
    frames = [bytes(Ether() / IP(src="10.0.0.1", dst="10.9.9.9") / TCP(flags="A", seq=i)
                    / (bytes([i]) * (300 + 61 * i))) for i in range(90)]
    plain = write_plain(tmp_path / "plain.pcap", frames, nanosecond=True)
    policies = load_sa_file(sa_file)
    esp = tmp_path / "esp.pcap"
    encrypt_capture(plain, esp, policies)
    records = [record.data for record in read_pcap(esp)[1]]
    # a record that is not IP, and one whose ICV fails, among the ESP records
    records.insert(40, bytes(Ether(type=0x0806) / (b"arp" * 20)))
    bad = bytearray(records[70])
    bad[-1] ^= 1
    records[70] = bytes(bad)
    mixed = write_plain(tmp_path / "mixed.pcap", records, nanosecond=True)
    outputs = []
    for minimum in (0, 10**9):
        monkeypatch.setattr(decrypt, "PIECES_MIN_FRAME", minimum)
        out = tmp_path / f"out{minimum}.{out_format}"
        summary = decrypt.decrypt_capture(mixed, out, policies, batch_size=16,
                                          keep_failed=keep_failed, output_format=out_format)
        outputs.append((out.read_bytes(), summary.packets_out, summary.as_dict()))
        if minimum:
            assert not write_pieces_calls
        else:  # the batches without the ARP record (and, kept, the failed one)
            assert len(write_pieces_calls) >= 3
            write_pieces_calls.clear()
    assert outputs[0] == outputs[1]
    got = [bytes(p) for p in rdpcap(str(tmp_path / f"out0.{out_format}"))]
    # the ARP record as read; the failed one as read under keep_failed, else dropped
    want = frames[:40] + [records[40]] + frames[40:69] + \
        ([records[70]] if keep_failed else []) + frames[70:]
    assert got == want and outputs[0][1] == len(want)


def test_reserved_blocks_are_released_at_commit_and_never_change_the_bytes(tmp_path):
    """SafeOutput.reserve allocates the temporary file's blocks ahead of the writes
    (io/atomic.py); the committed file holds exactly what was written, the reserve past its
    end released; an aborted output leaves the destination as it was; a pipe refuses."""
    from ipsecoffload.io.atomic import SafeOutput
    from ipsecoffload.io.bulk import BulkWriter
    fp = tx_frame.kernels()
    if fp is None:
        pytest.skip("needs the compiled kernels")
    plain = write_plain(tmp_path / "plain.pcap", mixed_frames()[:20])
    dest = tmp_path / "out.pcap"
    dest.write_bytes(b"previous run")
    chunks = [bytes([i]) * (200_000 + 37 * i) for i in range(12)]
    with BulkReader(plain) as reader, SafeOutput(dest) as out:
        writer = BulkWriter(out.file, "pcap", reader, background=True, reserve=out.reserve)
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
        # -1: a filesystem without fallocate(2), where nothing is reserved
        assert out._reserved >= writer.bytes_written or out._reserved == -1
    data = dest.read_bytes()
    assert data[24:] == b"".join(chunks) and len(data) == 24 + writer.bytes_written
    # st_blocks counts 512-byte units: at most a little over the file's own size is left
    assert os.stat(dest).st_blocks * 512 < len(data) + (1 << 20)
    with pytest.raises(RuntimeError):
        with SafeOutput(dest) as out:
            out.reserve(64 << 20)
            out.file.write(b"half")
            raise RuntimeError("interrupted")
    assert dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pcap", "plain.pcap"]
    read_fd, write_fd = os.pipe()
    try:
        with open(write_fd, "wb", closefd=False) as pipe_file:
            assert fp.reserve_blocks(pipe_file.fileno(), 0, 4096) != 0
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_ah_alone_far_in_the_ipv6_headers_is_framed_as_the_python_framer_does():
    """An AH alone only needs AhHeaderOffset to fit (4-byte units, 8 bits): AH at 1016 bytes
    into the IPv6 headers is framed, though ESP could not start past it."""
    from scapy.layers.inet6 import PadN
    pads = [PadN(optdata=b"\0" * 253)] * 3 + [PadN(optdata=b"\0" * 207)]
    hbh = IPv6ExtHdrHopByHop(options=pads)  # 976 bytes: UDP at 1016
    packet = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / hbh / UDP() / (b"x" * 8))
    stacks = [HostStack(Miniport(), link="raw") for _ in range(2)]
    stacks[1].compiled_framing = False
    config = dict(protocol="ah", integrity="hmac-sha256-128", auth_key=bytes(32))
    sas = [s.add_sa(SaConfig(spi=0x77, **config)) for s in stacks]
    with compiled_framing_calls() as calls:
        fast, slow = (s.build([packet], sa) for s, sa in zip(stacks, sas))
    assert calls == [True]
    assert fast.frames() == slow.frames() and fast.oob.tobytes() == slow.oob.tobytes()
    assert int(fast.oob["ah_off4"][0]) * 4 == 1016
