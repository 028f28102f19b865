"""UDP-ESP on NAT-T ports other than 4500 (docs/spec-gaps.md G31): the NIC's set of NAT-T
ports (Miniport(nat_t_ports=...), default 4500 alone), the port a HostStack inbound SA with
``udp_encap`` adds, `ipsecoffload decrypt` of what `ipsecoffload encrypt` sent on such ports
(tunnel and transport, --workers included), keepalives and IKE markers on every enabled
port, the compiled receive kernels against their twin, and the validation of the set."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation

import ipsecoffload
from ipsecoffload import HostStack, Miniport, SaConfig, _fastpath, ndis
from ipsecoffload.cli.main import main
from ipsecoffload.crypto import backends_for
from ipsecoffload.crypto.reference import ReferenceBackend
from ipsecoffload.datapath import twin
from ipsecoffload.datapath.batch import PacketBatch
from ipsecoffload.datapath.layout import (NAT_T_MAX_PORTS, NAT_T_PORT, Config, Delivery,
                                          RxReason, nat_t_port_set)
from ipsecoffload.io.pcap import LINKTYPE_RAW, read_pcap, write_pcap

KEY = bytes(range(20))
GCM_KEY = "00112233445566778899aabbccddeeff01020304"
SPORT, DPORT = 40000, 4501
CONFIG = SaConfig(spi=0x4501, encryption="aes-gcm-128", key=KEY, src="10.0.0.1",
                  dst="10.0.0.2", udp_encap=(SPORT, DPORT))
BACKENDS = backends_for(twin, ReferenceBackend())
RX_CFG = int(Config.ESP_IPV4 | Config.ESP_IPV6)
T0 = 1_700_000_000 * 10**9
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def scapy_frames(count, config=CONFIG, sport=SPORT, dport=DPORT):
    """scapy's UDP-ESP (nat_t_header) on (sport, dport): the plain packets and the frames."""
    sa = SecurityAssociation(ESP, spi=config.spi, crypt_algo="AES-GCM", crypt_key=config.key,
                             auth_algo="NULL", nat_t_header=UDP(sport=sport, dport=dport))
    plain = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6)
                   / (bytes([i]) * (i + 3))) for i in range(count)]
    return plain, [bytes(sa.encrypt(IP(p), seq_num=1 + i)) for i, p in enumerate(plain)]


def udp_frame(dport: int, payload: bytes, sport: int = 12345) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=dport) / payload)


def inbound(miniport, config=CONFIG):
    entry = config.add_sa_entry(False, inbound=True)
    assert miniport.add_sa(entry) == ndis.NdisStatus.SUCCESS
    return entry.offload_handle


@pytest.fixture(params=[False, True], ids=["compiled", "twin"])
def pure_python(request):
    return request.param


# -- the NIC: Miniport.receive ---------------------------------------------------------------

def test_default_set_is_4500_alone_and_leaves_4501_without_ipsec_info(pure_python):
    mp = Miniport(pure_python=pure_python)
    assert mp.nat_t_ports == (4500,) == (NAT_T_PORT,)
    inbound(mp)
    _, esp = scapy_frames(3)
    result = mp.receive(PacketBatch.from_frames(esp, l2_len=0))
    assert result.reason_counts() == {"NOT_IPSEC": 3}
    assert not result.crypto_done.any()
    assert result.frames() == esp


def test_an_enabled_port_opens_udp_esp(pure_python):
    mp = Miniport(pure_python=pure_python, nat_t_ports=(4500, DPORT))
    inbound(mp)
    plain, esp = scapy_frames(3)
    result = mp.receive(PacketBatch.from_frames(esp, l2_len=0))
    assert result.reason_counts() == {"OK": 3}
    assert result.crypto_done.all()
    for got, packet in zip(result.frames(), plain):
        # IP + UDP + ESP header + IV, then the decrypted inner payload (transport)
        assert got[28 + 16:28 + 16 + len(packet) - 20] == packet[20:]


@pytest.mark.parametrize("which", ["sport", "dport"])
def test_either_port_of_the_datagram_counts(pure_python, which):
    ports = {"sport": (DPORT, 33333), "dport": (33333, DPORT)}[which]
    mp = Miniport(pure_python=pure_python, nat_t_ports=[DPORT])
    inbound(mp)
    _, esp = scapy_frames(2, sport=ports[0], dport=ports[1])
    assert mp.receive(PacketBatch.from_frames(esp, l2_len=0)).reason_counts() == {"OK": 2}


