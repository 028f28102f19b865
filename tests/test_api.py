"""The one-call API (README, "Python API"): scapy packets in, scapy (an independent ESP
implementation) opens what comes out; bad packets in a list get a status, never an
exception; sequence numbers continue from call to call; capture helpers; one exception
hierarchy; the README's first example runs as written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import Ether

import ipsecoffload
from ipsecoffload import (REFUSED, SEQUENCE_EXHAUSTED, SUCCESS, Encryptor, IpsecOffloadError,
                          PacketResults, SaConfig, encrypt)

REPO = Path(ipsecoffload.__file__).resolve().parents[1]
GCM_KEY = bytes(range(16)) + b"salt"
CBC_KEY, SHA256_KEY = b"\xa5" * 32, b"\x5a" * 32
GCM_DICT = {"spi": "0x00003001", "encryption": "aes-gcm-128", "key": GCM_KEY.hex()}


@pytest.fixture(autouse=True)
def fresh_state():
    """Each test starts with no per-SA state, and leaves none."""
    ipsecoffload.forget_sa()
    yield
    ipsecoffload.forget_sa()


def scapy_sa(config: SaConfig) -> SecurityAssociation:
    crypt = {"aes-gcm": "AES-GCM", "aes-cbc": "AES-CBC", "null": "NULL"}[config.encryption[:7]]
    auth = {None: "NULL", "hmac-sha1-96": "HMAC-SHA1-96",
            "hmac-sha256-128": "SHA2-256-128"}[config.integrity]
    extra = {}
    if config.mode == "tunnel":
        outer = IPv6 if ":" in config.tunnel_src else IP
        extra["tunnel_header"] = outer(src=config.tunnel_src, dst=config.tunnel_dst)
    if config.udp_encap:
        extra["nat_t_header"] = UDP(sport=config.udp_encap[0], dport=config.udp_encap[1])
    return SecurityAssociation(ESP, spi=config.spi, crypt_algo=crypt, crypt_key=config.key,
                               crypt_icv_size=16 if config.gcm else None, auth_algo=auth,
                               auth_key=config.auth_key or None, **extra)


def opened(packet: bytes, config: SaConfig):
    """scapy's decryption of one of our packets (IntegrityError if the ICV is wrong), and its
    sequence number."""
    parsed = (IPv6 if packet[0] >> 4 == 6 else IP)(packet)
    seq = parsed[ESP].seq
    return scapy_sa(config).decrypt(parsed), seq


def tcp4(payload=b"hello", flags="A", **ip):
    return IP(src="10.0.0.1", dst="10.0.0.2", **ip) / TCP(sport=1234, dport=80, seq=7,
                                                          flags=flags) / payload


def udp6(payload=b"question"):
    return IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5353, dport=53) / payload


CONFIGS = {
    "gcm-transport": SaConfig(spi=0x3001, encryption="aes-gcm-128", key=GCM_KEY),
    "cbc-sha256-tunnel4": SaConfig(spi=0x3002, encryption="aes-cbc-256", key=CBC_KEY,
                                   integrity="hmac-sha256-128", auth_key=SHA256_KEY,
                                   mode="tunnel", tunnel_src="192.0.2.1",
                                   tunnel_dst="192.0.2.2"),
    "gcm-tunnel6-natt": SaConfig(spi=0x3003, encryption="aes-gcm-256", key=b"\x77" * 36,
                                 mode="tunnel", tunnel_src="2001:db8:ff::1",
                                 tunnel_dst="2001:db8:ff::2", udp_encap=(4500, 4500)),
}


# -- scapy in, scapy out ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_scapy_packets_in_and_scapy_opens_every_packet_out(name):
    config = CONFIGS[name]
    packets = [tcp4(b"x" * n) for n in (0, 1, 100, 1400)] + [udp6(b"y" * 33), udp6()]
    result = encrypt(packets, config)
    assert isinstance(result, PacketResults) and len(result) == len(packets)
    assert result.status == (SUCCESS,) * len(packets) and result.ok and not result.failed
    assert result.errors == (None,) * len(packets)
    seqs = []
    for original, out in zip(packets, result):
        clear, seq = opened(out, config)
        assert bytes(clear) == bytes(original)
        seqs.append(seq)
    assert seqs == list(range(1, len(packets) + 1))


def test_to_scapy_gives_ip_packets_scapy_decrypts():
    config = CONFIGS["gcm-transport"]
    result = encrypt([tcp4(), udp6()], config)
    as_scapy = result.to_scapy()
    assert [type(p) for p in as_scapy] == [IP, IPv6]
    assert [bytes(p) for p in as_scapy] == list(result)
    assert bytes(scapy_sa(config).decrypt(as_scapy[1])) == bytes(udp6())


def test_link_layer_before_a_scapy_ip_packet_is_dropped():
    config = CONFIGS["gcm-transport"]
    result = encrypt([Ether() / tcp4(), Ether() / udp6()], config)
    assert result.ok
    assert bytes(opened(result[0], config)[0]) == bytes(tcp4())
    assert bytes(opened(result[1], config)[0]) == bytes(udp6())


def test_bytes_like_inputs_give_the_same_packets_as_bytes():
    """AES-GCM output is deterministic (IV = sequence number): equal inputs at equal sequence
    numbers give equal bytes, whatever object carried them."""
    raw = bytes(tcp4(b"z" * 50))
    forms = [raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8),
             memoryview(raw + b"pad")[:len(raw)]]
    outputs = [Encryptor(CONFIGS["gcm-transport"]).encrypt([form])[0] for form in forms]
    assert outputs[0] and all(out == outputs[0] for out in outputs)


def test_sa_as_a_dict_in_the_sa_file_format_equals_the_sa_config():
    config = SaConfig(spi=0x3001, encryption="aes-gcm-128", key=GCM_KEY)
    from_dict = Encryptor(dict(GCM_DICT, selector={"dst": "192.0.2.0/24"})).encrypt([tcp4()])
    assert from_dict.ok  # the selector is not applied: every packet goes through the SA
    assert from_dict[0] == Encryptor(config).encrypt([tcp4()])[0]


# -- bad packets --------------------------------------------------------------------------------
def test_bad_packets_in_a_list_get_a_status_and_take_no_sequence_number():
    config = CONFIGS["gcm-transport"]
    good = [tcp4(b"a"), udp6(b"b"), tcp4(b"c" * 300), udp6(b"d")]
    fragment = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP() / b"frag")
    short4 = bytes(tcp4())[:30]  # total length says more than is there
    bad = [b"", b"\x00junk", "a string", None, 42, short4, fragment, b"\x45" + bytes(10)]
    packets = [good[0], bad[0], bad[1], good[1], *bad[2:6], good[2], bad[6], bad[7], good[3]]
    result = encrypt(packets, config)
    assert len(result) == len(packets)
    good_at = [0, 3, 8, 11]
    for i, packet in enumerate(packets):
        if i in good_at:
            assert result.status[i] == SUCCESS and result.errors[i] is None
        else:
            assert result.status[i] == REFUSED, i
            assert result[i] == b"" and result.segments[i] == ()
            assert result.errors[i]  # a message that says why
    assert result.failed == [i for i in range(len(packets)) if i not in good_at]
    assert not result.ok
    assert "fragment" in result.errors[9]
    assert "not a packet" in result.errors[4] and "not a packet" in result.errors[5]
    seqs = []
    for i, original in zip(good_at, good):
        clear, seq = opened(result[i], config)
        assert bytes(clear) == bytes(original)
        seqs.append(seq)
    assert seqs == [1, 2, 3, 4]  # refused packets consumed no sequence number
    assert len(result.flat()) == len(good)


def test_a_long_list_of_bytes_goes_in_sends_of_a_chunk_with_the_same_results(monkeypatch):
    """Encryptor._send_all: a list of bytes sends _SEND_CHUNK packets at a time; a refused
    packet in a later chunk is refused alone, and the sequence numbers run on across the
    chunks as in one send."""
    import ipsecoffload.api as api
    monkeypatch.setattr(api, "_SEND_CHUNK", 3)
    config = SaConfig(spi=0x300A, encryption="aes-gcm-128", key=GCM_KEY)
    packets = [tcp4(bytes([i])) for i in range(8)]
    packets[5] = b"\x00junk"
    result = Encryptor(config).encrypt(packets)
    assert result.status == tuple(REFUSED if i == 5 else SUCCESS for i in range(8))
    assert [opened(result[i], config)[1] for i in range(8) if i != 5] == list(range(1, 8))
    assert [bytes(opened(result[i], config)[0]) for i in range(8) if i != 5] == \
        [bytes(p) for i, p in enumerate(packets) if i != 5]


def test_only_bad_packets_and_no_packets():
    assert list(encrypt([], CONFIGS["gcm-transport"])) == []
    result = encrypt([b"", b"\x60"], CONFIGS["gcm-transport"])
    assert result.status == (REFUSED, REFUSED) and list(result) == [b"", b""]
    assert ipsecoffload.encryptor(CONFIGS["gcm-transport"]).next_seq == 1


def test_sequence_numbers_run_out_as_a_status_not_an_exception():
    config = SaConfig(spi=0x3009, encryption="aes-gcm-128", key=GCM_KEY, seq=2**32 - 2)
    result = encrypt([tcp4()] * 4, config)
    assert result.status == (SUCCESS, SUCCESS, SEQUENCE_EXHAUSTED, SEQUENCE_EXHAUSTED)
    assert [opened(p, config)[1] for p in result.flat()] == [2**32 - 2, 2**32 - 1]
    assert "sequence numbers" in result.errors[2]
    assert encrypt([tcp4()], config).status == (SEQUENCE_EXHAUSTED,)


def test_a_miniport_failure_is_the_packets_ndis_status():
    """The NIC completes an NBL whose SA it no longer holds with NDIS_STATUS_FAILURE; the
    packet's status says so and the others of the call are untouched."""
    enc = Encryptor(CONFIGS["cbc-sha256-tunnel4"])
    handle = next(iter(enc.sa.handles.values()))
    assert enc.miniport.delete_sa(ipsecoffload.ndis.IpsecOffloadV2DeleteSa(
        offload_handle=handle)) == ipsecoffload.ndis.NdisStatus.SUCCESS
    result = enc.encrypt([tcp4(), b"nonsense"])
    assert result.status == ("FAILURE", REFUSED)
    assert "NDIS_STATUS_FAILURE" in result.errors[0] and "UNKNOWN_HANDLE" in result.errors[0]
    assert list(result) == [b"", b""]


