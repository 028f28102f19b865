"""`encrypt` with an SA file that holds a ``via`` SA (transport over tunnel): the bulk reader
and writer, so pcapng, standard input and standard output work as for any other file;
VLAN-tagged frames are protected with their tags kept; scapy opens the tunnel layer, then the
transport layer; the record-by-record twin (encrypt_capture_python) sends the same frames."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.utils import rdpcap

from ipsecoffload.cli.main import main
from ipsecoffload.io.capture import encrypt_capture, encrypt_capture_python
from ipsecoffload.io.pcap import LINKTYPE_ETHERNET, read_pcap, write_pcap
from ipsecoffload.io.safile import load_sa_file

TUNNEL = ("192.0.2.1", "192.0.2.2")
SAS = [  # first match: the transport SA's narrower selector comes first
    {"name": "inner", "selector": {"dst": "10.9.1.0/24"}, "mode": "transport", "via": "site",
     "spi": "0x5002", "encryption": "aes-gcm-128", "key": "21" * 20},
    {"name": "site", "selector": {"dst": "10.9.0.0/16"}, "mode": "tunnel",
     "tunnel": {"src": TUNNEL[0], "dst": TUNNEL[1]}, "spi": "0x5001",
     "encryption": "aes-gcm-256", "key": "43" * 36},
]
T0 = 1_700_000_000 * 10**9


def _frames():
    """Ethernet frames, untagged, 802.1Q and 802.1ad + 802.1Q, to the transport SA, to the
    tunnel SA alone and to neither; an ARP frame between them."""
    frames, plain = [], []
    for i in range(24):
        packet = IP(src="10.8.0.1", dst=("10.9.1.5", "10.9.7.5", "10.1.1.1")[i % 3], id=i) \
            / UDP(sport=1000 + i, dport=2000) / (bytes([i]) * (20 + 37 * i))
        link = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02"),
                Ether() / Dot1Q(vlan=7), Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=9))[i % 3 - 1]
        frames.append(bytes(link / packet))
        plain.append(bytes(packet))
        if i == 10:
            frames.append(bytes(Ether() / ARP()))
            plain.append(None)
    return frames, plain


@pytest.fixture
def capture(tmp_path):
    (tmp_path / "sa.json").write_text(json.dumps(SAS))
    frames, plain = _frames()
    write_pcap(tmp_path / "plain.pcap", LINKTYPE_ETHERNET, frames,
               [T0 + i * 1000 for i in range(len(frames))])
    return tmp_path, frames, plain


needs_editcap = pytest.mark.skipif(shutil.which("editcap") is None,
                                   reason="editcap (tshark) not installed")


def _to_pcapng(tmp) -> None:
    """plain.pcapng beside plain.pcap, written by editcap (not by this project)."""
    subprocess.run(["editcap", "-F", "pcapng", str(tmp / "plain.pcap"), str(tmp / "plain.pcapng")],
                   check=True, capture_output=True, timeout=60)


def _open_both(frame: bytes, sas) -> bytes:
    """scapy: the tunnel layer, then the transport layer inside it."""
    inner, site = sas
    outer = SecurityAssociation(ESP, spi=site.spi, crypt_algo="AES-GCM", crypt_key=site.key,
                                tunnel_header=IP(src=TUNNEL[0], dst=TUNNEL[1]))
    carried = outer.decrypt(Ether(frame)[IP])
    transport = SecurityAssociation(ESP, spi=inner.spi, crypt_algo="AES-GCM", crypt_key=inner.key)
    return bytes(transport.decrypt(IP(bytes(carried))))


def _check_records(records, frames, plain, sas) -> None:
    assert len(records) == len(frames)
    for got, frame, packet in zip(records, frames, plain):
        if packet is None:  # not IP: as read
            assert got == frame
            continue
        l2 = len(frame) - len(packet)
        assert got[:l2] == frame[:l2]  # MACs and VLAN tags kept; EtherType IPv4
        ip = IP(got[l2:])
        dst = IP(packet).dst
        if dst == "10.1.1.1":
            assert got == frame  # no selector: clear
        elif dst == "10.9.1.5":  # transport over tunnel
            assert (ip.src, ip.dst) == TUNNEL and ip[ESP].spi == sas[1].spi
            assert IP(_open_both(got, sas)) == IP(packet)
        else:  # the tunnel SA's own packets
            assert (ip.src, ip.dst) == TUNNEL and ip[ESP].spi == sas[1].spi
            outer = SecurityAssociation(ESP, spi=sas[1].spi, crypt_algo="AES-GCM",
                                        crypt_key=sas[1].key,
                                        tunnel_header=IP(src=TUNNEL[0], dst=TUNNEL[1]))
            assert bytes(outer.decrypt(ip)) == packet


def test_pcap_and_the_python_twin(capture):
    tmp, frames, plain = capture
    sas = [p.config for p in load_sa_file(tmp / "sa.json")]
    assert main(["encrypt", "-q", "-i", str(tmp / "plain.pcap"), "-o", str(tmp / "esp.pcap"),
                 "--sa", str(tmp / "sa.json")]) == 0
    _, records = read_pcap(tmp / "esp.pcap")
    _check_records([r.data for r in records], frames, plain, sas)
    assert [r.ts_ns for r in records] == [T0 + i * 1000 for i in range(len(frames))]
    twin = encrypt_capture_python(tmp / "plain.pcap", tmp / "twin.pcap",
                                  load_sa_file(tmp / "sa.json")).as_dict()
    bulk = encrypt_capture(tmp / "plain.pcap", tmp / "bulk.pcap",
                           load_sa_file(tmp / "sa.json")).as_dict()
    assert (tmp / "twin.pcap").read_bytes() == (tmp / "esp.pcap").read_bytes()
    assert (tmp / "bulk.pcap").read_bytes() == (tmp / "esp.pcap").read_bytes()
    for key in ("seconds", "packets_per_second", "output", "format"):
        del twin[key], bulk[key]
    assert twin == bulk  # the SAs' bytes out count the VLAN tags their frames keep


def test_standard_input_and_output(capture):
    tmp, frames, plain = capture
    assert main(["encrypt", "-q", "-i", str(tmp / "plain.pcap"), "-o", str(tmp / "esp.pcap"),
                 "--sa", str(tmp / "sa.json")]) == 0
    with open(tmp / "plain.pcap", "rb") as stdin:
        done = subprocess.run([sys.executable, "-m", "ipsecoffload", "encrypt", "-q", "-i", "-",
                               "-o", "-", "--sa", str(tmp / "sa.json")], stdin=stdin,
                              capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tmp / "esp.pcap").read_bytes()


@needs_editcap
def test_pcapng_in_pcapng_out_and_decrypt(capture):
    tmp, frames, plain = capture
    _to_pcapng(tmp)
    sas = [p.config for p in load_sa_file(tmp / "sa.json")]
    assert main(["encrypt", "-q", "-i", str(tmp / "plain.pcapng"), "-o",
                 str(tmp / "esp.pcapng"), "--sa", str(tmp / "sa.json")]) == 0
    assert (tmp / "esp.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # the input's format
    _check_records([bytes(p) for p in rdpcap(str(tmp / "esp.pcapng"))], frames, plain, sas)
    assert main(["decrypt", "-q", "-i", str(tmp / "esp.pcapng"), "-o", str(tmp / "back.pcapng"),
                 "--sa", str(tmp / "sa.json")]) == 0
    assert [bytes(p) for p in rdpcap(str(tmp / "back.pcapng"))] == frames


@needs_editcap
@pytest.mark.parametrize("via", [True, False], ids=["via", "compiled"])
def test_pcapng_in_pcap_out(capture, via):
    """--format pcap from a pcapng input (editcap's: the interface block follows the section
    header): the same file as from the pcap input, on the via path and the compiled one."""
    tmp, frames, plain = capture
    if not via:
        (tmp / "sa.json").write_text(json.dumps([dict(SAS[1])]))
    _to_pcapng(tmp)
    for name in ("plain.pcap", "plain.pcapng"):
        assert main(["encrypt", "-q", "-i", str(tmp / name), "-o", str(tmp / (name + ".out")),
                     "--sa", str(tmp / "sa.json"), "--format", "pcap"]) == 0
    assert (tmp / "plain.pcapng.out").read_bytes() == (tmp / "plain.pcap.out").read_bytes()


@needs_editcap
def test_summaries_name_a_pcapng_link_type(capture, capsys):
    """The summaries of a pcapng name its first interface's link type (known once its block
    is read), as those of a pcap do."""
    tmp, _, _ = capture
    _to_pcapng(tmp)
    sa = ["--sa", str(tmp / "sa.json")]
    capsys.readouterr()
    assert main(["encrypt", "-i", str(tmp / "plain.pcapng"), "-o", str(tmp / "esp.pcapng"),
                 *sa, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["linktype"] == LINKTYPE_ETHERNET
    for verb, src, dst in (("encrypt", "plain.pcapng", "esp.pcapng"),
                           ("decrypt", "esp.pcapng", "back.pcapng")):
        assert main([verb, "-i", str(tmp / src), "-o", str(tmp / dst), *sa]) == 0
        assert "(Ethernet)" in capsys.readouterr().out.splitlines()[0]