def test_setting_the_attribute_changes_the_next_receive(pure_python):
    mp = Miniport(pure_python=pure_python)
    inbound(mp)
    _, esp = scapy_frames(2)
    batch = PacketBatch.from_frames(esp, l2_len=0)
    assert mp.receive(batch).reason_counts() == {"NOT_IPSEC": 2}
    mp.nat_t_ports = [4500, DPORT, DPORT]
    assert mp.nat_t_ports == (4500, DPORT)
    assert mp.receive(batch).reason_counts() == {"OK": 2}
    mp.nat_t_ports = ()  # no UDP-ESP at all, 4500 included
    assert mp.receive(batch).reason_counts() == {"NOT_IPSEC": 2}


def test_4500_is_not_special_once_left_out(pure_python):
    mp = Miniport(pure_python=pure_python, nat_t_ports=(DPORT,))
    config = SaConfig(spi=0x4500, encryption="aes-gcm-128", key=KEY, src="10.0.0.1",
                      dst="10.0.0.2", udp_encap=(4500, 4500))
    inbound(mp, config)
    _, esp = scapy_frames(1, config=config, sport=4500, dport=4500)
    frames = esp + [udp_frame(4500, b"\xff"), udp_frame(4500, bytes(4) + b"ike")]
    counts = mp.receive(PacketBatch.from_frames(frames, l2_len=0)).reason_counts()
    assert counts == {"NOT_IPSEC": 3}


def test_keepalive_and_ike_marker_on_an_extra_port(pure_python):
    frames = [udp_frame(DPORT, b"\xff"), udp_frame(DPORT, bytes(4) + b"ike payload"),
              udp_frame(DPORT, bytes(4)),  # the marker alone: SPI 0 is never ESP
              udp_frame(9, b"\xff", sport=DPORT), udp_frame(DPORT, b"abc")]
    mp = Miniport(pure_python=pure_python, nat_t_ports=(4500, DPORT))
    inbound(mp)
    result = mp.receive(PacketBatch.from_frames(frames, l2_len=0))
    assert [RxReason(r).name for r in result.plans["reason"]] == [
        "KEEPALIVE", "IKE", "IKE", "KEEPALIVE", "NOT_IPSEC"]
    assert not result.crypto_done.any()
    assert result.frames() == frames
    off = Miniport(pure_python=pure_python)
    inbound(off)
    assert off.receive(PacketBatch.from_frames(frames, l2_len=0)).reason_counts() == {
        "NOT_IPSEC": 5}


def test_nested_second_pass_uses_the_same_set(pure_python):
    """Transport over tunnel where both layers are UDP-ESP on 4501: the inner layer is found
    by the second pass only with 4501 in the set."""
    outer = SaConfig(spi=0x7001, encryption="aes-gcm-128", key=bytes(range(1, 21)),
                     mode="tunnel", tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2",
                     udp_encap=(SPORT, DPORT))
    inner_sa = SecurityAssociation(ESP, spi=CONFIG.spi, crypt_algo="AES-GCM",
                                   crypt_key=CONFIG.key, auth_algo="NULL",
                                   nat_t_header=UDP(sport=SPORT, dport=DPORT))
    outer_sa = SecurityAssociation(ESP, spi=outer.spi, crypt_algo="AES-GCM",
                                   crypt_key=outer.key, auth_algo="NULL",
                                   tunnel_header=IP(src="192.0.2.1", dst="192.0.2.2"),
                                   nat_t_header=UDP(sport=SPORT, dport=DPORT))
    plain = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6) / b"nested"
    frame = bytes(outer_sa.encrypt(IP(bytes(inner_sa.encrypt(plain, seq_num=1))), seq_num=1))
    seen = {}
    for ports in ((4500,), (DPORT,)):
        mp = Miniport(pure_python=pure_python, nat_t_ports=ports)
        inbound(mp, outer)
        inbound(mp, CONFIG)
        result = mp.receive(PacketBatch.from_frames([frame], l2_len=0))
        seen[ports] = (result.reason_counts(), bool(result.plans["next_crypto_done"][0]))
    assert seen[(4500,)] == ({"NOT_IPSEC": 1}, False)
    assert seen[(DPORT,)] == ({"OK": 1}, True)


# -- compiled == twin ------------------------------------------------------------------------

def run_both(mp: Miniport, batch: PacketBatch, ports):
    snap = mp.sas.snapshot()
    got = []
    for kernels in (_fastpath, twin):
        state = mp.sas.rx_state.copy()
        out, plans, ops, counters = kernels.rx_run(batch, snap, state, RX_CFG, BACKENDS,
                                                   threading.Lock(), 0, ports)
        got.append((out.tobytes(), plans.tobytes(), ops.tobytes(), counters.tolist(),
                    state.tobytes()))
    assert got[0] == got[1]
    return got[0][3]


