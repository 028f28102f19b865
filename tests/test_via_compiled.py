"""Transport over tunnel (``via`` SAs) in the compiled host framer (host/tx_frame.pxi
_frame_via): ``encrypt`` of captures through every layer form (ESP with AES-GCM or AES-CBC +
HMAC, AH, AH + ESP, on either layer; UDP encapsulation on the tunnel or on the transport
layer), IPv4 and IPv6 inside and outside, tunnel SAs' own packets and clear packets between,
ESN crossings and exhausted counters on either layer, packets too long for the outer header,
equals the record-by-record twin (encrypt_capture_python, host/stack.py's Python framer) byte
for byte and in its summary, and ``decrypt`` gives every protected packet back."""
from __future__ import annotations

import itertools
import json
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting)
from scapy.layers.l2 import Dot1Q, Ether

from ipsecoffload.control.miniport import Miniport
from ipsecoffload.io.capture import encrypt_capture, encrypt_capture_python
from ipsecoffload.io.decrypt import decrypt_capture
from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, read_pcap, write_pcap
from ipsecoffload.io.safile import parse_sa_list

from test_e2e import compiled_framing_calls  # the spy on tx_frame.stack_send

T0 = 1_700_000_000 * 10**9

LAYERS = {
    "gcm": {"protocol": "esp", "encryption": "aes-gcm-128", "key": "21" * 20},
    "cbc": {"protocol": "esp", "encryption": "aes-cbc-128", "key": "31" * 16,
            "integrity": "hmac-sha256-128", "auth_key": "41" * 32},
    "ah": {"protocol": "ah", "integrity": "hmac-sha1-96", "auth_key": "51" * 20},
    "ah+esp": {"protocol": "ah+esp", "encryption": "aes-gcm-256", "key": "61" * 36,
               "ah": {"spi": "0x7777", "integrity": "aes-gmac-128", "auth_key": "71" * 20}},
}
TUNNEL4 = {"src": "192.0.2.1", "dst": "192.0.2.2"}
TUNNEL6 = {"src": "2001:db8:ffff::1", "dst": "2001:db8:ffff::2"}


def _sas(inner: str, outer: str, *, udp: str = "", outer_v6: bool = False,
         inner_extra=None, outer_extra=None) -> list:
    transport = dict(LAYERS[inner], name="inner", mode="transport", via="site", spi="0x5002",
                     selector={"dst": "10.9.1.0/24"})
    transport6 = dict(LAYERS[inner], name="inner6", mode="transport", via="site",
                      spi="0x5003", selector={"dst": "2001:db8:9:1::/64"})
    tunnel = dict(LAYERS[outer], name="site", mode="tunnel", spi="0x5001",
                  tunnel=TUNNEL6 if outer_v6 else TUNNEL4, selector={"dst": "10.9.0.0/16"})
    if outer == "ah+esp":
        tunnel["ah"] = dict(tunnel["ah"], spi="0x7778")
    if udp == "tunnel":
        tunnel["udp_encap"] = {"sport": 4500, "dport": 4500}
    elif udp == "transport":
        transport["udp_encap"] = {"sport": 4501, "dport": 4500}
    transport.update(inner_extra or {})
    transport6.update(inner_extra or {})
    tunnel.update(outer_extra or {})
    # the transport SAs' narrower selectors first (first match)
    return [transport, transport6, tunnel]


def _packets(n: int = 36) -> list:
    """To the transport SA (IPv4), to its IPv6 twin, to the tunnel SA alone, and clear; UDP
    and TCP, sizes from 0 to a few hundred payload bytes."""
    out = []
    for i in range(n):
        payload = bytes([i % 251]) * (i * 13 % 300)
        kind = i % 4
        if kind == 0:
            p = IP(src="10.8.0.1", dst="10.9.1.5", id=i, flags="DF" if i % 8 else 0, tos=i & 3)
        elif kind == 1:
            p = IPv6(src="2001:db8:8::1", dst="2001:db8:9:1::5", fl=i, tc=i & 3)
        elif kind == 2:
            p = IP(src="10.8.0.1", dst="10.9.7.5", id=i)
        else:
            p = IP(src="10.8.0.1", dst="10.1.1.1", id=i)
        l4 = TCP(sport=1000 + i, dport=80, seq=i) if i % 3 == 0 else UDP(sport=1000 + i,
                                                                          dport=2000)
        out.append(bytes(p / l4 / payload))
    # IPv4 options and IPv6 extension headers (ESP goes after the hop-by-hop and routing
    # headers, before the destination options that follow a routing header)
    out.append(bytes(IP(src="10.8.0.1", dst="10.9.1.6", options=[IPOption_RR()]) / UDP()
                     / b"options"))
    out.append(bytes(IPv6(src="2001:db8:8::1", dst="2001:db8:9:1::6") / IPv6ExtHdrHopByHop()
                     / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP() / b"extension"))
    return out