# -- sequence numbers across calls --------------------------------------------------------------
def test_successive_calls_with_an_equal_sa_continue_its_sequence_numbers():
    config = CONFIGS["gcm-transport"]
    first = encrypt([tcp4(), tcp4()], config)
    # the same SA as a dict (another object, no name): the same state
    second = encrypt([tcp4()], GCM_DICT)
    third = encrypt([udp6()], SaConfig(spi=0x3001, encryption="aes-gcm-128", key=GCM_KEY,
                                       name="renamed"))
    seqs = [opened(p, config)[1] for r in (first, second, third) for p in r]
    assert seqs == [1, 2, 3, 4]
    assert ipsecoffload.encryptor(GCM_DICT).next_seq == 5
    # another SA (another SPI) has its own numbers
    other = SaConfig(spi=0x3099, encryption="aes-gcm-128", key=GCM_KEY)
    assert opened(encrypt([tcp4()], other)[0], other)[1] == 1
    # forgetting the state starts again at seq (documented as unsafe for a live key)
    ipsecoffload.forget_sa(config)
    assert opened(encrypt([tcp4()], config)[0], config)[1] == 1


def test_an_encryptor_holds_its_own_state():
    config = CONFIGS["gcm-transport"]
    mine = Encryptor(config)
    mine.encrypt([tcp4()] * 3)
    assert mine.next_seq == 4
    assert ipsecoffload.encryptor(config).next_seq == 1  # the shared state is another one
    assert opened(mine.encrypt([tcp4()])[0], config)[1] == 4


