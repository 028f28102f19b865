"""The host stack's receive side (docs/receive-path.md): inbound SAs offloaded to the NIC, the
NIC's receive indications, then per SA the anti-replay window (RFC 4303 §3.4.3) and
decapsulation, all per batch in compiled code (``rx_deliver``).

Mixed into ``HostStack``: ``add_inbound_sa``, ``remove_inbound_sa`` and ``receive``.
"""
from __future__ import annotations

import ipaddress
import threading
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from .. import ndis
from ..datapath.arenas import KEEP_MIN, ArenaRecycler
from ..datapath.batch import PacketBatch
from ..datapath.layout import (HANDLE_SLOT_MASK, NAT_T_MAX_PORTS, RX_WINDOW_DTYPE, RX_WINDOW_MAX,
                               Delivery, RxReason)
from ..datapath.rx import ReceiveResult
from ..ndis import NdisStatus
from .saconfig import SaConfig

DEFAULT_REPLAY_WINDOW = 64


class InboundSa:
    """The stack's view of one inbound SA: its bundles (one per IP version) and its window
    row. ``replay_window`` is in packets (0 = no replay check); ``selector`` (src, dst
    prefixes, either may be None) is checked against the received packet's addresses
    before anything else — a packet outside it is not this SA's."""

    def __init__(self, config: SaConfig, index: int, replay_window: int,
                 selector: Optional[tuple[Optional[str], Optional[str]]], paired=None):
        self.config = config
        self.paired = paired  # the outbound StackSa deleted with it on SaDeleteReq
        self.index = index
        self.replay_window = replay_window
        self.selector = selector
        self.handles: dict[bool, int] = {}
        self.removed = False
        # ESN high word each bundle's NIC record was last given (ADD_SA or UPDATE_SA)
        self.bundle_hi: dict[bool, int] = {}

    def __repr__(self) -> str:
        name = self.config.name or f"spi={self.config.spi:#x}"
        handles = {("ipv6" if v6 else "ipv4"): f"{h:#x}" for v6, h in self.handles.items()}
        return (f"InboundSa({name}, mode={self.config.mode}, window={self.replay_window}, "
                f"handles={handles}{', removed' if self.removed else ''})")


class Received:
    """What the stack delivered from one batch of received frames.

    ``delivery`` (layout.Delivery per frame), ``sa`` (the InboundSa index or -1),
    ``packet(i)`` the delivered frame (link header kept; b"" when dropped), and the NIC's
    indication in ``nic`` (a ReceiveResult).
    """

    __slots__ = ("nic", "data", "delivery", "sa", "off", "length", "deleted", "_sas")

    def __init__(self, nic: ReceiveResult, data: np.ndarray, delivery: np.ndarray,
                 sa: np.ndarray, off: np.ndarray, length: np.ndarray, sas: list,
                 deleted: Sequence[InboundSa] = ()):
        self.nic = nic
        self.data, self.delivery, self.sa, self.off, self.length = data, delivery, sa, off, length
        self.deleted = list(deleted)  # inbound SAs deleted on the NIC's SaDeleteReq
        self._sas = sas

    def __len__(self) -> int:
        return len(self.delivery)

    def packet(self, i: int) -> bytes:
        off, length = int(self.off[i]), int(self.length[i])
        return self.data[off:off + length].tobytes()

    def packets(self) -> list[bytes]:
        from .tx_frame import kernels
        fp = kernels()
        if fp is not None and len(self):  # the bytes objects made in one compiled loop
            return fp.bytes_slices(np.ascontiguousarray(self.data, np.uint8),
                                   np.ascontiguousarray(self.off, np.int64),
                                   np.ascontiguousarray(self.length, np.int64))
        return [self.packet(i) for i in range(len(self))]

    def frames_of(self, mask: np.ndarray):
        """(arena, off, length) of the delivered frames ``mask`` selects, for a bulk writer."""
        return self.data, self.off[mask], self.length[mask]

    def sa_of(self, i: int) -> Optional[InboundSa]:
        k = int(self.sa[i])
        return self._sas[k] if k >= 0 else None

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(self.delivery, return_counts=True)
        return {Delivery(int(v)).name: int(c) for v, c in zip(values, counts)}

    def __repr__(self) -> str:
        return f"Received({len(self)} frames, {self.counts()})"


def _layers(config: SaConfig) -> list:
    """(Operation, SPI) of each layer of the SA's bundle."""
    if config.protocol == "ah":
        return [(ndis.IpsecOperation.AH, config.spi)]
    layers = [(ndis.IpsecOperation.ESP, config.spi)]
    if config.protocol == "ah+esp" and config.ah_spi is not None:
        layers.append((ndis.IpsecOperation.AH, config.ah_spi))
    return layers