def _miniport() -> Miniport:
    return Miniport(random_source=random.Random(7).randbytes)


def _run(tmp_path, sas: list, packets: list, *, ethernet: bool = False, batch: int = 4096,
         mss=None):
    policies = parse_sa_list(json.loads(json.dumps(sas)))
    plain = tmp_path / "plain.pcap"
    if ethernet:  # untagged and 802.1Q-tagged frames, each naming its IP version
        frames = []
        for i, p in enumerate(packets):
            et = 0x86DD if p[0] >> 4 == 6 else 0x0800
            link = Ether(type=et) if i % 2 == 0 else Ether() / Dot1Q(vlan=5, type=et)
            frames.append(bytes(link) + p)
        write_pcap(plain, LINKTYPE_ETHERNET, frames, [T0 + i * 1000 for i in range(len(frames))])
    else:
        write_pcap(plain, LINKTYPE_RAW, packets, [T0 + i * 1000 for i in range(len(packets))])
    # the CBC IVs the NIC draws: the same stream of random bytes for both, in frame order
    fast = encrypt_capture(plain, tmp_path / "fast.pcap", policies, batch_size=batch, mss=mss,
                           miniport=_miniport())
    slow = encrypt_capture_python(plain, tmp_path / "slow.pcap", policies, mss=mss,
                                  miniport=_miniport())
    assert (tmp_path / "fast.pcap").read_bytes() == (tmp_path / "slow.pcap").read_bytes()
    a, b = fast.as_dict(), slow.as_dict()
    for d in (a, b):
        for key in ("seconds", "packets_per_second", "output"):
            d.pop(key)
    assert a == b
    return policies, fast


def _opened(tmp_path, policies) -> list:
    opened = decrypt_capture(tmp_path / "fast.pcap", tmp_path / "open.pcap", policies)
    _, records = read_pcap(tmp_path / "open.pcap")
    return opened, [r.data for r in records]


FORMS = [(inner, outer, udp) for inner, outer in itertools.product(LAYERS, LAYERS)
         for udp in ("", "tunnel", "transport")
         # NDIS: no UDP encapsulation with AH; UDP on the transport layer needs its ESP
         if not (udp == "tunnel" and outer != "gcm" and outer != "cbc")
         and not (udp == "transport" and inner not in ("gcm", "cbc"))]


@pytest.mark.parametrize("inner,outer,udp", FORMS)
@pytest.mark.parametrize("outer_v6", [False, True], ids=["outer4", "outer6"])
def test_every_layer_form_equals_the_twin_and_decrypts(tmp_path, inner, outer, udp, outer_v6):
    packets = _packets()
    if udp == "transport":  # a UDP-encapsulated transport SA over a tunnel carries IPv4 only
        packets = [p for p in packets if p[0] >> 4 == 4]
    policies, summary = _run(tmp_path, _sas(inner, outer, udp=udp, outer_v6=outer_v6), packets)
    assert summary.sas["inner"].status == {"SUCCESS": sum(
        1 for p in packets if p[0] >> 4 == 4 and p[16:19] == bytes([10, 9, 1]))}
    opened, back = _opened(tmp_path, policies)
    assert back == packets
    # decrypt counts a nested packet under its innermost SA (docs/receive-path.md)
    counts = {"inner": sum(1 for p in packets if p[0] >> 4 == 4 and p[16:19] == b"\x0a\x09\x01"),
              "inner6": sum(1 for p in packets if p[0] >> 4 == 6),
              "site": sum(1 for p in packets if p[0] >> 4 == 4 and p[16:19] == b"\x0a\x09\x07")}
    for name, count in counts.items():
        assert opened.sas[name].crypto_status == ({"SUCCESS": count} if count else {}), name


