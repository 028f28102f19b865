"""The SA file (README.md, "SA file"): loading, validation messages, selectors, saving, and the
Wireshark esp_sa table."""
import json

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)

from ipsecoffload.host.packetinfo import MalformedPacket, parse_packet
from ipsecoffload.io.safile import (SaFileError, SaPolicy, Selector, load_sa_file, save_sa_file,
                                 wireshark_esp_sa)
from ipsecoffload.host.saconfig import SaConfig

GCM_KEY = "00112233445566778899aabbccddeeff" + "cafebabe"
CBC_KEY = "a0" * 32
HMAC_KEY = "b1" * 32


def design_example():
    """The SA file of README.md's "SA file" example, with real keys."""
    return [
        {"name": "web", "selector": {"src": "10.0.0.0/8", "dst": "10.1.0.0/16", "proto": "tcp",
                                     "dport": 443},
         "protocol": "esp", "mode": "transport", "spi": "0x00001001",
         "encryption": "aes-gcm-128", "icv_len": 16, "key": GCM_KEY, "integrity": None,
         "auth_key": None, "esn": False, "seq": 1},
        {"name": "site", "selector": {"src": "2001:db8::/32"}, "protocol": "esp",
         "mode": "tunnel", "tunnel": {"src": "2001:db8:ffff::1", "dst": "2001:db8:ffff::2"},
         "spi": 4098, "encryption": "aes-cbc-256", "key": CBC_KEY,
         "integrity": "hmac-sha256-128", "auth_key": HMAC_KEY, "esn": True,
         "seq": 4294967290, "udp_encap": {"sport": 4500, "dport": 4500}},
    ]


def write(tmp_path, document, name="sa.json"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_design_example_loads(tmp_path):
    web, site = load_sa_file(write(tmp_path, design_example()))
    assert web.name == "web" and web.config.spi == 0x1001
    assert web.config.encryption == "aes-gcm-128" and web.config.key == bytes.fromhex(GCM_KEY)
    assert web.selector == Selector(src="10.0.0.0/8", dst="10.1.0.0/16", proto="tcp", dport=443)
    assert site.config.mode == "tunnel" and site.config.tunnel_dst == "2001:db8:ffff::2"
    assert site.config.esn and site.config.seq == 4294967290
    assert site.config.udp_encap == (4500, 4500) and site.config.auth_key == bytes.fromhex(HMAC_KEY)


def test_minimal_sa_gets_defaults_and_an_index_name(tmp_path):
    [policy] = load_sa_file(write(tmp_path, [{"spi": 7, "encryption": "aes-gcm-256",
                                              "key": "0x" + "11" * 36}]))
    assert policy.name == "sa0" and policy.selector == Selector()
    assert policy.config.mode == "transport" and policy.config.seq == 1 and not policy.config.esn


def test_save_then_load_gives_the_same_sas(tmp_path):
    policies = load_sa_file(write(tmp_path, design_example()))
    save_sa_file(tmp_path / "again.json", policies)
    assert load_sa_file(tmp_path / "again.json") == policies


def test_keys_stay_out_of_reprs(tmp_path):
    policies = load_sa_file(write(tmp_path, design_example()))
    text = repr(policies)
    for key in (GCM_KEY, CBC_KEY, HMAC_KEY):
        assert key not in text and repr(bytes.fromhex(key)) not in text


def sa(**changes):
    entry = dict(design_example()[0])
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not Ellipsis}