def test_sa_with_esn_continues_across_the_high_word():
    config = SaConfig(spi=0x300E, encryption="aes-cbc-128", key=b"\x3c" * 16,
                      integrity="hmac-sha256-128", auth_key=SHA256_KEY, esn=True,
                      seq=2**32 - 2)
    first = encrypt([tcp4()] * 2, config)
    second = encrypt([tcp4()] * 2, config)
    assert first.ok and second.ok
    wire_seqs = [IP(p)[ESP].seq for p in first.flat() + second.flat()]
    assert wire_seqs == [2**32 - 2, 2**32 - 1, 0, 1]  # the low 32 bits on the wire
    assert ipsecoffload.encryptor(config).next_seq == 2**32 + 2


# -- LSO ----------------------------------------------------------------------------------------
def test_mss_cuts_big_tcp_packets_into_segments_scapy_opens():
    config = CONFIGS["gcm-transport"]
    big = tcp4(bytes(range(256)) * 20)  # 5120 payload bytes
    small = tcp4(b"s" * 100)
    syn = tcp4(b"q" * 3000, flags="S")  # SYN is never LSO: one big packet
    result = encrypt([small, big, syn, udp6(b"u" * 3000)], config, mss=1000)
    assert result.ok
    assert [len(s) for s in result.segments] == [1, 6, 1, 1]
    assert result[1] == b"".join(result.segments[1])
    clear = [opened(p, config) for p in result.segments[1]]
    assert b"".join(bytes(c[TCP].payload) for c, _ in clear) == bytes(big[TCP].payload)
    assert all(len(c[TCP].payload) <= 1000 for c, _ in clear)
    seqs = [opened(p, config)[1] for p in result.flat()]
    assert seqs == list(range(1, 10))  # one per segment, in output order
    assert bytes(opened(result[2], config)[0]) == bytes(syn)