@pytest.mark.parametrize("batch", [5, 4096])
def test_ethernet_vlan_and_small_batches_equal_the_twin(tmp_path, batch):
    policies, _ = _run(tmp_path, _sas("gcm", "ah+esp"), _packets(50), ethernet=True,
                       batch=batch)
    opened, back = _opened(tmp_path, policies)
    assert opened.packets_out == 52  # with the IPv4-options and IPv6-extension packets


@pytest.mark.parametrize("layer", ["inner", "outer", "both"])
@pytest.mark.parametrize("batch", [3, 4096])
def test_esn_crossing_on_either_layer_equals_the_twin(tmp_path, layer, batch):
    """Each layer's ESN high word moves inside the capture (UPDATE_SA between sends): the
    framer stops before the first packet of either SA in the new high word."""
    esn = {"esn": True, "seq": 2**32 - 3}
    sas = _sas("gcm", "cbc", inner_extra=esn if layer in ("inner", "both") else None,
               outer_extra=dict(esn, seq=2**32 - 6) if layer in ("outer", "both") else None)
    packets = _packets(40)
    policies, summary = _run(tmp_path, sas, packets, batch=batch)
    opened, back = _opened(tmp_path, policies)
    assert back == packets


def test_exhausted_counters_on_either_layer_drop_what_they_cannot_number(tmp_path):
    """Without ESN the last number is 2**32 - 1: the transport SA runs out after 2 packets,
    the tunnel SA (shared with its own packets) after 5; the rest of what needs them is
    dropped as exhausted, as the twin does."""
    sas = _sas("gcm", "gcm", inner_extra={"seq": 2**32 - 2},
               outer_extra={"seq": 2**32 - 5})
    packets = [p for p in _packets(40) if p[0] >> 4 == 4]
    policies, summary = _run(tmp_path, sas, packets)
    assert summary.sas["inner"].dropped.get("sequence numbers exhausted", 0) > 0
    assert summary.next_seq["site"] == 2**32


def test_packets_too_long_for_either_header_are_refused(tmp_path):
    """An inner datagram that fits 65535 bytes before the tunnel's headers but not after."""
    big = bytes(IP(src="10.8.0.1", dst="10.9.1.5") / UDP() / bytes(65535 - 28 - 60))
    small = bytes(IP(src="10.8.0.1", dst="10.9.1.5") / UDP() / b"x")
    _, summary = _run(tmp_path, _sas("gcm", "cbc"), [small, big, small])
    assert summary.sas["inner"].dropped == {"refused by the host stack": 1}


def test_via_packets_are_not_cut_with_mss(tmp_path):
    """--mss never cuts a packet that leaves in a tunnel (NDIS: no LSO with tunnel packets)."""
    big = bytes(IP(src="10.8.0.1", dst="10.9.1.5") / TCP(sport=5, dport=80) / bytes(3000))
    _, summary = _run(tmp_path, _sas("gcm", "gcm"), [big, big], mss=1000)
    assert summary.sas["inner"].lso_packets == 0 and summary.sas["inner"].frames_out == 2


@pytest.mark.parametrize("inner,outer,udp", FORMS)
@pytest.mark.parametrize("link", ["raw", "ethernet"])
def test_host_stack_send_of_a_via_sa_equals_the_python_framer(inner, outer, udp, link):
    """HostStack.build / send of a via SA in compiled code (tx_frame.stack_send with both
    rows) equals the Python framer (compiled_framing = False): frames, out-of-band info,
    both SAs' numbers and the IPv4 IDs, batch after batch; the tunnel SA's own packets take
    its numbers between."""
    from ipsecoffload import HostStack
    policies = parse_sa_list(json.loads(json.dumps(_sas(inner, outer, udp=udp))))
    stacks = [HostStack(Miniport(random_source=random.Random(3).randbytes), link=link,
                        ipv4_id=0xFFFE) for _ in range(2)]
    stacks[1].compiled_framing = False
    pairs = []
    for stack in stacks:
        u = stack.add_sa(policies[2].config)
        pairs.append((stack.add_sa(policies[0].config, via=u), u))
    packets = [p for p in _packets(24) if p[0] >> 4 == 4]
    with compiled_framing_calls() as framed:
        for _ in range(2):
            fast, slow = (s.build(packets, t) for s, (t, _) in zip(stacks, pairs))
            assert fast.frames() == slow.frames()
            assert fast.oob.tobytes() == slow.oob.tobytes()
            fast, slow = (s.send(packets[:3], u) for s, (_, u) in zip(stacks, pairs))
            assert fast.wire.frames() == slow.wire.frames()
            fast, slow = (s.send(packets, t) for s, (t, _) in zip(stacks, pairs))
            assert list(fast.status) == list(slow.status) == [0] * len(packets)
            assert fast.wire.frames() == slow.wire.frames()
            assert [(t.next_seq, u.next_seq) for t, u in pairs[:1]] == \
                [(t.next_seq, u.next_seq) for t, u in pairs[1:]]
            assert stacks[0].next_ipv4_id == stacks[1].next_ipv4_id
    assert framed and all(framed)  # the compiled framer framed every call of stacks[0]