def _prefix(text: Optional[str], ipv6: bool) -> tuple[bytes, int]:
    if text is None:
        return bytes(16), 0
    net = ipaddress.ip_network(text, strict=False)
    if (net.version == 6) != ipv6:
        raise ValueError(f"selector prefix {text!r} is not of the SA's IP version")
    return net.network_address.packed.ljust(16, b"\0"), net.prefixlen


class ReceiveMixin:
    """HostStack's receive methods (state created on first use)."""

    if TYPE_CHECKING:  # what HostStack provides
        miniport: Any

        @property
        def l2_length(self) -> int: ...

        def remove_sa(self, sa: Any) -> None: ...

    def _rx_init(self) -> None:
        if getattr(self, "_rx_sas", None) is None:
            self._rx_lock = threading.Lock()
            self._rx_sas: list[Optional[InboundSa]] = []
            self._rx_windows = np.zeros(0, RX_WINDOW_DTYPE)
            capacity = self.miniport.sas.capacity
            self._rx_slot_sa = np.full(capacity, -1, np.int32)
            self._rx_slot_handle = np.zeros(capacity, np.uint64)
            self._rx_delivered = ArenaRecycler()  # the last delivered arena (datapath/arenas.py)
            self._rx_frames = ArenaRecycler()  # the last list of frames, joined

    @property
    def inbound_sas(self) -> list[InboundSa]:
        self._rx_init()
        return [sa for sa in self._rx_sas if sa is not None]

    def add_inbound_sa(self, config: SaConfig, *, replay_window: int = DEFAULT_REPLAY_WINDOW,
                       selector: Optional[tuple[Optional[str], Optional[str]]] = None,
                       versions: Optional[Sequence[bool]] = None, paired=None) -> InboundSa:
        """Offload ``config`` as an inbound SA (ADD_SA with the INBOUND flag, one bundle per IP
        version: a tunnel SA's, or ``versions``, else both) and start its anti-replay window
        empty just below ``config.seq`` (docs/receive-path.md). ``paired``: the outbound
        ``StackSa`` of the same negotiation, deleted with this one when the NIC sets
        SaDeleteReq. A ``udp_encap`` SA whose ports are not among the miniport's
        ``nat_t_ports`` adds its destination port, the one its received packets carry
        (docs/spec-gaps.md G31); ValueError when the NIC has no room for another port."""
        if not isinstance(config, SaConfig):
            raise TypeError(f"add_inbound_sa takes a SaConfig, got {type(config).__name__}")
        if not isinstance(replay_window, int) or not 0 <= replay_window <= RX_WINDOW_MAX:
            raise ValueError(f"replay_window must be an integer from 0 to {RX_WINDOW_MAX}, "
                             f"got {replay_window!r}")
        self._rx_init()
        if versions is None:
            if config.mode == "tunnel":
                versions = (bool(config.tunnel_ipv6),)
            else:
                known = {ipaddress.ip_address(a).version == 6
                         for a in (config.src, config.dst) if a}
                versions = tuple(known) if known else (False, True)
        with self._rx_lock:
            nat_t_ports = self._nat_t_ports_for(config)
            sa = InboundSa(config, len(self._rx_sas), replay_window, selector, paired)
            row = np.zeros(1, RX_WINDOW_DTYPE)
            row["size"] = replay_window
            # empty, just below the first sequence number; that number itself is never
            # a packet of this SA (RFC 4303 §3.3.3)
            row["top"] = max(config.seq - 1, 0)
            row["bits"][0, 0] = 1
            if selector is not None and (selector[0] or selector[1]):
                ipv6 = versions[0] if len(versions) == 1 else None
                if ipv6 is None:
                    raise ValueError("a selector needs an SA of one IP version")
                (src, src_len), (dst, dst_len) = _prefix(selector[0], ipv6), _prefix(
                    selector[1], ipv6)
                row["has_sel"], row["sel_ipv6"] = 1, ipv6
                row["src"], row["src_len"] = np.frombuffer(src, np.uint8), src_len
                row["dst"], row["dst_len"] = np.frombuffer(dst, np.uint8), dst_len
            try:
                for ipv6 in versions:
                    entry = config.add_sa_entry(ipv6, inbound=True)
                    status = self.miniport.add_sa(entry)
                    if status != NdisStatus.SUCCESS or not entry.offload_handle:
                        raise RuntimeError(f"inbound ADD_SA ({'IPv6' if ipv6 else 'IPv4'}) for "
                                           f"{config.name or hex(config.spi)} refused: "
                                           f"{NdisStatus(status).name}")
                    sa.handles[ipv6] = entry.offload_handle
                    sa.bundle_hi[ipv6] = entry.sec_assoc[0].sequence_number_high_order
            except BaseException:
                self._delete_bundles(sa)
                raise
            if nat_t_ports != self.miniport.nat_t_ports:
                self.miniport.nat_t_ports = nat_t_ports
            # joined as bytes: numpy joins a nested structured dtype field by field, which made
            # adding the n-th SA cost O(n) slow steps (1000 SAs: most of a second)
            windows = np.concatenate([self._rx_windows.view(np.uint8),
                                      row.view(np.uint8)]).view(RX_WINDOW_DTYPE)
            slot_sa, slot_handle = self._rx_slot_sa.copy(), self._rx_slot_handle.copy()
            for handle in sa.handles.values():
                slot_sa[handle & HANDLE_SLOT_MASK] = sa.index
                slot_handle[handle & HANDLE_SLOT_MASK] = handle
            self._rx_sas.append(sa)
            self._rx_windows, self._rx_slot_sa, self._rx_slot_handle = (windows, slot_sa,
                                                                        slot_handle)
        return sa

    def _nat_t_ports_for(self, config: SaConfig) -> tuple[int, ...]:
        """The miniport's NAT-T ports once ``config`` is offloaded: a received packet of a
        ``udp_encap`` SA has the SA's (sport, dport), and the NIC parses it as UDP-ESP when
        either is in the set; otherwise its dport joins (docs/spec-gaps.md G31)."""
        ports = tuple(self.miniport.nat_t_ports)
        if not config.udp_encap or any(p in ports for p in config.udp_encap):
            return ports
        if len(ports) >= NAT_T_MAX_PORTS:
            raise ValueError(f"inbound SA {config.name or hex(config.spi)}: udp_encap ports "
                             f"{config.udp_encap[0]}/{config.udp_encap[1]} would make more "
                             f"than {NAT_T_MAX_PORTS} NAT-T ports on the miniport "
                             f"(nat_t_ports {ports})")
        return ports + (int(config.udp_encap[1]),)

    def _delete_bundles(self, sa: InboundSa) -> None:
        head = None
        for handle in sa.handles.values():
            head = ndis.IpsecOffloadV2DeleteSa(next=head, offload_handle=handle)
        if head is not None:
            self.miniport.delete_sa(head)
        sa.handles.clear()

    def remove_inbound_sa(self, sa: InboundSa) -> None:
        """DELETE_SA for the SA's bundles; its frames then count as having no SA."""
        self._rx_init()
        with self._rx_lock:
            if sa.removed or sa.index >= len(self._rx_sas) or self._rx_sas[sa.index] is not sa:
                raise ValueError("that inbound SA is not registered with this stack")
            slot_sa, slot_handle = self._rx_slot_sa.copy(), self._rx_slot_handle.copy()
            for handle in sa.handles.values():
                slot_sa[handle & HANDLE_SLOT_MASK] = -1
                slot_handle[handle & HANDLE_SLOT_MASK] = 0
            self._delete_bundles(sa)
            self._rx_slot_sa, self._rx_slot_handle = slot_sa, slot_handle
            self._rx_sas[sa.index] = None
            sa.removed = True

    def window_top(self, sa: InboundSa) -> int:
        """The highest sequence number the SA's window accepted (or seq - 1 at the start)."""
        return int(self._rx_windows[sa.index]["top"])

    def _frames_batch(self, frames: list) -> PacketBatch:
        """A PacketBatch of a list of bytes frames, joined in the arena the last list was
        joined in once nothing holds it (datapath/arenas.py), else as from_frames joins."""
        from . import tx_frame
        fp = tx_frame.kernels()
        n = len(frames)
        if fp is None or not n:
            return PacketBatch.from_frames(frames, l2_len=self.l2_length)
        rows = np.zeros(n, tx_frame.HOST_PKT_DTYPE)
        total = fp.host_pack_rows(frames, rows.view(np.uint8))
        if total < 0:
            return PacketBatch.from_frames(frames, l2_len=self.l2_length)
        arena = self._rx_frames.offer()
        if arena is None or len(arena) < total:
            arena = np.empty(max(total, KEEP_MIN), np.uint8)
        fp.host_pack(frames, arena, rows.view(np.uint8))
        self._rx_frames.keep(arena)
        return PacketBatch(arena[:total], rows["off"], rows["cap_len"].astype(np.int64),
                           np.arange(n, dtype=np.int32), n_nbl=n, l2_len=self.l2_length)

    def receive(self, frames: Union[PacketBatch, Sequence[bytes]]) -> Received:
        """Receive frames (link headers as this stack's ``link``): the NIC verifies and
        decrypts, then the stack checks each SA's selector and window and decapsulates —
        transport: the original IP packet; tunnel: the inner packet (RFC 6040 ECN)."""
        self._rx_init()
        if not isinstance(frames, PacketBatch):
            frames = list(frames)
            if not set(map(type, frames)) <= {bytes}:
                frames = [bytes(f) for f in frames]
            frames = self._frames_batch(frames)
        nic = self.miniport.receive(frames)
        with self._rx_lock:
            updated = self._sync_bundle_high_words(nic)
            if updated:
                self._retry_lagging_bundles(frames, nic, updated)
            data, delivery, sa, off, length = self.miniport.kernels.rx_deliver(
                frames, nic.arena, nic._plan_bytes, self._rx_slot_sa, self._rx_slot_handle,
                self._rx_windows, self._rx_delivered.offer())
            self._rx_delivered.keep(data)
            sas = list(self._rx_sas)
        deleted = self._honour_delete_requests(nic) if nic.sa_delete_req.any() else []
        return Received(nic, data, delivery, sa, off, length, sas, deleted)

    def _sync_bundle_high_words(self, nic: ReceiveResult) -> set:
        """An ESN SA offloaded for both IP versions has one bundle, and one NIC ESN state, per
        version, but one sequence space: when one bundle's verified traffic moves the high word
        on, UPDATE_SA gives it to the others (docs/receive-path.md), as the stack does on send.
        Returns the handles updated."""
        updated: set = set()
        if not any(sa is not None and sa.config.esn and len(sa.handles) >= 2
                   for sa in self._rx_sas):
            return updated  # no SA has two bundles to keep in step
        plans = nic.plans
        verified = (plans["crypto_done"] == 1) & (plans["crypto_status"] == 0) & (
            plans["slot"] >= 0)
        if not verified.any():
            return updated
        slots = plans["slot"][verified]
        owners = self._rx_slot_sa[slots]
        for k in np.unique(owners[owners >= 0]).tolist():
            sa = self._rx_sas[k]
            if sa is None or not sa.config.esn or len(sa.handles) < 2:
                continue
            mine = verified.copy()
            mine[verified] = owners == k
            hi = int(plans["seq64"][mine].max()) >> 32
            carried = set(np.unique(plans["handle"][mine]).tolist())
            for ipv6, handle in sa.handles.items():
                if handle in carried:
                    # its own state infers the high word (App. A); UPDATE_SA would reset it
                    sa.bundle_hi[ipv6] = max(sa.bundle_hi.get(ipv6, 0), hi)
                elif sa.bundle_hi.get(ipv6, 0) < hi:
                    # UPDATE_SA names one layer by Operation and SPI: each layer of the bundle
                    if all(self.miniport.update_sa(ndis.IpsecOffloadV2UpdateSa(
                            offload_handle=handle, operation=operation, spi=spi,
                            sequence_number_high_order=hi)) == NdisStatus.SUCCESS
                           for operation, spi in _layers(sa.config)):
                        sa.bundle_hi[ipv6] = hi
                        updated.add(handle)
        return updated

    def _retry_lagging_bundles(self, frames: PacketBatch, nic: ReceiveResult,
                               updated: set) -> None:
        """Frames of a bundle that just got a new high word and failed with the old one go
        through the NIC once more; their indication replaces the first one."""
        plans = nic.plans
        failed = (plans["reason"] == RxReason.AUTH_FAILED) & np.isin(
            plans["handle"], np.fromiter(updated, np.uint64)) & (plans["inner"] == 0)
        picked = np.flatnonzero(failed)
        if not len(picked):
            return
        l2 = frames.oob["l2_len"][frames.nb_nbl[picked]]
        again = self.miniport.receive(PacketBatch.from_frames(
            [frames.frame(int(i)) for i in picked], l2_len=l2))
        for j, i in enumerate(picked.tolist()):
            off, length = int(frames.nb_off[i]), int(frames.nb_len[i])
            o2 = int(again.batch.nb_off[j])
            nic.arena[off:off + length] = again.arena[o2:o2 + length]
            plans[i] = again.plans[j]  # plan offsets are frame-relative

    def _honour_delete_requests(self, nic: ReceiveResult) -> list:
        """SaDeleteReq (docs/receive-path.md): delete the inbound SA and its paired outbound
        one. The frames of this batch were delivered first."""
        inner = nic.inner_plans
        asked = np.concatenate([nic.plans["slot"][nic.sa_delete_req.astype(bool)],
                                inner["slot"][inner["sa_delete_req"].astype(bool)]])
        deleted = []
        for slot in np.unique(asked).tolist():
            index = int(self._rx_slot_sa[slot]) if 0 <= slot < len(self._rx_slot_sa) else -1
            sa = self._rx_sas[index] if index >= 0 else None
            if sa is None or sa.removed:
                continue
            self.remove_inbound_sa(sa)
            if sa.paired is not None and not sa.paired.removed:
                self.remove_sa(sa.paired)
            deleted.append(sa)
        return deleted


__all__ = ["DEFAULT_REPLAY_WINDOW", "InboundSa", "ReceiveMixin", "Received"]