LSO_MIX_CONFIGS = {
    "gcm": SaConfig(spi=0x3011, encryption="aes-gcm-128", key=GCM_KEY),
    "cbc-esn-near-2^32": SaConfig(spi=0x3012, encryption="aes-cbc-128", key=CBC_KEY[:16],
                                  integrity="hmac-sha256-128", auth_key=SHA256_KEY, esn=True,
                                  seq=2**32 - 7),
    "gcm-natt": SaConfig(spi=0x3013, encryption="aes-gcm-256", key=b"\x77" * 36,
                         udp_encap=(4500, 4500)),
    "gcm-exhausted-soon": SaConfig(spi=0x3014, encryption="aes-gcm-128", key=GCM_KEY,
                                   seq=2**32 - 12),
    "ah-sha256": SaConfig(spi=0x3015, protocol="ah", integrity="hmac-sha256-128",
                          auth_key=SHA256_KEY),
    "ah+esp-gcm": SaConfig(spi=0x3016, protocol="ah+esp", encryption="aes-gcm-128",
                           key=GCM_KEY, ah_spi=0x4016, ah_integrity="hmac-sha256-128",
                           ah_auth_key=SHA256_KEY),
}


def _lso_mix():
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrRouting
    big6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrRouting(
        addresses=["2001:db8::9"]) / IPv6ExtHdrDestOpt() / TCP(flags="A") / (b"6" * 4000)
    return [tcp4(b"a" * 3000), tcp4(b"b" * 100), bytes(tcp4(b"c" * 2500, flags="PA")),
            tcp4(b"s" * 3000, flags="S"), b"\x45junk", "not a packet", udp6(b"u" * 3000),
            bytearray(bytes(tcp4(b"d" * 1001))), big6, tcp4(b"e" * 20000, id=9),
            bytes(tcp4(b"f" * 5000))[:900], tcp4(b"g" * 1000), memoryview(bytes(tcp4(b"h" * 4000)))]