@pytest.mark.parametrize("ports", [(), (4500,), (DPORT,), (4500, DPORT),
                                   tuple(range(4495, 4495 + NAT_T_MAX_PORTS)),
                                   (SPORT,), [DPORT, DPORT]])
def test_compiled_and_twin_agree_on_port_sets(ports):
    mp = Miniport()
    inbound(mp)
    _, esp = scapy_frames(3)
    _, esp4500 = scapy_frames(1, sport=4500, dport=4500)
    tampered = bytearray(esp[2])
    tampered[-1] ^= 1
    frames = esp[:2] + [bytes(tampered)] + esp4500 + [
        udp_frame(DPORT, b"\xff"), udp_frame(4500, b"\xff"), udp_frame(DPORT, bytes(8)),
        udp_frame(4500, bytes(8)), udp_frame(DPORT, b"ab"), udp_frame(4499, b"x" * 30),
        esp[0][:30], esp[0][:28]]
    counters = run_both(mp, PacketBatch.from_frames(frames, l2_len=0), ports)
    assert sum(counters) == len(frames)


PORTS = st.sampled_from([4500, DPORT, SPORT, 4499, 1, 65535])


@FUZZ
@given(ports=st.lists(PORTS, max_size=NAT_T_MAX_PORTS),
       datagrams=st.lists(st.tuples(PORTS, PORTS, st.binary(max_size=40)), min_size=1,
                          max_size=12),
       cut=st.integers(0, 60))
def test_compiled_and_twin_agree_on_random_datagrams(ports, datagrams, cut):
    mp = Miniport()
    inbound(mp)
    _, esp = scapy_frames(1)
    frames = [udp_frame(d, payload, sport=s) for s, d, payload in datagrams]
    frames += [esp[0], esp[0][:len(esp[0]) - cut]]
    run_both(mp, PacketBatch.from_frames(frames, l2_len=0), ports)


@pytest.mark.parametrize("bad", [(0,), (65536,), (-1,), (4500.0,), (True,), ("4500",), None, 4500,
                                 tuple(range(1, NAT_T_MAX_PORTS + 2))])
def test_kernels_refuse_bad_port_sets_alike(bad):
    mp = Miniport()
    batch = PacketBatch.from_frames([udp_frame(DPORT, b"x")], l2_len=0)
    messages = []
    for kernels in (_fastpath, twin):
        with pytest.raises(ValueError, match="nat_t_ports") as info:
            kernels.rx_run(batch, mp.sas.snapshot(), mp.sas.rx_state.copy(), RX_CFG, BACKENDS,
                           threading.Lock(), 0, bad)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_the_maximum_is_declared_once():
    assert _fastpath.NAT_T_MAX_PORTS == NAT_T_MAX_PORTS == int(_fastpath.NatT.NAT_T_MAX_PORTS)
    assert _fastpath.NAT_T_PORT == NAT_T_PORT == 4500


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [(0,), (65536,), (4500, -1), (4500.5,), (True,), "4500", b"45",
                                 None, 4500, tuple(range(1, NAT_T_MAX_PORTS + 2))])
def test_miniport_refuses_bad_port_sets(bad):
    with pytest.raises(ValueError, match="^nat_t_ports must be") as info:
        Miniport(nat_t_ports=bad)
    assert "\n" not in str(info.value)
    mp = Miniport()
    with pytest.raises(ValueError, match="^nat_t_ports must be"):
        mp.nat_t_ports = bad
    assert mp.nat_t_ports == (4500,)


def test_port_set_keeps_order_drops_duplicates_and_takes_numpy_ints():
    assert nat_t_port_set([4501, 4500, 4501]) == (4501, 4500)
    assert nat_t_port_set(np.array([4500, 4501], np.uint16)) == (4500, 4501)
    assert all(type(p) is int for p in nat_t_port_set(np.array([4501])))
    assert nat_t_port_set([7] * 20) == (7,)
    full = tuple(range(1, NAT_T_MAX_PORTS + 1))
    assert Miniport(nat_t_ports=full).nat_t_ports == full


# -- the host stack: add_inbound_sa ------------------------------------------------------------

def test_add_inbound_sa_adds_the_port_received_packets_carry(pure_python):
    stack = HostStack(Miniport(pure_python=pure_python), link="raw")
    stack.add_inbound_sa(CONFIG)
    assert stack.miniport.nat_t_ports == (4500, DPORT)
    # a port already there, or 4500 on one side, adds nothing
    stack.add_inbound_sa(SaConfig(spi=0x4502, encryption="aes-gcm-128", key=KEY,
                                  udp_encap=(SPORT + 1, DPORT)))
    stack.add_inbound_sa(SaConfig(spi=0x4503, encryption="aes-gcm-128", key=KEY,
                                  udp_encap=(4500, 50000)))
    stack.add_inbound_sa(SaConfig(spi=0x4504, encryption="aes-gcm-128", key=KEY))
    assert stack.miniport.nat_t_ports == (4500, DPORT)
    plain, esp = scapy_frames(3)
    got = stack.receive(esp)
    assert got.delivery.tolist() == [Delivery.DECAP] * 3
    assert [got.packet(i) for i in range(3)] == plain