# (document, words the message must contain)
BAD_FILES = {
    "not a list": ({"spi": 1}, ["must be a JSON list"]),
    "empty list": ([], ["lists no SA"]),
    "entry not an object": ([1], ["SA at index 0", "JSON object"]),
    "unknown key": ([sa(colour="red")], ["SA 'web'", "unknown key", "'colour'", "'spi'"]),
    "unknown key, unnamed": ([sa(), sa(name=..., colour=1)], ["SA at index 1", "'colour'"]),
    "missing spi": ([sa(spi=...)], ["SA 'web'", "spi is missing"]),
    "spi text": ([sa(spi="4097")], ["spi", "hex string"]),
    "spi zero": ([sa(spi=0)], ["spi", "0xFFFFFFFF"]),
    "unknown encryption": ([sa(encryption="aes-gcm-512")],
                           ["SA 'web'", "encryption", "'aes-gcm-512'", "'aes-gcm-128'",
                            "'aes-cbc-256'", "'null'"]),
    "key length": ([sa(key="00" * 16)], ["SA 'web'", "key", "20 bytes", "4-byte salt",
                                         "got 16 bytes"]),
    "key not hex": ([sa(key="zz" * 20)], ["SA 'web'", "key", "hex"]),
    "key not a string": ([sa(key=1234)], ["key", "hex string"]),
    "integrity with gcm": ([sa(integrity="hmac-sha1-96")], ["integrity", "null with AES-GCM"]),
    "cbc without integrity": ([sa(encryption="aes-cbc-256", key=CBC_KEY, icv_len=...)],
                              ["integrity", "'hmac-sha256-128'"]),
    "unknown integrity": ([sa(encryption="aes-cbc-256", key=CBC_KEY, icv_len=...,
                              integrity="hmac-sha3", auth_key=HMAC_KEY)],
                          ["integrity", "'hmac-sha3'", "'hmac-sha1-96'"]),
    "auth key length": ([sa(encryption="aes-cbc-256", key=CBC_KEY, icv_len=...,
                            integrity="hmac-sha1-96", auth_key=HMAC_KEY)],
                        ["auth_key", "20 bytes", "got 32 bytes"]),
    "icv_len": ([sa(icv_len=10)], ["icv_len", "8, 12, 16"]),
    "mode": ([sa(mode="bridge")], ["mode", "'transport' or 'tunnel'"]),
    "protocol unknown": ([sa(protocol="gre")], ["protocol", "'esp'", "'ah'", "'ah+esp'"]),
    "ah with encryption": ([sa(protocol="ah", integrity="hmac-sha1-96", auth_key="00" * 20)],
                           ["encryption"]),
    "ah+esp without ah": ([sa(protocol="ah+esp")], ["ah"]),
    "tunnel without dst": ([sa(mode="tunnel", tunnel={"src": "10.0.0.1"})],
                           ["tunnel", "src and dst"]),
    "tunnel unknown key": ([sa(mode="tunnel", tunnel={"src": "10.0.0.1", "dst": "10.0.0.2",
                                                       "ttl": 3})], ["tunnel", "'ttl'"]),
    "tunnel mixed versions": ([sa(mode="tunnel", tunnel={"src": "10.0.0.1", "dst": "::1"})],
                              ["tunnel", "same IP version"]),
    "tunnel in transport": ([sa(tunnel={"src": "10.0.0.1", "dst": "10.0.0.2"})],
                            ["tunnel", "only for mode 'tunnel'"]),
    "esn not bool": ([sa(esn="yes")], ["esn", "true or false"]),
    "seq not int": ([sa(seq="1")], ["seq", "integer"]),
    "seq too big without esn": ([sa(seq=2**32)], ["seq", "without ESN"]),
    "udp_encap port": ([sa(udp_encap={"sport": 0, "dport": 4500})], ["udp_encap", "1-65535"]),
    "udp_encap unknown key": ([sa(udp_encap={"port": 4500})], ["udp_encap", "'port'"]),
    "selector unknown key": ([sa(selector={"dst_port": 1})], ["selector", "'dst_port'",
                                                              "'dport'"]),
    "selector bad prefix": ([sa(selector={"src": "10.0.0.300/8"})], ["selector.src"]),
    "selector mixed versions": ([sa(selector={"src": "10.0.0.0/8", "dst": "::/0"})],
                                ["selector.src", "same IP version"]),
    "selector proto": ([sa(selector={"proto": "sctp"})], ["selector.proto", "'tcp'", "0-255"]),
    "selector port": ([sa(selector={"dport": 70000})], ["selector.dport", "0-65535"]),
    "ports with icmp": ([sa(selector={"proto": "icmp", "dport": 1})],
                        ["selector.dport", "'tcp' or 'udp'"]),
    "duplicate name": ([sa(), sa(spi=5)],
                       ["SA at index 1", "'web'", "already used", "index 0"]),
}