@pytest.mark.parametrize("name", sorted(LSO_MIX_CONFIGS))
def test_mss_in_batches_equals_the_packet_by_packet_path(name, monkeypatch):
    """encrypt(mss=) through HostStack.send_batch (super-packets batched with the rest)
    leaves the same bytes, statuses and sequence numbers as the send_lso path it replaced;
    a refused or unconvertible packet fails alone in both."""
    from ipsecoffload.control.miniport import Miniport

    def zero_ivs() -> Miniport:  # CBC IVs the same in both runs, so the bytes compare
        miniport = Miniport()
        miniport.random_source = bytes
        return miniport
    config = LSO_MIX_CONFIGS[name]
    packets = _lso_mix()
    batched_enc = Encryptor(config, miniport=zero_ivs())
    assert batched_enc._lso_in_batches()
    batched = [batched_enc.encrypt(packets, mss=1000), batched_enc.encrypt(packets, mss=1)]
    monkeypatch.setattr(Encryptor, "_lso_in_batches", lambda self: False)
    single_enc = Encryptor(config, miniport=zero_ivs())
    single = [single_enc.encrypt(packets, mss=1000), single_enc.encrypt(packets, mss=1)]
    for a, b in zip(batched, single):
        assert a.status == b.status
        assert a.segments == b.segments
        assert [e is None for e in a.errors] == [e is None for e in b.errors]
    assert batched_enc.next_seq == single_enc.next_seq
    assert batched[0].status[:4] != [REFUSED] * 4 and batched[0].status[5] == REFUSED
    if name == "gcm-exhausted-soon":
        assert SEQUENCE_EXHAUSTED in batched[1].status


def test_mss_outside_default_lso_limits_goes_packet_by_packet():
    """A miniport with smaller LSOv2 limits: send_lso cuts a super-packet into pieces there,
    which the batched path would not, so encrypt(mss=) keeps the packet-by-packet path."""
    from ipsecoffload.control.miniport import Miniport
    miniport = Miniport()
    miniport.lso_v2.ipv4_max_offload_size = 3000
    enc = Encryptor(LSO_MIX_CONFIGS["gcm"], miniport=miniport)
    assert not enc._lso_in_batches()
    result = enc.encrypt([tcp4(b"a" * 8000)], mss=1000)
    assert result.ok and len(result.segments[0]) == 8


def test_mss_with_a_tunnel_sa_keeps_packets_whole():
    config = CONFIGS["cbc-sha256-tunnel4"]
    big = tcp4(b"t" * 4000)
    result = encrypt([big], config, mss=1000)
    assert [len(s) for s in result.segments] == [1]
    assert bytes(opened(result[0], config)[0]) == bytes(big)


# -- misuse raises before any work --------------------------------------------------------------
def test_api_misuse_raises():
    config = CONFIGS["gcm-transport"]
    with pytest.raises(TypeError, match="not one bytes"):
        encrypt(bytes(tcp4()), config)
    with pytest.raises(TypeError, match="one scapy packet"):
        encrypt(tcp4(), config)
    with pytest.raises(TypeError, match="iterable"):
        encrypt(42, config)
    with pytest.raises(TypeError, match="SaConfig"):
        encrypt([tcp4()], 42)
    for mss in (0, -1, 1.5, True, 1 << 20):
        with pytest.raises(ValueError, match="mss"):
            encrypt([tcp4()], config, mss=mss)
    bad_key = dict(GCM_DICT, key="00" * 3)
    with pytest.raises(ipsecoffload.SaFileError, match="key") as caught:
        encrypt([tcp4()], bad_key)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, IpsecOffloadError)
    assert ipsecoffload.encryptor(config).next_seq == 1  # nothing was sent