def test_add_inbound_sa_refuses_a_port_past_the_maximum():
    full = tuple(range(5000, 5000 + NAT_T_MAX_PORTS))
    stack = HostStack(Miniport(nat_t_ports=full), link="raw")
    with pytest.raises(ValueError, match="NAT-T ports") as info:
        stack.add_inbound_sa(CONFIG)
    assert KEY.hex() not in str(info.value)
    assert stack.miniport.nat_t_ports == full
    assert len(stack.miniport.sas) == 0  # nothing offloaded
    config = SaConfig(spi=0x4505, encryption="aes-gcm-128", key=KEY, udp_encap=(SPORT, 5003))
    stack.add_inbound_sa(config)  # a port in the set: fine
    assert stack.miniport.nat_t_ports == full


def test_one_call_api_decrypts_what_encrypt_sent_on_4501():
    sa = {"spi": "0x4601", "encryption": "aes-gcm-128", "key": GCM_KEY,
          "udp_encap": {"sport": SPORT, "dport": DPORT}}
    packets = [bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(flags="A") / (b"p" * i))
               for i in range(4)]
    enc = ipsecoffload.Encryptor(sa).encrypt(packets)
    assert enc.status == ("SUCCESS",) * 4
    assert all(IP(p)[UDP].dport == DPORT for p in enc)
    dec = ipsecoffload.Decryptor(sa).decrypt(list(enc))
    assert dec.status == ("SUCCESS",) * 4
    assert list(dec) == packets


# -- the command line --------------------------------------------------------------------------

def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def sa_file(mode: str) -> list[dict]:
    sa = {"name": f"natt-{mode}", "selector": {"src": "10.1.0.0/16"}, "mode": mode,
          "spi": "0x00004501", "encryption": "aes-gcm-128", "key": GCM_KEY,
          "udp_encap": {"sport": SPORT, "dport": DPORT}}
    if mode == "tunnel":
        sa["tunnel"] = {"src": "192.0.2.1", "dst": "192.0.2.2"}
    # with --workers 2 the 4501 SA is the second stack's: the first stack's NIC must parse
    # 4501 as well, or it passes those frames as clear
    return [{"name": "std", "selector": {"src": "10.3.0.0/16"}, "spi": "0x4502",
             "encryption": "aes-gcm-256", "key": "77" * 36,
             "udp_encap": {"sport": 4500, "dport": 4500}}, sa]


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("workers", [1, 2])
def test_decrypt_opens_what_encrypt_sent_on_other_ports(tmp_path, capsys, mode, workers):
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps(sa_file(mode)))
    plain = [bytes(IP(src="10.1.0.1", dst="10.2.0.1") / UDP(sport=7, dport=9) / (b"n" * i))
             for i in range(4)]
    plain += [bytes(IP(src="10.3.0.1", dst="10.2.0.1") / UDP(dport=53) / b"std")] * 2
    plain += [bytes(IP(src="10.9.0.1", dst="10.2.0.1") / UDP(dport=DPORT) / b"\xff")]
    write_pcap(tmp_path / "plain.pcap", LINKTYPE_RAW, plain,
               [T0 + 1000 * i for i in range(len(plain))])
    code, _, err = run(capsys, "encrypt", "-i", tmp_path / "plain.pcap", "-o",
                       tmp_path / "esp.pcap", "--sa", sa)
    assert code == 0, err
    _, records = read_pcap(tmp_path / "esp.pcap")
    assert all(IP(r.data)[UDP].dport == DPORT for r in records[:4])
    code, out, err = run(capsys, "decrypt", "-i", tmp_path / "esp.pcap", "-o",
                         tmp_path / "dec.pcap", "--sa", sa, "--json", "--workers", workers)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["clear"] == 1  # the keepalive-looking datagram of no SA
    assert summary["no_sa"] == summary["malformed"] == 0
    assert summary["sas"][f"natt-{mode}"] == {"packets": 4, "crypto_status": {"SUCCESS": 4},
                                              "replayed": 0}
    assert summary["sas"]["std"]["packets"] == 2
    _, decrypted = read_pcap(tmp_path / "dec.pcap")
    assert [r.data for r in decrypted] == plain
