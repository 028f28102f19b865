"""Miniport: the NIC object users hold — capabilities, offload parameters, the IPsecOV2 SA
OIDs, and MiniportSendNetBufferLists (docs/protocol.md)."""
from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .. import ndis
from ..datapath.arenas import ArenaRecycler
from ..datapath.batch import PacketBatch
from ..crypto import CryptoBackend, backends_for
from ..datapath.layout import (COUNTERS, HANDLE_SLOT_MASK, NAT_T_PORT, REASON_COUNT,
                               RX_REASON_COUNT, STATUS_COUNTER_NAMES, Config, IcvSpace,
                               IvSource, Reason, RxConfig, RxReason, nat_t_port_set)
from ..datapath.rx import ReceiveResult, run_receive
from ..ndis import NdisStatus
from ..control.satable import SaRejected, SaTable
from ..datapath.tx import SendResult, load_kernels, run_send

Auth, Enc = ndis.AuthenticationAlgorithm, ndis.EncryptionAlgorithm
_ESP_IPV4, _ESP_IPV6, _LSO_V1 = int(Config.ESP_IPV4), int(Config.ESP_IPV6), int(Config.LSO_V1)
_LSO_V2_IPV4, _LSO_V2_IPV6 = int(Config.LSO_V2_IPV4), int(Config.LSO_V2_IPV6)
_LSO_WITH_IPSEC = int(Config.LSO_WITH_IPSEC)
_AH_IPV4, _AH_IPV6 = int(Config.AH_IPV4), int(Config.AH_IPV6)
_TUNNEL_ALONE_SINGLE = int(Config.TUNNEL_ALONE_SINGLE)
_DISABLED_FAIL = int(Config.DISABLED_FAIL)
_TRANSPORT_TUNNEL = int(Config.TRANSPORT_TUNNEL)
_RX_IPV4_OPTIONS, _RX_IPV6_EXT_HEADERS = int(RxConfig.IPV4_OPTIONS), int(RxConfig.IPV6_EXT_HEADERS)
DISABLED_POLICIES = ("pass", "fail")
# The most output bytes (frames and AH scratch) one send allocates; NBLs past it complete
# with NDIS_STATUS_RESOURCES (docs/send-path.md, "Limits"). HostStack splits its batches.
MAX_SEND_OUTPUT = 256 << 20
TUNNEL_HANDLE_ALONE = ("fail", "single")


def default_capabilities(capacity: int = 4096) -> ndis.NdisIpsecOffloadV2:
    """What this emulator supports (docs/protocol.md): ESP, AH and AH+ESP bundles, transport,
    tunnel and transport over tunnel (two handles), ESN, UDP-ESP, LSO with ESP; AES-GCM, AES-GMAC, AES-CBC + HMAC and
    NULL + HMAC for ESP, HMAC and AES-GMAC for AH."""
    return ndis.NdisIpsecOffloadV2(
        encapsulation=ndis.NDIS_ENCAPSULATION_IEEE_802_3 | ndis.NDIS_ENCAPSULATION_NULL,
        ipv6_supported=True, ipv4_options=True, ipv6_non_ipsec_extension_headers=True,
        ah=True, esp=True, ah_esp_combined=True, transport=True, tunnel=True,
        transport_tunnel_combined=True, lso_supported=True, extended_sequence_numbers=True,
        udp_esp=(ndis.UdpEspEncapsulation.TRANSPORT | ndis.UdpEspEncapsulation.TUNNEL
                 | ndis.UdpEspEncapsulation.TRANSPORT_OVER_UDP_ESP_TUNNEL
                 | ndis.UdpEspEncapsulation.UDP_ESP_TRANSPORT_OVER_TUNNEL),
        authentication_algorithms=int(Auth.MD5 | Auth.SHA_1 | Auth.SHA_256 | Auth.AES_GCM_128
                                      | Auth.AES_GCM_192 | Auth.AES_GCM_256),
        encryption_algorithms=int(Enc.NONE | Enc.AES_GCM_128 | Enc.AES_GCM_192 | Enc.AES_GCM_256
                                  | Enc.AES_CBC_128 | Enc.AES_CBC_192 | Enc.AES_CBC_256),
        sa_offload_capacity=capacity)


