"""Hardening of the OIDs, the command line and the public API (issue 11 items 5 and 6, and the
command-line part of item 2): each test names the fault it guards against."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from ipsecoffload import Miniport, SaConfig, ndis
from ipsecoffload.control.satable import MAX_SERIAL
from ipsecoffload.datapath.layout import HANDLE_SLOT_BITS, HANDLE_SLOT_MASK
from ipsecoffload.ndis import NdisStatus

GCM_KEY = bytes(range(20))
GCM = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY, name="gcm")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _delete(mp: Miniport, handle: int) -> None:
    assert mp.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=handle)) == NdisStatus.SUCCESS


# -- item 5: OIDs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["add_sa", "add_sa_ex"])
@pytest.mark.parametrize("pointer_size", [None, 4])
def test_an_x86_header_size_is_accepted(kind, pointer_size):
    """The Size check used the x64 NDIS_SIZEOF value even for an x86 request."""
    mp = Miniport(pointer_size=pointer_size)
    entry = GCM.add_sa_entry(ipv6=False)
    if kind == "add_sa":
        entry.header.size = ndis.SIZEOF_ADD_SA_REV1[4]
        assert mp.add_sa(entry) == NdisStatus.SUCCESS
    else:
        ex = ndis.IpsecOffloadV2AddSaEx(
            num_ext_hdrs=entry.num_ext_hdrs, flags=entry.flags, src_address=entry.src_address,
            dest_address=entry.dest_address, sec_assoc=entry.sec_assoc, key_data=entry.key_data)
        ex.header.size = ndis.SIZEOF_ADD_SA_EX_REV1[4]
        raw = ex.to_bytes(4)
        status = mp.add_sa_ex(raw) if pointer_size == 4 else mp.add_sa_ex(ex)
        assert status == NdisStatus.SUCCESS
    assert len(mp.sas) == 1


def test_an_x86_size_is_too_small_for_an_x64_miniport():
    mp = Miniport(pointer_size=8)
    entry = GCM.add_sa_entry(ipv6=False)
    entry.header.size = ndis.SIZEOF_ADD_SA_REV1[4]
    assert mp.add_sa(entry) == NdisStatus.INVALID_DATA
    entry.header.size = ndis.SIZEOF_ADD_SA_REV1[8]
    assert mp.add_sa(entry) == NdisStatus.SUCCESS


def test_pointer_size_is_checked():
    with pytest.raises(ValueError, match="pointer_size"):
        Miniport(pointer_size=2)


def test_handles_stay_below_2_to_the_32_and_fit_the_x86_layout():
    """After 4096 ADDs the serial pushed handles past 2**32: the x86 OffloadHandle (32 bits)
    could not carry them."""
    mp = Miniport()
    seen = set()
    for i in range(MAX_SERIAL + 10):
        entry = GCM.add_sa_entry(ipv6=False)
        assert mp.add_sa(entry) == NdisStatus.SUCCESS, i
        handle = entry.offload_handle
        assert 0 < handle < 2**32
        assert ndis.IpsecOffloadV2AddSa.from_bytes(entry.to_bytes(4), 4).offload_handle == handle
        if i < MAX_SERIAL:
            assert handle not in seen  # no handle comes back before MAX_SERIAL more ADDs
        seen.add(handle)
        _delete(mp, handle)
    assert mp.counters["sa_added"] == MAX_SERIAL + 10


def test_a_live_handle_is_never_issued_again():
    mp = Miniport()
    keep = GCM.add_sa_entry(ipv6=False)
    assert mp.add_sa(keep) == NdisStatus.SUCCESS
    other = SaConfig(spi=0x2002, encryption="aes-gcm-128", key=GCM_KEY)
    for _ in range(MAX_SERIAL + 5):
        entry = other.add_sa_entry(ipv6=False)
        assert mp.add_sa(entry) == NdisStatus.SUCCESS
        assert entry.offload_handle != keep.offload_handle
        assert entry.offload_handle & HANDLE_SLOT_MASK != keep.offload_handle & HANDLE_SLOT_MASK
        _delete(mp, entry.offload_handle)
    assert mp.sa_record(keep.offload_handle)["spi"] == 0x1001
    assert keep.offload_handle >> HANDLE_SLOT_BITS == 1


def test_a_duplicate_inbound_spi_for_the_same_destination_is_refused():
    """Two inbound SAs with equal SPI, endpoints, IP version and UDP encapsulation: the
    receive lookup (docs/spec-gaps.md G28) can never find the second; it was accepted
    silently."""
    mp = Miniport()
    first = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY, dst="192.0.2.7")
    again = SaConfig(spi=0x1001, encryption="aes-gcm-128", key=bytes(20), dst="192.0.2.7")
    entry = first.add_sa_entry(ipv6=False, inbound=True)
    assert mp.add_sa(entry) == NdisStatus.SUCCESS
    assert mp.add_sa(again.add_sa_entry(ipv6=False, inbound=True)) == NdisStatus.INVALID_DATA
    assert mp.counters["add_sa_rejected.INVALID_DATA"] == 1
    # what the lookup does tell apart is accepted
    for sa, ipv6 in ((again, True),
                     (SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY,
                               dst="192.0.2.8"), False),
                     (SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY,
                               src="192.0.2.1", dst="192.0.2.7"), False),
                     (SaConfig(spi=0x1002, encryption="aes-gcm-128", key=GCM_KEY,
                               dst="192.0.2.7"), False),
                     (SaConfig(spi=0x1001, encryption="aes-gcm-128", key=GCM_KEY,
                               dst="192.0.2.7", udp_encap=(4500, 4500)), False)):
        assert mp.add_sa(sa.add_sa_entry(ipv6=ipv6, inbound=True)) == NdisStatus.SUCCESS
    # once the first is deleted its SPI is free again
    _delete(mp, entry.offload_handle)
    assert mp.add_sa(again.add_sa_entry(ipv6=False, inbound=True)) == NdisStatus.SUCCESS


def test_a_duplicate_outbound_spi_is_counted():
    """Outbound SAs are found by handle: a duplicate is accepted, but not silently."""
    mp = Miniport()
    entries = [GCM.add_sa_entry(ipv6=False) for _ in range(3)]
    for entry in entries:
        assert mp.add_sa(entry) == NdisStatus.SUCCESS
    assert mp.counters["sa_added_duplicate_spi"] == 2
    assert mp.add_sa(GCM.add_sa_entry(ipv6=False, inbound=True)) == NdisStatus.SUCCESS
    _delete(mp, entries[0].offload_handle)
    assert mp.add_sa(GCM.add_sa_entry(ipv6=False)) == NdisStatus.SUCCESS
    assert mp.counters["sa_added_duplicate_spi"] == 3
    for entry in entries[1:]:
        _delete(mp, entry.offload_handle)
    assert mp.counters["sa_added_duplicate_spi"] == 3