@pytest.mark.parametrize("inner,outer,udp", [f for f in FORMS if f[2] != "transport"][::3])
def test_send_batch_with_via_sas_equals_the_python_framer_run_by_run(inner, outer, udp):
    """HostStack.send_batch frames via SAs in the compiled framer now, with the tunnel SA's
    row in the table: its frames equal those of the Python framer sending the same runs of
    consecutive packets one SA at a time; big TCP packets under the via SA are not cut (mss),
    a malformed packet is a fault and the rest go."""
    from ipsecoffload import HostStack
    policies = parse_sa_list(json.loads(json.dumps(_sas(inner, outer, udp=udp))))
    stacks = [HostStack(Miniport(random_source=random.Random(5).randbytes)) for _ in range(2)]
    stacks[1].compiled_framing = False
    pairs = []
    for stack in stacks:
        u = stack.add_sa(policies[2].config)
        pairs.append((stack.add_sa(policies[0].config, via=u), u))
    big = bytes(IP(src="10.8.0.1", dst="10.9.1.5") / TCP(sport=5, dport=80) / bytes(3000))
    packets = [p for p in _packets(20) if p[0] >> 4 == 4] + [big, b"\x45junk", big]
    which = [i % 3 for i in range(len(packets))]  # 0: the via SA, 1: the tunnel SA, 2: none
    which[-2] = 0  # the malformed packet under the via SA
    sent = stacks[0].send_batch(packets, [(pairs[0] + (None,))[w] for w in which], mss=500)
    assert [i for i, _ in sent.faults] == [len(packets) - 2]
    frames = []
    t, u = pairs[1]
    run: list = []
    for k, (packet, w) in enumerate(zip(packets, which)):
        if k == len(packets) - 2:
            continue
        if run and run[0][1] != w:
            frames += stacks[1].send([p for p, _ in run], (t, u, None)[run[0][1]]).wire.frames()
            run = []
        run.append((packet, w))
    frames += stacks[1].send([p for p, _ in run], (t, u, None)[run[0][1]]).wire.frames()
    assert sent.result.wire.frames() == frames
    assert (pairs[0][0].next_seq, pairs[0][1].next_seq) == (t.next_seq, u.next_seq)


def test_a_miniport_that_takes_the_stacks_ivs_frames_via_files_in_python(tmp_path):
    """Miniport(iv_source="packet"): the compiled framer leaves IVs zero for the NIC, so a via
    file goes through the Python framer (ViaBulkEncryptor), which draws fresh IVs for both
    layers; the capture decrypts back and no IV is zero."""
    from ipsecoffload.io import capture
    policies = parse_sa_list(json.loads(json.dumps(_sas("gcm", "gcm"))))
    packets = [p for p in _packets(16) if p[0] >> 4 == 4]
    plain = tmp_path / "plain.pcap"
    write_pcap(plain, LINKTYPE_RAW, packets, [T0 + i for i in range(len(packets))])
    used = []
    original = capture.ViaBulkEncryptor.process

    def spy(self, batch, writer):
        used.append(len(batch.pkts))
        return original(self, batch, writer)
    capture.ViaBulkEncryptor.process = spy
    try:
        encrypt_capture(plain, tmp_path / "fast.pcap", policies,
                        miniport=Miniport(iv_source="packet"))
    finally:
        capture.ViaBulkEncryptor.process = original
    assert sum(used) == len(packets)
    _, records = read_pcap(tmp_path / "fast.pcap")
    for r in records:
        if r.data[9] == 50:  # the tunnel ESP's IV after the outer IPv4 header and ESP header
            assert r.data[28:36] != bytes(8)
    opened, back = _opened(tmp_path, policies)
    assert back == packets