def test_keys_never_appear_in_reprs_or_messages():
    config = CONFIGS["cbc-sha256-tunnel4"]
    result = encrypt([tcp4(), b"bad"], config)
    enc = ipsecoffload.encryptor(config)
    text = " ".join([repr(result), repr(enc), repr(enc.sa), repr(enc.config),
                     *[e for e in result.errors if e]])
    for key in (CBC_KEY, SHA256_KEY):
        assert key.hex() not in text and repr(key) not in text
    with pytest.raises(ipsecoffload.SaFileError) as caught:
        encrypt([tcp4()], dict(GCM_DICT, key=GCM_KEY.hex() + "00"))
    assert GCM_KEY.hex() not in str(caught.value)


# -- exceptions -------------------------------------------------------------------------------
def test_one_exception_hierarchy_keeps_the_old_bases():
    expected = {ipsecoffload.SaFileError: ValueError, ipsecoffload.PcapError: Exception,
                ipsecoffload.SequenceNumberExhausted: ValueError,
                ipsecoffload.SaOffloadRefused: RuntimeError}
    for cls, old_base in expected.items():
        assert issubclass(cls, IpsecOffloadError) and issubclass(cls, old_base), cls


def test_errors_raised_are_caught_by_the_base_class(tmp_path):
    not_pcap = tmp_path / "not.pcap"
    not_pcap.write_bytes(b"this is not a capture at all")
    with pytest.raises(IpsecOffloadError):
        ipsecoffload.read_pcap(not_pcap)
    with pytest.raises(IpsecOffloadError):
        ipsecoffload.load_sa_file(not_pcap)
    # a miniport without ESN refuses an ESN SA: SaOffloadRefused, still a RuntimeError
    caps = ipsecoffload.default_capabilities()
    caps.extended_sequence_numbers = False
    esn = SaConfig(spi=0x3010, encryption="aes-gcm-128", key=GCM_KEY, esn=True,
                   mode="tunnel", tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")
    with pytest.raises(RuntimeError, match="NOT_SUPPORTED") as refused:
        Encryptor(esn, miniport=ipsecoffload.Miniport(caps))
    assert isinstance(refused.value, ipsecoffload.SaOffloadRefused)


def test_everything_in_all_is_exported():
    for name in ipsecoffload.__all__:
        assert hasattr(ipsecoffload, name), name
    for name in ("encrypt", "encrypt_pcap", "PcapReader", "PcapWriter", "read_pcap",
                 "write_pcap", "IpsecOffloadError", "SaFileError", "PcapError",
                 "SequenceNumberExhausted", "Miniport", "HostStack", "SaConfig", "__version__"):
        assert name in ipsecoffload.__all__, name


# -- captures ---------------------------------------------------------------------------------
def test_encrypt_pcap_with_sas_as_dicts_and_as_a_file(tmp_path):
    packets = [tcp4(b"p" * n) for n in (10, 500)] + [udp6(), tcp4(b"big" * 1000)]
    plain = tmp_path / "plain.pcap"
    with ipsecoffload.PcapWriter(plain, ipsecoffload.LINKTYPE_RAW) as writer:
        for i, packet in enumerate(packets):
            writer.write(bytes(packet), ts_ns=10**18 + i)
    sas = [dict(GCM_DICT, name="v4", selector={"src": "10.0.0.0/8"})]  # IPv6 passes in clear
    summary = ipsecoffload.encrypt_pcap(plain, tmp_path / "esp.pcap", sas, mss=1000)
    assert isinstance(summary, ipsecoffload.EncryptSummary)
    assert summary.packets_in == 4 and summary.clear.packets == 1
    assert summary.sas["v4"].lso_packets == 1
    linktype, records = ipsecoffload.read_pcap(tmp_path / "esp.pcap")
    assert linktype == ipsecoffload.LINKTYPE_RAW and len(records) == 3 + 3  # 3000 B at 1000
    config = CONFIGS["gcm-transport"]
    assert bytes(opened(records[0].data, config)[0]) == bytes(packets[0])
    assert records[2].data == bytes(udp6())  # no SA: unchanged
    (tmp_path / "sa.json").write_text(json.dumps(sas))
    again = ipsecoffload.encrypt_pcap(plain, tmp_path / "esp2.pcap", tmp_path / "sa.json",
                                      mss=1000)
    assert again.as_dict()["frames_out"] == summary.frames_out == 6
    # each call starts every SA at its seq, as the command line does
    assert (tmp_path / "esp2.pcap").read_bytes() == (tmp_path / "esp.pcap").read_bytes()
    with ipsecoffload.PcapReader(tmp_path / "esp2.pcap") as reader:
        assert [r.data for r in reader] == [r.data for r in records]


def test_encrypt_pcap_takes_sa_configs():
    policies = ipsecoffload.api.sa_policies([CONFIGS["gcm-transport"],
                                             CONFIGS["cbc-sha256-tunnel4"]])
    assert [p.name for p in policies] == ["sa0", "sa1"]
    with pytest.raises(TypeError):
        ipsecoffload.api.sa_policies([42])
    with pytest.raises(ipsecoffload.PcapError):
        ipsecoffload.encrypt_pcap(REPO / "README.md", "/nonexistent/out.pcap",
                                  CONFIGS["gcm-transport"])


# -- README -----------------------------------------------------------------------------------
def test_readme_first_python_example_runs_as_written(capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(example.strip().splitlines()) <= 6
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "SUCCESS" in out



def test_version_is_in_one_place():
    """pyproject.toml reads the version from ipsecoffload/_version.py; nothing else says it."""
    from ipsecoffload import _version

    assert ipsecoffload.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", ipsecoffload.__version__)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'attr = "ipsecoffload._version.__version__"' in pyproject
    assert not re.search(r'(?m)^version\s*=\s*"', pyproject)  # no static version


# -- SA objects parsed once while among the last met (api._parsed) -------------------------------
from ipsecoffload.io.safile import SaFileError  # noqa: E402


def _parse(sa):
    from ipsecoffload.io.safile import parse_sa_list
    return parse_sa_list([dict(sa)], "sa")[0].config


def test_an_sa_dict_changed_between_calls_is_parsed_again():
    from ipsecoffload.api import sa_config
    sa = dict(GCM_DICT, selector={"dst": "192.0.2.0/24"})
    assert sa_config(sa) == _parse(sa)
    sa["spi"] = "0x00003002"  # the same dict object, another content
    assert sa_config(sa).spi == 0x3002
    sa["selector"]["dst"] = "198.51.100.0/24"  # a nested change
    assert sa_config(sa) == _parse(sa)
    sa["key"] = "00"  # a bad key: the error, as the parser gives it, every time
    for _ in range(2):
        with pytest.raises(SaFileError, match="key"):
            sa_config(sa)


@pytest.mark.parametrize("field,values", [("esn", [True, 1, "true", None]),
                                          ("seq", [1, True, 1.0, "1"]),
                                          ("spi", ["0x00003001", 0x3001, 12289.0])])
def test_equal_but_differently_typed_values_are_not_confused(field, values):
    """True == 1 == 1.0: the cache keeps types apart, so each value gets what the parser
    alone says of it (a config or an error)."""
    from ipsecoffload.api import sa_config
    for value in values + values[::-1]:
        sa = dict(GCM_DICT, **{field: value})
        try:
            want = _parse(sa)
        except SaFileError as error:
            with pytest.raises(SaFileError) as got:
                sa_config(sa)
            assert str(got.value) == str(error)
        else:
            assert sa_config(sa) == want


def test_the_parse_cache_is_bounded_and_unhashable_content_is_parsed():
    from ipsecoffload import api
    for k in range(3 * api._PARSED_MAX):
        sa = dict(GCM_DICT, spi=0x4000 + k)
        assert api.sa_config(sa).spi == 0x4000 + k
        assert len(api._parsed) <= api._PARSED_MAX
    odd = dict(GCM_DICT, selector={"dst": "192.0.2.0/24"}, extra={1, 2})  # a set: no image
    with pytest.raises(SaFileError):
        api.sa_config(odd)
    assert api.encryptor(GCM_DICT) is api.encryptor(dict(GCM_DICT))
