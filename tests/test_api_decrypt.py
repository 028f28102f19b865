"""ipsecoffload.decrypt: one entry per input, statuses, windows that continue, scapy in, and
what scapy encrypted decrypts."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation

import ipsecoffload
from ipsecoffload import SaConfig

SA = {"spi": "0x3001", "encryption": "aes-gcm-128", "key": "11" * 20}
TUNNEL = {"spi": 0x3002, "encryption": "aes-cbc-128", "key": "22" * 16,
          "integrity": "hmac-sha256-128", "auth_key": "33" * 32, "mode": "tunnel",
          "tunnel": {"src": "192.0.2.1", "dst": "192.0.2.2"}, "esn": True,
          "seq": 2**32 - 2}


@pytest.fixture(autouse=True)
def fresh_state():
    ipsecoffload.forget_sa()
    ipsecoffload.forget_decryptors()
    yield
    ipsecoffload.forget_sa()
    ipsecoffload.forget_decryptors()


def plain():
    return [IP(src="10.0.0.1", dst="10.0.0.2") / TCP(seq=i) / (b"p" * i) for i in range(5)] + [
        IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP() / b"six"]


def test_round_trip_every_packet_back():
    packets = plain()
    sent = ipsecoffload.encrypt(packets, SA)
    back = ipsecoffload.decrypt(sent, SA)
    assert back.status == ("SUCCESS",) * len(packets)
    assert list(back) == [bytes(p) for p in packets]


def test_one_status_per_input_and_no_exception():
    packets = plain()
    sent = list(ipsecoffload.encrypt(packets, [SA][0]))
    tampered = bytearray(sent[1])
    tampered[-1] ^= 1
    inputs = [sent[0], bytes(tampered), bytes(packets[2]), sent[0], b"\x45junk", "text",
              ipsecoffload.encrypt([packets[3]], {**SA, "spi": 0x9999})[0]]
    back = ipsecoffload.decrypt(inputs, SA)
    assert back.status == ("SUCCESS", "TRANSPORT_ESP_AUTH_FAILED", "CLEAR", "REPLAYED",
                           "MALFORMED", "MALFORMED", "NO_SA")
    assert back[1] == b"" and back[2] == bytes(packets[2])
    assert all(e for e in back.errors[1:2] + back.errors[3:])
    assert not back.ok and back.failed == [1, 3, 4, 5, 6]


def test_windows_continue_from_call_to_call():
    sent = list(ipsecoffload.encrypt(plain(), SA))
    assert ipsecoffload.decrypt(sent[:3], SA).ok
    assert ipsecoffload.decrypt(sent[:3], SA).status == ("REPLAYED",) * 3
    assert ipsecoffload.decrypt(sent[3:], SA).ok
    ipsecoffload.forget_decryptors()
    assert ipsecoffload.decrypt(sent[:1], SA).ok


def test_several_sas_and_a_tunnel_crossing_2_32():
    first = ipsecoffload.encrypt(plain()[:2], SA)
    second = ipsecoffload.encrypt(plain(), TUNNEL)
    back = ipsecoffload.decrypt(list(second) + list(first), [SA, TUNNEL])
    assert back.ok
    assert list(back) == [bytes(p) for p in plain()] + [bytes(p) for p in plain()[:2]]


def test_scapy_in_scapy_encrypted():
    config = SaConfig(spi=0x3003, encryption="aes-gcm-256", key=bytes(range(36)))
    sa = SecurityAssociation(ESP, spi=0x3003, crypt_algo="AES-GCM", crypt_key=config.key,
                             auth_algo="NULL")
    packets = plain()[:4]
    esp = [sa.encrypt(p, seq_num=i + 1) for i, p in enumerate(packets)]  # scapy packets in
    back = ipsecoffload.decrypt(esp, config)
    assert back.ok and list(back) == [bytes(p) for p in packets]
    assert [bytes(p) for p in back.to_scapy()] == [bytes(p) for p in packets]


def test_misuse_raises():
    with pytest.raises(TypeError):
        ipsecoffload.decrypt(b"one packet", SA)
    with pytest.raises(TypeError):
        ipsecoffload.decrypt([], [])
    with pytest.raises(ipsecoffload.SaFileError):
        ipsecoffload.decrypt([], {"spi": 1, "encryption": "rot13"})