@pytest.mark.parametrize("document, words", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_sa_files_are_named_precisely(tmp_path, document, words):
    path = write(tmp_path, document)
    with pytest.raises(SaFileError) as caught:
        load_sa_file(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    for word in words:
        assert word in message
    for key in (GCM_KEY, CBC_KEY, HMAC_KEY, "00" * 16, "zz" * 20):
        assert key not in message
    assert "\n" not in message


def test_bad_json_reports_the_position_not_the_content(tmp_path):
    path = write(tmp_path, '[{"key": "' + GCM_KEY + '", }]')
    with pytest.raises(SaFileError, match="not valid JSON.*line 1 column") as caught:
        load_sa_file(path)
    assert GCM_KEY not in str(caught.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(SaFileError, match="cannot read SA file"):
        load_sa_file(tmp_path / "nope.json")
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SaFileError, match="not UTF-8|not valid JSON"):
        load_sa_file(path)


# -- selectors -------------------------------------------------------------------------------
def test_selector_addresses_protocol_and_ports():
    https = bytes(IP(src="10.0.0.1", dst="10.1.2.3") / TCP(sport=1234, dport=443))
    web = Selector(src="10.0.0.0/8", dst="10.1.0.0/16", proto="tcp", dport=443)
    assert web.matches(https)
    assert not web.matches(bytes(IP(src="10.0.0.1", dst="10.2.2.3") / TCP(dport=443)))
    assert not web.matches(bytes(IP(src="10.0.0.1", dst="10.1.2.3") / TCP(dport=80)))
    assert not web.matches(bytes(IP(src="10.0.0.1", dst="10.1.2.3") / UDP(dport=443)))
    assert not web.matches(bytes(IPv6() / TCP(dport=443)))  # other IP version
    assert Selector().matches(https) and Selector(proto=6).matches(https)
    assert Selector(sport=1234).matches(https) and not Selector(sport=1).matches(https)


def test_icmp_means_icmp_and_icmpv6():
    icmp = Selector(proto="icmp")
    assert icmp.matches(bytes(IP() / ICMP()))
    assert icmp.matches(bytes(IPv6() / ICMPv6EchoRequest()))
    assert not icmp.matches(bytes(IP() / UDP()))
    assert Selector(proto=58).matches(bytes(IPv6() / ICMPv6EchoRequest()))
    assert not Selector(proto=1).matches(bytes(IPv6() / ICMPv6EchoRequest()))


def test_ipv6_extension_headers_are_skipped_to_the_ports():
    packet = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop()
                   / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / UDP(sport=5, dport=53))
    assert Selector(src="2001:db8::/32", proto="udp", dport=53).matches(packet)
    info = parse_packet(packet)
    assert (info.proto, info.sport, info.dport, info.fragment) == (17, 5, 53, False)


def test_later_fragments_have_no_ports():
    first = bytes(IP(flags="MF", frag=0) / TCP(dport=443) / (b"x" * 64))
    later = bytes(IP(proto=6, frag=100) / (b"x" * 64))
    assert Selector(dport=443).matches(first) and parse_packet(first).fragment
    assert not Selector(dport=443).matches(later)
    assert Selector(proto="tcp").matches(later)  # the protocol is still known
    later6 = bytes(IPv6() / IPv6ExtHdrFragment(nh=6, offset=10) / (b"x" * 64))
    assert not Selector(dport=443).matches(later6) and Selector(proto="tcp").matches(later6)
    assert parse_packet(later6).fragment


@pytest.mark.parametrize("packet, reason", [
    (b"", "empty"),
    (b"\x50" + bytes(30), "not IPv4 or IPv6"),
    (bytes(IP() / TCP())[:30], "truncated"),
    (bytes(IPv6() / UDP())[:44], "truncated"),
    (b"\x44" + bytes(IP() / TCP())[1:], "bad IPv4 header"),
    (bytes(IP() / TCP(dataofs=15)), "bad TCP header"),
], ids=["empty", "version", "ipv4 truncated", "ipv6 truncated", "ihl", "tcp data offset"])
def test_malformed_packets(packet, reason):
    with pytest.raises(MalformedPacket) as caught:
        parse_packet(packet)
    assert caught.value.reason == reason
    assert not Selector().matches(packet)


def test_link_padding_is_not_part_of_the_packet():
    packet = bytes(IP() / UDP() / b"hi")
    info = parse_packet(packet + bytes(20))
    assert info.length == len(packet)


# -- Wireshark esp_sa ------------------------------------------------------------------------
def fields(line):
    assert line.startswith('"') and line.endswith('"')
    return line[1:-1].split('","')


def test_wireshark_table_format(tmp_path):
    web, site = load_sa_file(write(tmp_path, design_example()))
    lines = wireshark_esp_sa([web, site])
    assert [fields(line) for line in lines] == [
        ["IPv4", "*", "*", "0x00001001", "AES-GCM with 16 octet ICV [RFC4106]",
         "0x" + GCM_KEY, "NULL", ""],  # the GCM key includes the salt
        ["IPv6", "2001:db8:ffff::1", "2001:db8:ffff::2", "0x00001002", "AES-CBC [RFC3602]",
         "0x" + CBC_KEY, "HMAC-SHA-256-128 [RFC4868]", "0x" + HMAC_KEY],
    ]


def policy(name, selector=Selector(), **config):
    return SaPolicy(name, selector, SaConfig(name=name, **config))


@pytest.mark.parametrize("config, encryption, authentication", [
    (dict(encryption="aes-gcm-192", key=bytes(28), icv_len=8),
     "AES-GCM with 8 octet ICV [RFC4106]", "NULL"),
    (dict(encryption="aes-gcm-256", key=bytes(36), icv_len=12),
     "AES-GCM with 12 octet ICV [RFC4106]", "NULL"),
    (dict(encryption="aes-cbc-128", key=bytes(16), integrity="hmac-sha1-96",
          auth_key=bytes(20)), "AES-CBC [RFC3602]", "HMAC-SHA-1-96 [RFC2404]"),
    (dict(encryption="aes-cbc-192", key=bytes(24), integrity="hmac-md5-96",
          auth_key=bytes(16)), "AES-CBC [RFC3602]", "HMAC-MD5-96 [RFC2403]"),
    (dict(encryption="null", integrity="hmac-sha256-128", auth_key=bytes(32)),
     "NULL", "HMAC-SHA-256-128 [RFC4868]"),
    # Wireshark has no AES-GMAC: the NULL-encrypted payload shows, the ICV goes unchecked
    (dict(encryption="null", integrity="aes-gmac-128", auth_key=bytes(20)),
     "NULL", "ANY 128 bit authentication [no checking]"),
], ids=["gcm-icv8", "gcm-icv12", "cbc-sha1", "cbc-md5", "null-sha256", "gmac"])
def test_wireshark_algorithm_names(config, encryption, authentication):
    [line] = wireshark_esp_sa([policy("x", Selector(src="10.0.0.1", dst="10.2.0.0/16"),
                                      spi=0xABC, **config)])
    row = fields(line)
    assert len(row) == 8
    assert row[:5] == ["IPv4", "10.0.0.1", "*", "0x00000ABC", encryption]
    assert row[6] == authentication
    assert row[5] == ("0x" + config["key"].hex() if config.get("key") else "")


def test_wireshark_transport_sa_without_addresses_gets_both_versions():
    lines = wireshark_esp_sa([policy("any", spi=9, encryption="aes-gcm-128", key=bytes(20))])
    assert [fields(line)[:3] for line in lines] == [["IPv4", "*", "*"], ["IPv6", "*", "*"]]
