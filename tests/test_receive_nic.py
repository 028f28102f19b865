"""The NIC's receive indication on NDIS models, its policies and its state: slots 1 and 12,
offload off, inbound handles never used on send, UPDATE_SA on an inbound SA, SaDeleteReq."""
import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation

from ipsecoffload import HostStack, Miniport, SaConfig, ndis
from ipsecoffload.datapath.batch import PacketBatch
from ipsecoffload.datapath.layout import Delivery, Reason, RxReason

KEY = bytes(range(20))
CONFIG = SaConfig(spi=0x4242, encryption="aes-gcm-128", key=KEY, src="10.0.0.1",
                  dst="10.0.0.2")


def scapy_frames(count, first=1, config=CONFIG, esn_hi=0):
    sa = SecurityAssociation(ESP, spi=config.spi, crypt_algo="AES-GCM", crypt_key=config.key,
                             auth_algo="NULL", esn_en=config.esn, esn=esn_hi)
    plain = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6) / (bytes([i]) * (i + 1)))
             for i in range(count)]
    return plain, [bytes(sa.encrypt(IP(p), seq_num=first + i)) for i, p in enumerate(plain)]


@pytest.fixture(params=[False, True], ids=["compiled", "twin"])
def miniport(request):
    return Miniport(pure_python=request.param)


def inbound(miniport, config=CONFIG):
    entry = config.add_sa_entry(False, inbound=True)
    assert miniport.add_sa(entry) == ndis.NdisStatus.SUCCESS
    return entry.offload_handle


def test_nbl_models_get_the_receive_slots(miniport):
    inbound(miniport)
    plain, esp = scapy_frames(3)
    tampered = bytearray(esp[2])
    tampered[-3] ^= 0x40
    nbls = [ndis.NetBufferList(net_buffers=[ndis.NetBuffer(f)], l2_length=0)
            for f in esp[:2] + [bytes(tampered)] + [plain[1]]]
    miniport.receive(nbls)
    info = [ndis.IpsecOffloadV2ReceiveNblInfo.from_value(n.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2))
            for n in nbls]
    header = [ndis.IpsecOffloadV2HeaderReceiveNblInfo.from_value(
        n.get_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER)) for n in nbls]
    assert [i.crypto_done for i in info] == [True, True, True, False]
    assert [i.crypto_status for i in info[:3]] == [ndis.CryptoStatus.SUCCESS] * 2 + [
        ndis.CryptoStatus.TRANSPORT_ESP_AUTH_FAILED]
    assert not any(i.next_crypto_done or i.sa_delete_req for i in info)
    assert [h.header_info_set for h in header] == [True, True, False, False]
    assert [h.next_header for h in header[:2]] == [17, 17]
    # decrypted in place: header, IV and ICV as received, the plaintext between
    for nb_frame, wire, packet in zip(nbls[:2], esp, plain):
        got = nb_frame.net_buffers[0].data
        assert len(got) == len(wire) and got[:36] == wire[:36] and got[-16:] == wire[-16:]
        assert got[36:36 + len(packet) - 20] == packet[20:]
    assert nbls[2].net_buffers[0].data == bytes(tampered)
    assert nbls[3].net_buffers[0].data == plain[1]


def test_receive_offload_off_gives_no_ipsec_info(miniport):
    inbound(miniport)
    _, esp = scapy_frames(2)
    miniport.set_offload_parameters(ndis.NdisOffloadParameters(
        ipsec_v2=ndis.OffloadIpsecV2.DISABLED))
    result = miniport.receive(PacketBatch.from_frames(esp, l2_len=0))
    assert result.reason_counts() == {"OFFLOAD_OFF": 2}
    assert not result.crypto_done.any()
    assert miniport.counters["rx.OFFLOAD_OFF"] == 2


def test_inbound_handles_are_never_used_on_send(miniport):
    handle = inbound(miniport)
    stack = HostStack(miniport, link="raw")
    sa = stack.add_sa(CONFIG)
    sa.handles[False] = handle  # as if the stack mixed them up
    result = stack.send([bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP())], sa)
    assert result.status.tolist() == [ndis.NdisStatus.FAILURE]
    assert result.reasons.tolist() == [Reason.INBOUND_HANDLE]