@dataclasses.dataclass
class OffloadState:
    """What OID_TCP_OFFLOAD_PARAMETERS has switched on (docs/protocol.md); on by default."""
    esp_ipv4: bool = True
    esp_ipv6: bool = True
    ah_ipv4: bool = True
    ah_ipv6: bool = True
    lso_v1: bool = True
    lso_v2_ipv4: bool = True
    lso_v2_ipv6: bool = True


class Miniport:
    """An emulated IPsecOV2 NIC.

    ``iv_source`` and ``icv_space`` are the docs/spec-gaps.md G5 and G4 policies; ``random_source``
    (``n -> n bytes``) feeds CBC IVs and can be replaced for reproducible output;
    ``sa_delete_after`` (off by default) sets SaDeleteReq on the received frames of an inbound
    SA once it has had that many ICV failures. ``tunnel_handle_alone`` is G13: a TunnelHandle
    without an OffloadHandle fails the NBL (``"fail"``, default) or names the single SA
    (``"single"``). ``disabled_policy`` is G21: with offload off for what a frame's handle
    needs, ``"pass"`` (default) sends a non-LSO frame unchanged and fails an LSO frame (an
    ESP-framed super-packet cannot be segmented as plain TCP); ``"fail"`` fails every frame
    that carries a handle. ``lso_v1`` / ``lso_v2`` are the NDIS LSO capabilities
    (MaxOffLoadSize, MinSegmentCount; defaults 65535 and 2) that send enforces;
    ``max_send_output`` caps the output bytes of one send (default 256 MiB).
    ``pointer_size`` is the OID buffer layout (4: x86, 8: x64): raw ADD_SA_EX
    bytes are read in it (x64 when None) and an ADD header's ``Size`` is checked against its
    ``NDIS_SIZEOF`` value; None accepts the ``Size`` of either layout (docs/spec-gaps.md G26).
    ``nat_t_ports`` are the UDP ports whose datagrams receive parses as UDP-ESP (source or
    destination port; at most NAT_T_MAX_PORTS, default 4500 alone; docs/spec-gaps.md G31);
    ``HostStack.add_inbound_sa`` adds the port of a ``udp_encap`` SA that is not in it.
    """

    def __init__(self, capabilities: Optional[ndis.NdisIpsecOffloadV2] = None, *,
                 iv_source: Union[str, IvSource] = "nic",
                 icv_space: Union[str, IcvSpace] = "auto", strict_salt: bool = False,
                 random_source: Callable[[int], bytes] = os.urandom,
                 backend: Optional[CryptoBackend] = None, pure_python: Optional[bool] = None,
                 sa_delete_after: Optional[int] = None, tunnel_handle_alone: str = "fail",
                 disabled_policy: str = "pass",
                 lso_v1: Optional[ndis.NdisTcpLargeSendOffloadV1] = None,
                 lso_v2: Optional[ndis.NdisTcpLargeSendOffloadV2] = None,
                 max_send_output: int = MAX_SEND_OUTPUT, pointer_size: Optional[int] = None,
                 nat_t_ports: Sequence[int] = (NAT_T_PORT,)):
        if pointer_size not in (None, 4, 8) or isinstance(pointer_size, bool):
            raise ValueError(f"pointer_size must be None, 4 (x86) or 8 (x64), "
                             f"got {pointer_size!r}")
        self.pointer_size = pointer_size
        self.nat_t_ports = nat_t_ports  # the setter checks it
        if tunnel_handle_alone not in TUNNEL_HANDLE_ALONE:
            raise ValueError(f"tunnel_handle_alone must be one of "
                             f"{', '.join(map(repr, TUNNEL_HANDLE_ALONE))}, "
                             f"got {tunnel_handle_alone!r}")
        self.tunnel_handle_alone = tunnel_handle_alone
        if disabled_policy not in DISABLED_POLICIES:
            raise ValueError(f"disabled_policy must be one of "
                             f"{', '.join(map(repr, DISABLED_POLICIES))}, got {disabled_policy!r}")
        self.disabled_policy = disabled_policy
        self.lso_v1 = lso_v1 if lso_v1 is not None else ndis.NdisTcpLargeSendOffloadV1()
        self.lso_v2 = lso_v2 if lso_v2 is not None else ndis.NdisTcpLargeSendOffloadV2()
        if not isinstance(self.lso_v1, ndis.NdisTcpLargeSendOffloadV1) or not isinstance(
                self.lso_v2, ndis.NdisTcpLargeSendOffloadV2):
            raise TypeError("lso_v1 / lso_v2 must be NdisTcpLargeSendOffloadV1 / V2")
        if isinstance(max_send_output, bool) or not isinstance(max_send_output, int) \
                or not 1 <= max_send_output <= 1 << 40:
            raise ValueError(f"max_send_output must be a number of bytes from 1 to 2**40, "
                             f"got {max_send_output!r}")
        self.max_send_output = max_send_output
        self.send_limits()  # checks the LSO values
        if capabilities is not None and not isinstance(capabilities, ndis.NdisIpsecOffloadV2):
            raise TypeError(f"capabilities must be an NdisIpsecOffloadV2 (see "
                            f"default_capabilities()), got {type(capabilities).__name__}")
        capacity = (capabilities or ndis.NdisIpsecOffloadV2()).sa_offload_capacity
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capabilities.sa_offload_capacity must be an integer, got "
                            f"{type(capacity).__name__}")
        for name, flag in (("strict_salt", strict_salt), ("pure_python", pure_python)):
            if not isinstance(flag, bool) and not (name == "pure_python" and flag is None):
                raise TypeError(f"{name} must be True or False, got {type(flag).__name__}")
        if not callable(random_source):
            raise TypeError(f"random_source must be a callable n -> n bytes, got "
                            f"{type(random_source).__name__}")
        self.capabilities = capabilities or default_capabilities()
        self.iv_source = _policy(IvSource, iv_source, "iv_source")
        self.icv_space = _policy(IcvSpace, icv_space, "icv_space")
        self.strict_salt = strict_salt
        if sa_delete_after is not None and (not isinstance(sa_delete_after, int)
                                            or isinstance(sa_delete_after, bool)
                                            or not 1 <= sa_delete_after <= 0xFFFFFFFF):
            raise ValueError(f"sa_delete_after must be None (off) or a positive number of ICV "
                             f"failures, got {sa_delete_after!r}")
        # SaDeleteReq policy (docs/receive-path.md): off, or after this many ICV failures of
        # an inbound SA the NIC asks the stack to delete it on every frame of that SA
        self.sa_delete_after = sa_delete_after
        self.random_source = random_source
        self.kernels = load_kernels(pure_python)
        self.backends = backends_for(self.kernels, backend)
        self.backend = backend or self.backends[1]
        self.offload = OffloadState()
        self.sas = SaTable(max(1, self.capabilities.sa_offload_capacity))
        self._oid_counts: Counter = Counter()
        # tx_plan's counters, then frames and bytes out, summed by tx_run (totals)
        self._send_counts = np.zeros(COUNTERS + 2, np.int64)
        # the last send's and receive's output arenas, offered back (datapath/arenas.py)
        self._tx_arenas, self._rx_arenas = ArenaRecycler(), ArenaRecycler()
        self._recv_counts = np.zeros(RX_REASON_COUNT, np.int64)  # rx reasons, summed
        self._counter_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Miniport({len(self.sas)} SAs, iv_source={self.iv_source.name.lower()}, "
                f"icv_space={self.icv_space.name.lower()}, kernels={self.kernels.__name__})")

    # -- OIDs ----------------------------------------------------------------------------
    def set_information(self, oid: int, info) -> NdisStatus:
        """An NDIS set request (direct OIDs included)."""
        handlers: dict[int, Callable[[Any], NdisStatus]] = {
            ndis.OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA: self.add_sa,
            ndis.OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA_EX: self.add_sa_ex,
            ndis.OID_TCP_TASK_IPSEC_OFFLOAD_V2_DELETE_SA: self.delete_sa,
            ndis.OID_TCP_TASK_IPSEC_OFFLOAD_V2_UPDATE_SA: self.update_sa,
            ndis.OID_TCP_OFFLOAD_PARAMETERS: self.set_offload_parameters,
        }
        handler = handlers.get(oid)
        return handler(info) if handler else NdisStatus.INVALID_OID

    def query_information(self, oid: int) -> tuple[NdisStatus, object]:
        if oid == ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES:
            return NdisStatus.SUCCESS, dataclasses.replace(self.capabilities)
        if oid == ndis.OID_TCP_OFFLOAD_CURRENT_CONFIG:
            return NdisStatus.SUCCESS, self.current_config()
        return NdisStatus.INVALID_OID, None

    def current_config(self, ipv6: Optional[bool] = None) -> ndis.NdisIpsecOffloadV2:
        """The capabilities as the offload parameters leave them switched on; with ``ipv6``
        (False / True) what is on for that IP version alone (what ADD_SA checks)."""
        on = self.offload
        esp = (on.esp_ipv6 if ipv6 else on.esp_ipv4) if ipv6 is not None else (
            on.esp_ipv4 or on.esp_ipv6)
        ah = (on.ah_ipv6 if ipv6 else on.ah_ipv4) if ipv6 is not None else (
            on.ah_ipv4 or on.ah_ipv6)
        return dataclasses.replace(
            self.capabilities, esp=self.capabilities.esp and esp,
            ah=self.capabilities.ah and ah,
            ah_esp_combined=self.capabilities.ah_esp_combined and esp and ah,
            ipv6_supported=self.capabilities.ipv6_supported and (on.esp_ipv6 or on.ah_ipv6))

    def set_offload_parameters(self, params: ndis.NdisOffloadParameters) -> NdisStatus:
        """OID_TCP_OFFLOAD_PARAMETERS: IPsecV2 applies to both IP versions, IPsecV2IPv4 to
        IPv4 only, 0 leaves a setting as it is (docs/protocol.md)."""
        values = (params.ipsec_v2, params.ipsec_v2_ipv4, params.lso_v1, params.lso_v2_ipv4,
                  params.lso_v2_ipv6)
        if not all(0 <= v <= 4 for v in values[:2]) or not all(0 <= v <= 2 for v in values[2:]):
            return NdisStatus.INVALID_PARAMETER
        on = self.offload
        for value, versions in ((params.ipsec_v2, ("ipv4", "ipv6")),
                                (params.ipsec_v2_ipv4, ("ipv4",))):
            if value == ndis.OffloadIpsecV2.NO_CHANGE:
                continue
            esp = value in (ndis.OffloadIpsecV2.ESP_ENABLED, ndis.OffloadIpsecV2.AH_AND_ESP_ENABLED)
            ah = value in (ndis.OffloadIpsecV2.AH_ENABLED, ndis.OffloadIpsecV2.AH_AND_ESP_ENABLED)
            for version in versions:
                setattr(on, f"esp_{version}", esp)
                setattr(on, f"ah_{version}", ah)
        for value, name in ((params.lso_v1, "lso_v1"), (params.lso_v2_ipv4, "lso_v2_ipv4"),
                            (params.lso_v2_ipv6, "lso_v2_ipv6")):
            if value != ndis.OffloadLso.NO_CHANGE:
                setattr(on, name, value == ndis.OffloadLso.ENABLED)
        return NdisStatus.SUCCESS

    def add_sa(self, entries: ndis.IpsecOffloadV2AddSa) -> NdisStatus:
        """OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA over the Next-linked list (docs/protocol.md):
        SUCCESS if any entry was offloaded; each failed entry gets handle 0."""
        _expect(entries, ndis.IpsecOffloadV2AddSa, "add_sa", "entries")
        statuses = [self._add_one(entry) for entry in entries.entries()]
        if any(s == NdisStatus.SUCCESS for s in statuses):
            return NdisStatus.SUCCESS
        return statuses[0]

    def add_sa_ex(self, entry: Union[ndis.IpsecOffloadV2AddSaEx, bytes]) -> NdisStatus:
        """OID_TCP_TASK_IPSEC_OFFLOAD_V2_ADD_SA_EX: one bundle; raw OID bytes are accepted."""
        if isinstance(entry, (bytes, bytearray, memoryview)):
            try:
                entry = ndis.IpsecOffloadV2AddSaEx.from_bytes(entry, self.pointer_size or 8)
            except ValueError:
                return NdisStatus.INVALID_LENGTH
        _expect(entry, ndis.IpsecOffloadV2AddSaEx, "add_sa_ex", "entry", "or its bytes")
        return self._add_one(entry)

    def _add_one(self, entry) -> NdisStatus:
        entry.offload_handle = 0
        try:
            # ESP / AH for the SA's own IP version (an IPv4 SA while ESP for IPv4 is off
            # is refused, issue 11)
            ipv6 = bool(getattr(entry, "flags", 0) & ndis.IPSEC_OFFLOAD_V2_IPV6)
            entry.offload_handle = self.sas.add(entry, self.current_config(ipv6),
                                                self.strict_salt, ptr_size=self.pointer_size)
        except SaRejected as rejected:
            self._count(f"add_sa_rejected.{rejected.status.name}")
            return rejected.status
        self._count("sa_added")
        return NdisStatus.SUCCESS

    def delete_sa(self, entries: ndis.IpsecOffloadV2DeleteSa) -> NdisStatus:
        """OID_..._DELETE_SA over the Next list; an unknown handle is ignored (docs/protocol.md)."""
        _expect(entries, ndis.IpsecOffloadV2DeleteSa, "delete_sa", "entries")
        for entry in entries.entries():
            if self.sas.delete(entry.offload_handle):
                self._count("sa_deleted")
        return NdisStatus.SUCCESS

    def update_sa(self, entry: ndis.IpsecOffloadV2UpdateSa) -> NdisStatus:
        """OID_..._UPDATE_SA: new ESN high-order bits (docs/protocol.md)."""
        _expect(entry, ndis.IpsecOffloadV2UpdateSa, "update_sa", "entry")
        if not self.capabilities.extended_sequence_numbers or not self.sas.update_seq_hi(
                entry.offload_handle, entry.operation, entry.spi,
                entry.sequence_number_high_order):
            return NdisStatus.INVALID_PARAMETER
        return NdisStatus.SUCCESS

    def halt(self) -> None:
        """MiniportHaltEx: the NIC deletes every SA by itself (docs/protocol.md)."""
        self.sas.clear()

    # -- send ----------------------------------------------------------------------------
    def config_bits(self) -> int:
        """The Config bits of the current capabilities and offload parameters (plain ints:
        this runs once per send)."""
        on, caps = self.offload, self.capabilities
        esp, ah, v6 = caps.esp, caps.ah, caps.ipv6_supported
        return ((_ESP_IPV4 if esp and on.esp_ipv4 else 0)
                | (_ESP_IPV6 if esp and v6 and on.esp_ipv6 else 0)
                | (_AH_IPV4 if ah and on.ah_ipv4 else 0)
                | (_AH_IPV6 if ah and v6 and on.ah_ipv6 else 0)
                | (_LSO_V1 if on.lso_v1 else 0) | (_LSO_V2_IPV4 if on.lso_v2_ipv4 else 0)
                | (_LSO_V2_IPV6 if on.lso_v2_ipv6 else 0)
                | (_LSO_WITH_IPSEC if caps.lso_supported else 0)
                | (_TUNNEL_ALONE_SINGLE if self.tunnel_handle_alone == "single" else 0)
                | (_DISABLED_FAIL if self.disabled_policy == "fail" else 0)
                | (_TRANSPORT_TUNNEL if caps.transport_tunnel_combined and caps.tunnel else 0))

    def send_limits(self) -> np.ndarray:
        """What tx_limit enforces: (MaxOffLoadSize, MinSegmentCount) of LSOv1, LSOv2 IPv4,
        LSOv2 IPv6, then ``max_send_output``."""
        v1, v2 = self.lso_v1, self.lso_v2
        values = (v1.max_offload_size, v1.min_segment_count, v2.ipv4_max_offload_size,
                  v2.ipv4_min_segment_count, v2.ipv6_max_offload_size,
                  v2.ipv6_min_segment_count, self.max_send_output)
        cached = getattr(self, "_limits", None)
        if cached is not None and cached[0] == values:
            return cached[1]  # checked once per change, not once per send
        for value in values[:6]:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise ValueError(f"LSO MaxOffLoadSize / MinSegmentCount must be ULONG values, "
                                 f"got {value!r}")
        limits = np.array(values, np.int64)
        limits.flags.writeable = False
        self._limits = (values, limits)
        return limits

    def send(self, nbls: Union[PacketBatch, Sequence[ndis.NetBufferList]]) -> SendResult:
        """MiniportSendNetBufferLists over a chain of NBLs (docs/send-path.md).

        Given ``NetBufferList`` objects, each is completed in place (``status``, LSO
        completion info in slot 2). The frames that leave are in ``result.wire``.
        """
        batch = nbls if isinstance(nbls, PacketBatch) else PacketBatch.from_nbls(
            _nbl_list(nbls, "send"))
        result = self._send_batch(batch, self.backends)
        if not isinstance(nbls, PacketBatch):
            for nbl, status, lso_done in zip(nbls, result.status, result.lso_complete):
                nbl.status = int(status)
                if nbl.get_info(ndis.NblInfo.TCP_LARGE_SEND):
                    nbl.info[ndis.NblInfo.TCP_LARGE_SEND] = int(lso_done)
        return result

    def _send_batch(self, batch: PacketBatch, backends) -> SendResult:
        """send() of a PacketBatch through ``backends`` (a thread of io/capture.py's
        ShardedSender has its own: a backend's keystream buffer serves one send at a time)."""
        return run_send(batch, self.sas.snapshot(), config=self.config_bits(),
                        icv_space=self.icv_space, iv_source=self.iv_source,
                        kernels=self.kernels, backends=backends,
                        random_source=self.random_source, marks=self.sas.tx_marks,
                        mark_lock=self.sas.tx_lock, limits=self.send_limits(),
                        totals=self._send_counts, arenas=self._tx_arenas)

    # -- receive -------------------------------------------------------------------------
    def receive_config_bits(self) -> int:
        """Receive offload per IP version (the same IPsecV2 offload parameters as send) and
        the capability gate for IPv4 options and IPv6 extension headers."""
        on, caps = self.offload, self.capabilities
        esp, ah, v6 = caps.esp, caps.ah, caps.ipv6_supported
        return ((_ESP_IPV4 if esp and on.esp_ipv4 else 0)
                | (_ESP_IPV6 if esp and v6 and on.esp_ipv6 else 0)
                | (_AH_IPV4 if ah and on.ah_ipv4 else 0)
                | (_AH_IPV6 if ah and v6 and on.ah_ipv6 else 0)
                | (_RX_IPV4_OPTIONS if caps.ipv4_options else 0)
                | (_RX_IPV6_EXT_HEADERS if caps.ipv6_non_ipsec_extension_headers else 0))

    @property
    def nat_t_ports(self) -> tuple[int, ...]:
        """The UDP ports receive parses as UDP-ESP (docs/spec-gaps.md G31)."""
        return self._nat_t_ports

    @nat_t_ports.setter
    def nat_t_ports(self, ports: Sequence[int]) -> None:
        self._nat_t_ports = nat_t_port_set(ports, "nat_t_ports")

    def receive(self, frames: Union[PacketBatch, Sequence[ndis.NetBufferList]]) -> ReceiveResult:
        """The NIC's receive path over a batch of received frames (docs/receive-path.md).

        Inbound SAs are found by SPI, destination (and source), IP version and UDP
        encapsulation; verified ESP is decrypted in place (headers, IV and ICV left as
        received); every frame is indicated, failures included. Given ``NetBufferList``
        objects, each gets its receive indication in slots IPsecOffloadV2 and
        IPsecOffloadV2Header and its frame as the NIC leaves it (one frame per NBL).
        The NIC never rejects a replay: that is the stack's (HostStack.receive).
        """
        nbls: Optional[list] = None
        if isinstance(frames, PacketBatch):
            batch = frames
        else:
            nbls = _nbl_list(frames, "receive")
            batch = PacketBatch.from_nbls(nbls)
        result = run_receive(batch, self.sas.snapshot(), self.sas.rx_state, self.sas.rx_lock,
                             config=self.receive_config_bits(), kernels=self.kernels,
                             backends=self.backends, delete_after=self.sa_delete_after or 0,
                             nat_t_ports=self._nat_t_ports, arenas=self._rx_arenas)
        if nbls is not None:
            info, header = result.ipsec_info.tolist(), result.header_info.tolist()
            first = batch.oob["first_nb"].tolist()
            for k, nbl in enumerate(nbls):
                if not nbl.net_buffers:
                    continue
                i = first[k]
                nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2, info[i])
                nbl.set_info(ndis.NblInfo.IPSEC_OFFLOAD_V2_HEADER, header[i])
                for j in range(len(nbl.net_buffers)):
                    nbl.net_buffers[j].data = result.frame(i + j)
        with self._counter_lock:
            np.add(self._recv_counts, result.counters, out=self._recv_counts)
        return result

    @property
    def counters(self) -> Counter:
        """Counts per NET_BUFFER reason (``nb.NAME``), NBL status (``nbl.NAME``), frames and
        bytes out, and OID outcomes (a snapshot); ``sa_added_duplicate_spi`` counts outbound
        SAs added while another with the same SPI and endpoints was live (G28)."""
        with self._counter_lock:
            counts = self._send_counts.tolist()
            out = Counter(self._oid_counts)
        for i in range(REASON_COUNT):
            if counts[i]:
                out[f"nb.{Reason(i).name}"] = counts[i]
        for i, name in enumerate(STATUS_COUNTER_NAMES):
            if counts[REASON_COUNT + i]:
                out[f"nbl.{name}"] = counts[REASON_COUNT + i]
        for i, name in enumerate(("frames_out", "bytes_out")):
            if counts[COUNTERS + i]:
                out[name] = counts[COUNTERS + i]
        if self.sas.outbound_duplicates:  # docs/spec-gaps.md G28
            out["sa_added_duplicate_spi"] = self.sas.outbound_duplicates
        with self._counter_lock:
            received = self._recv_counts.tolist()
        for i, count in enumerate(received):
            if count:
                out[f"rx.{RxReason(i).name}"] = count
        return out

    def _count(self, name: str) -> None:
        with self._counter_lock:
            self._oid_counts[name] += 1

    def sa_record(self, handle: int) -> Optional[dict]:
        """The compiled record of an offloaded SA (no keys), for inspection."""
        record = self.sas.record(handle)
        if record is None:
            return None
        fields: dict[str, Any] = {name: int(record[name]) for name in
                                  ("handle", "in_use", "inbound", "ipv6", "n_xf")}
        xf = record["xf"][0]
        fields.update({name: int(xf[name]) for name in xf.dtype.names if name != "salt"})
        if record["n_xf"] > 1:
            ah = record["xf"][1]
            fields["ah"] = {name: int(ah[name]) for name in ah.dtype.names if name != "salt"}
        return fields


def _expect(value, cls, method: str, name: str, extra: str = "") -> None:
    if not isinstance(value, cls):
        raise TypeError(f"{method}: {name} must be an {cls.__name__}{' ' + extra if extra else ''}"
                        f", got {type(value).__name__}")


def _nbl_list(nbls, method: str) -> list:
    """The NetBufferList objects of a send or receive call; anything else is a TypeError."""
    if isinstance(nbls, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{method}: expected a PacketBatch or a sequence of NetBufferList, got "
                        f"{type(nbls).__name__}")
    try:
        items = list(nbls)
    except TypeError:
        raise TypeError(f"{method}: expected a PacketBatch or a sequence of NetBufferList, got "
                        f"{type(nbls).__name__}") from None
    for i, nbl in enumerate(items):
        if not isinstance(nbl, ndis.NetBufferList):
            raise TypeError(f"{method}: item {i} must be a NetBufferList, got "
                            f"{type(nbl).__name__}")
    return items


def _policy(enum_cls, value, name: str):
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls[str(value).upper()]
    except KeyError:
        allowed = ", ".join(repr(m.name.lower()) for m in enum_cls)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


__all__ = ["Miniport", "OffloadState", "default_capabilities", "Reason", "HANDLE_SLOT_MASK"]