def test_update_sa_sets_the_high_word_until_a_packet_verifies(miniport):
    config = SaConfig(spi=0x77, encryption="aes-gcm-128", key=KEY, esn=True, src="10.0.0.1",
                      dst="10.0.0.2")
    handle = inbound(miniport, config)
    _, esp = scapy_frames(2, first=10, config=config, esn_hi=5)
    assert miniport.receive(PacketBatch.from_frames(esp, l2_len=0)).reason_counts() == {
        "AUTH_FAILED": 2}
    update = ndis.IpsecOffloadV2UpdateSa(offload_handle=handle,
                                         operation=ndis.IpsecOperation.ESP, spi=0x77,
                                         sequence_number_high_order=5)
    assert miniport.update_sa(update) == ndis.NdisStatus.SUCCESS
    result = miniport.receive(PacketBatch.from_frames(esp, l2_len=0))
    assert result.reason_counts() == {"OK": 2}
    assert result.seq64.tolist() == [(5 << 32) + 10, (5 << 32) + 11]


def test_sa_delete_req_is_off_by_default_and_honoured_by_the_stack():
    _, esp = scapy_frames(4)
    forged = [bytes(f[:-1] + bytes([f[-1] ^ 1])) for f in esp]
    quiet = HostStack(Miniport(), link="raw")
    quiet.add_inbound_sa(CONFIG)
    got = quiet.receive(forged * 3)
    assert not got.nic.sa_delete_req.any() and got.deleted == []

    stack = HostStack(Miniport(sa_delete_after=3), link="raw")
    outbound = stack.add_sa(CONFIG)
    sa = stack.add_inbound_sa(CONFIG, paired=outbound)
    got = stack.receive(forged[:2] + esp[:1])
    assert not got.nic.sa_delete_req.any()
    got = stack.receive(forged[2:3] + esp[1:2])
    assert got.nic.sa_delete_req.tolist() == [1, 1]
    assert got.deleted == [sa] and sa.removed and outbound.removed
    assert got.delivery.tolist() == [Delivery.CRYPTO, Delivery.DECAP]
    assert len(stack.miniport.sas) == 0
    # afterwards the SA's frames find no SA
    got = stack.receive(esp[2:])
    assert got.nic.reason_counts() == {"NO_SA": 2}
    assert set(got.delivery.tolist()) == {Delivery.NO_SA}


def test_bad_sa_delete_policy_is_refused():
    for bad in (0, -1, "3", 1.5):
        with pytest.raises(ValueError, match="sa_delete_after"):
            Miniport(sa_delete_after=bad)


def test_a_deleted_sa_is_gone_from_the_lookup(miniport):
    handle = inbound(miniport)
    _, esp = scapy_frames(1)
    assert miniport.receive(PacketBatch.from_frames(esp, l2_len=0)).reason_counts() == {"OK": 1}
    miniport.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=handle))
    assert miniport.receive(PacketBatch.from_frames(esp, l2_len=0)).reasons.tolist() == [
        RxReason.NO_SA]


def test_endpoints_select_the_sa_and_zero_is_a_wildcard(miniport):
    other = SaConfig(spi=0x4242, encryption="aes-gcm-128", key=os.urandom(20),
                     src="10.0.0.9", dst="10.0.0.2")
    inbound(miniport, other)  # same SPI, another source: not this packet's SA
    _, esp = scapy_frames(1)
    assert miniport.receive(PacketBatch.from_frames(esp, l2_len=0)).reasons.tolist() == [
        RxReason.NO_SA]
    wildcard = SaConfig(spi=0x4242, encryption="aes-gcm-128", key=KEY)
    inbound(miniport, wildcard)
    assert miniport.receive(PacketBatch.from_frames(esp, l2_len=0)).reason_counts() == {"OK": 1}
