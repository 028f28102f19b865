"""A fuzz and stress harness anyone can run: ``python -m ipsecoffload.fuzz``.

Send: valid frames from the host stack (every suite, IPv4/IPv6, transport/tunnel, UDP-ESP,
ESN with a high word, LSO), part of them mutated (bytes flipped, frames cut or grown, random
out-of-band values, stale handles), through the compiled miniport; every batch checked:
  - the statuses: a frame nobody touched completes with SUCCESS;
  - each output frame: the IP (and UDP) length fields equal the frame's length;
  - per SA, the sequence numbers of the untouched frames rise by one (LSO: per segment);
  - every untouched frame's ICV by the reference backend, on the receive path;
  - a sample of batches against the pure-Python twin, byte for byte (``--twin-every``).
Receive: the sent frames, mutated, through the compiled receive and (sampled) its twin.
Stress (``--stress``): threads adding, deleting and updating SAs while others send; a
deleted handle must fail (UNKNOWN_HANDLE) and the counters must add up.

Prints one summary line; exits 1 on any finding (the first ones are listed). See README,
"Fuzzing".
"""
from __future__ import annotations

import argparse
import ipaddress
import random
import struct
import sys
import threading
import time
from typing import Optional

import numpy as np

from . import ndis
from .control.miniport import Miniport
from .crypto.reference import ReferenceBackend
from .datapath.batch import PacketBatch
from .datapath.layout import Reason
from .host.saconfig import SaConfig
from .host.stack import HostStack

MAX_FINDINGS = 20


def _sa_configs() -> list:
    def key(n: int, seed: int) -> bytes:
        return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))
    return [
        SaConfig(spi=0x101, encryption="aes-gcm-128", key=key(20, 1), src="10.0.0.1",
                 dst="10.0.0.2"),
        SaConfig(spi=0x102, encryption="aes-gcm-256", key=key(36, 2), icv_len=8, esn=True,
                 seq=(1 << 32) + 40, src="10.0.0.1", dst="10.0.0.2"),
        SaConfig(spi=0x103, encryption="aes-cbc-128", key=key(16, 3), integrity="hmac-sha1-96",
                 auth_key=key(20, 4), src="2001:db8::1", dst="2001:db8::2", esn=True,
                 seq=(2 << 32) + 5),
        SaConfig(spi=0x104, encryption="aes-cbc-256", key=key(32, 5),
                 integrity="hmac-sha256-128", auth_key=key(32, 6), mode="tunnel",
                 tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2", esn=True, seq=(7 << 32) + 1),
        SaConfig(spi=0x105, encryption="null", integrity="aes-gmac-128", auth_key=key(20, 7),
                 mode="tunnel", tunnel_src="2001:db8:ff::1", tunnel_dst="2001:db8:ff::2"),
        SaConfig(spi=0x106, encryption="aes-gcm-192", key=key(28, 8), udp_encap=(4500, 4500),
                 src="10.0.0.1", dst="10.0.0.2"),
        SaConfig(spi=0x107, encryption="null", integrity="hmac-md5-96", auth_key=key(16, 9),
                 src="10.0.0.1", dst="10.0.0.2"),
        SaConfig(spi=0x108, protocol="ah", integrity="hmac-sha256-128", auth_key=key(32, 10),
                 src="10.0.0.1", dst="10.0.0.2", esn=True, seq=(3 << 32) + 9),
        SaConfig(spi=0x109, protocol="ah", integrity="aes-gmac-128", auth_key=key(20, 11),
                 mode="tunnel", tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2"),
        SaConfig(spi=0x10A, protocol="ah+esp", encryption="aes-gcm-128", key=key(20, 12),
                 ah_spi=0x10B, ah_integrity="hmac-sha1-96", ah_auth_key=key(20, 13),
                 src="2001:db8::1", dst="2001:db8::2"),
        # transport over tunnel (VIA): the transport SA 0x10D carried by the tunnel SA 0x10C
        SaConfig(spi=0x10C, encryption="aes-cbc-128", key=key(16, 14), integrity="hmac-sha1-96",
                 auth_key=key(20, 15), mode="tunnel", tunnel_src="192.0.2.5",
                 tunnel_dst="192.0.2.6", esn=True, seq=(4 << 32) + 3),
        SaConfig(spi=0x10D, encryption="aes-gcm-128", key=key(20, 16), src="10.0.0.1",
                 dst="10.0.0.2"),
    ]


# index of a transport SA in _sa_configs() -> index of the tunnel SA that carries it
VIA = {11: 10}


def _plain_packet(rng: random.Random, config: SaConfig, tcp: bool) -> bytes:
    """A plain TCP or UDP packet the SA protects: a transport SA's own addresses, or for a
    tunnel SA an inner IPv4 or IPv6 packet."""
    if config.mode == "tunnel":
        ipv6 = rng.random() < 0.5
        src, dst = ("2001:db8:1::1", "2001:db8:1::2") if ipv6 else ("10.1.0.1", "10.1.0.2")
    else:
        src, dst = config.src or "10.0.0.1", config.dst or "10.0.0.2"
        ipv6 = ":" in src
    size = rng.choice((0, 1, 15, 16, 17, 100, 500, 1400, rng.randrange(0, 1400)))
    payload = (bytes(rng.randrange(256) for _ in range(64)) * (size // 64 + 1))[:size]
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if tcp:
        l4 = struct.pack("!HHIIBBHHH", 40000, 443, rng.randrange(2**32), 0, 5 << 4, 0x18,
                         65535, 0, 0) + payload
        proto = 6
    else:
        l4 = struct.pack("!HHHH", 5000, 53, 8 + len(payload), 0) + payload
        proto = 17
    if ipv6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, s, d) + l4
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), rng.randrange(65536),
                                   0x4000, 64, proto, 0, s, d))
    total = sum(struct.unpack("!10H", bytes(header)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(header) + l4


def _ip_lengths_ok(frame: bytes, l2: int) -> bool:
    ip = frame[l2:]
    if len(ip) < 20:
        return False
    if ip[0] >> 4 == 4:
        if struct.unpack("!H", ip[2:4])[0] != len(ip):
            return False
        proto, off = ip[9], (ip[0] & 0xF) * 4
    elif ip[0] >> 4 == 6 and len(ip) >= 40:
        if struct.unpack("!H", ip[4:6])[0] + 40 != len(ip):
            return False
        proto, off = ip[6], 40
    else:
        return False
    if proto == 17 and len(ip) >= off + 8:
        return struct.unpack("!H", ip[off + 4:off + 6])[0] == len(ip) - off
    return True


def _mutate(rng: random.Random, batch: PacketBatch, handles: list) -> np.ndarray:
    """Mutate some NBLs of the batch in place; returns a bool per NBL: touched."""
    n = len(batch)
    touched = np.zeros(n, bool)
    for k in range(n):
        if rng.random() >= 0.3:
            continue
        touched[k] = True
        nb = int(batch.oob["first_nb"][k])
        off, length = int(batch.nb_off[nb]), int(batch.nb_len[nb])
        what = rng.randrange(6)
        if what == 0 and length:
            for _ in range(rng.randrange(1, 4)):
                batch.arena[off + rng.randrange(length)] ^= 1 << rng.randrange(8)
        elif what == 1:
            batch.nb_len[nb] = rng.randrange(length + 1)
        elif what == 2:
            batch.oob["offload_handle"][k] = rng.choice([0, rng.randrange(2**64), *handles])
        elif what == 3:
            batch.oob["esp_off4"][k] = rng.randrange(256)
            batch.oob["pad_length"][k] = rng.randrange(256)
        elif what == 4:
            batch.oob["lso_info"][k] = rng.randrange(2**64) if rng.random() < 0.5 else (
                (rng.randrange(1, 2000)) | (rng.randrange(0, 120) << 20) | (1 << 30))
        else:
            batch.oob["l2_len"][k] = rng.randrange(0, 80)
            batch.oob["tunnel_handle"][k] = rng.choice([0, rng.randrange(2**64)])
    return touched


class Fuzzer:
    def __init__(self, seed: int, twin_every: int):
        self.rng = random.Random(seed)
        self.seed = seed
        self.twin_every = twin_every
        self.findings: list[str] = []
        self.frames_sent = self.frames_received = self.batches = 0
        self.configs = _sa_configs()
        self.nic = Miniport(random_source=self._random)
        self.twin = Miniport(pure_python=True, backend=ReferenceBackend(),
                             random_source=self._random)
        self.stack = HostStack(self.nic, link="ethernet")
        self.sas: list = []
        for k, c in enumerate(self.configs):
            self.sas.append(self.stack.add_sa(c, via=self.sas[VIA[k]] if k in VIA else None))
        twin_stack = HostStack(self.twin, link="ethernet")
        twin_sas: list = []
        for k, config in enumerate(self.configs):
            twin_sas.append(twin_stack.add_sa(config, via=twin_sas[VIA[k]] if k in VIA else None))
        self.rx = Miniport(backend=ReferenceBackend())  # the oracle receiver
        self.rx_fast = Miniport()
        self.rx_twin = Miniport(pure_python=True, backend=ReferenceBackend())
        for config in self.configs:
            ipv6s = ((bool(config.tunnel_ipv6),) if config.mode == "tunnel"
                     else ((":" in (config.src or "")),))
            for ipv6 in ipv6s:
                for nic in (self.rx, self.rx_fast, self.rx_twin):
                    nic.add_sa(config.add_sa_entry(ipv6, inbound=True))
        self.last_sn: dict[int, int] = {}
        self.burnt: set[int] = set()  # ESN SAs whose SNs a mutated frame moved too far
        self._rand = random.Random(seed)

    def _random(self, n: int) -> bytes:
        return bytes(self._rand.randrange(256) for _ in range(n))

    def finding(self, text: str) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(text)
        else:
            self.findings.append("...")

    def batch(self) -> None:
        rng = self.rng
        live = [k for k in range(len(self.sas)) if self.sas[k].config.spi not in self.burnt]
        k = live[rng.randrange(len(live))] if live else rng.randrange(len(self.sas))
        sa = self.sas[k]
        count = rng.choice((1, 2, 7, 64, 256))
        lso = sa.config.mode == "transport" and rng.random() < 0.15
        try:
            if lso:
                frames = self.stack.build_lso(_plain_packet(rng, sa.config, True), sa,
                                              rng.choice((1, 100, 536, 1400)))
            else:
                packets = [_plain_packet(rng, sa.config, rng.random() < 0.5)
                           for _ in range(count)]
                frames = self.stack.build(packets, sa)
        except (ValueError, RuntimeError):
            return  # the stack refused (exhausted, too big): nothing for the NIC
        handles = [h for s in self.sas for h in s.handles.values()]
        touched = _mutate(rng, frames, handles)
        twin_batch = PacketBatch(frames.arena.copy(), frames.nb_off.copy(), frames.nb_len.copy(),
                                 frames.nb_nbl.copy(), oob=frames.oob.copy())
        self.batches += 1
        seed = rng.randrange(2**32)
        self._rand = random.Random(seed)
        marks = self.nic.sas.tx_marks.copy()  # the twin starts from the same sealed marks
        result = self.nic.send(frames)
        self.frames_sent += result.wire.num_buffers
        if self.batches % self.twin_every == 0:
            self._rand = random.Random(seed)
            self.twin.sas.tx_marks[:] = marks
            expect = self.twin.send(twin_batch)
            if not (np.array_equal(result.wire.arena, expect.wire.arena)
                    and result.status.tolist() == expect.status.tolist()
                    and np.array_equal(result.counters, expect.counters)):
                self.finding(f"batch {self.batches}: compiled send != twin")
        self._check_send(sa, result, touched, lso)
        self._receive(result, rng)

    def _check_send(self, sa, result, touched: np.ndarray, lso: bool) -> None:
        status = result.status.tolist()
        moved = False  # a mutated frame was sealed: it may have raised the SA's sealed mark
        for k, s in enumerate(status):
            if touched[k] and s == ndis.NdisStatus.SUCCESS:
                moved = True
            if not touched[k] and s != ndis.NdisStatus.SUCCESS and not (
                    moved and int(result.reasons[k]) == Reason.SEQ_REUSED):
                self.finding(f"batch {self.batches}: untouched NBL {k} of SA {sa.config.spi:#x} "
                             f"completed with {s:#x} ({Reason(int(result.reasons[k])).name})")
        if moved:
            # a mutated SN may have burnt SNs the stack has not used yet: the stack goes on
            # above the NIC's mark (an AEAD SN is sealed once, docs/send-path.md)
            for handle in sa.handles.values():
                slot = handle & 0xFFFFF
                if int(self.nic.sas.tx_marks[4 * slot]) == handle:
                    top = max(int(self.nic.sas.tx_marks[4 * slot + 1]),
                              int(self.nic.sas.tx_marks[4 * slot + 3]))
                    if sa.config.esn and top + 1 - sa.next_seq >= 1 << 30:
                        # a receiver cannot follow such a jump (RFC 4303 App. A): the
                        # harness leaves this SA alone from now on
                        self.burnt.add(sa.config.spi)
                    sa.next_seq = max(sa.next_seq, top + 1)
        wire = result.wire
        frames = wire.frames()
        nbls = wire.nb_nbl.tolist()
        good = [f for f, k in zip(frames, nbls)
                if not touched[k] and status[k] == ndis.NdisStatus.SUCCESS]
        for f in good:
            if not _ip_lengths_ok(f, 14):
                self.finding(f"batch {self.batches}: an output frame's IP/UDP length is wrong")
        if not good:
            return
        got = self.rx.receive(PacketBatch.from_frames(good, l2_len=14))
        bad = int(np.count_nonzero(got.crypto_status)) + int(
            np.count_nonzero(got.crypto_done == 0))
        if bad:
            self.finding(f"batch {self.batches}: {bad} untouched frames of SA "
                         f"{sa.config.spi:#x} do not verify ({got.reason_counts()})")
        seqs = [int(s) for s, d in zip(got.seq64.tolist(), got.crypto_done.tolist()) if d]
        last = self.last_sn.get(sa.config.spi)
        for sn in seqs:
            if last is not None and sn <= last:
                self.finding(f"batch {self.batches}: SA {sa.config.spi:#x} sequence number "
                             f"{sn} after {last}")
                break
            last = sn
        if seqs:
            self.last_sn[sa.config.spi] = seqs[-1]

    def _receive(self, result, rng: random.Random) -> None:
        frames = result.wire.frames()
        if not frames:
            return
        mutated = []
        for f in frames:
            f = bytearray(f)
            if rng.random() < 0.4 and f:
                what = rng.randrange(3)
                if what == 0:
                    f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
                elif what == 1:
                    del f[rng.randrange(len(f)):]
                else:
                    f += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            mutated.append(bytes(f))
        l2 = np.array([rng.choice((14, 14, 14, 0, 18, rng.randrange(64)))
                       for _ in mutated], np.uint16)
        batch = PacketBatch.from_frames(mutated, l2_len=l2)
        got = self.rx_fast.receive(batch)
        self.frames_received += len(mutated)
        if self.batches % self.twin_every == 0:
            expect = self.rx_twin.receive(PacketBatch.from_frames(mutated, l2_len=l2))
            if not (np.array_equal(got.arena, expect.arena)
                    and got.plans.tobytes() == expect.plans.tobytes()):
                self.finding(f"batch {self.batches}: compiled receive != twin")
        else:
            self.rx_twin.receive(PacketBatch.from_frames(mutated, l2_len=l2))  # same state

    def run(self, frames: Optional[int], seconds: Optional[float]) -> None:
        start = time.perf_counter()
        while True:
            if frames is not None and self.frames_sent >= frames:
                break
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
            try:
                self.batch()
            except Exception as error:  # a crash of the library is a finding
                self.finding(f"batch {self.batches}: {type(error).__name__}: {error}")
                break


def stress(seconds: float, seed: int) -> list:
    """Threads adding, deleting and updating SAs while others send."""
    nic = Miniport()
    configs = _sa_configs()[:3]
    stack = HostStack(nic, link="raw")
    findings: list[str] = []
    stop = time.perf_counter() + seconds
    deleted: set = set()
    # G27 (docs/spec-gaps.md): a handle comes back after MAX_SERIAL more ADDs, for another SA.
    # ``reissued`` counts the times each handle was issued; a stale handle is judged only if
    # no ADD could have issued it again meanwhile: still in ``deleted`` after the send, issued
    # as often as before it, and no ADD under way.
    reissued: dict = {}
    adding = [0]
    lock = threading.Lock()

    def churn(k: int) -> None:
        rng = random.Random(seed + k)
        while time.perf_counter() < stop:
            config = configs[rng.randrange(len(configs))]
            entry = config.add_sa_entry(":" in (config.src or ""))
            with lock:
                adding[0] += 1
            added = nic.add_sa(entry) == ndis.NdisStatus.SUCCESS
            handle = entry.offload_handle
            with lock:
                adding[0] -= 1
                if added:  # live (again: G27), for this SA
                    deleted.discard(handle)
                    issues = reissued[handle] = reissued.get(handle, 0) + 1
            if not added:
                continue
            if config.esn:
                nic.update_sa(ndis.IpsecOffloadV2UpdateSa(
                    offload_handle=handle, operation=ndis.IpsecOperation.ESP,
                    spi=config.spi, sequence_number_high_order=rng.randrange(4)))
            nic.delete_sa(ndis.IpsecOffloadV2DeleteSa(offload_handle=handle))
            with lock:
                if reissued[handle] == issues:  # not issued again since: gone until it is
                    deleted.add(handle)

    # the senders' SAs before any churn: added during it, one could get a handle that is in
    # ``deleted`` (G27), live for the whole run
    sender_sas = [stack.add_sa(configs[0]) for _ in range(2)]

    def send(k: int) -> None:
        rng = random.Random(seed + 100 + k)
        sa = sender_sas[k]
        sends = 0
        while time.perf_counter() < stop:
            frames = stack.build([_plain_packet(rng, configs[0], False) for _ in range(16)], sa)
            with lock:
                stale = list(deleted)[:8]
                issued = [reissued.get(h, 0) for h in stale]
            for j, h in enumerate(stale[:len(frames)]):
                frames.oob["offload_handle"][j] = h
            result = nic.send(frames)
            sends += 1
            with lock:  # a stale handle issued again meanwhile names a live SA: any outcome
                raced = {j for j, h in enumerate(stale)
                         if adding[0] or h not in deleted or reissued.get(h, 0) != issued[j]}
            for j, status in enumerate(result.status.tolist()):
                if j in raced:
                    continue
                expect_fail = j < len(stale)
                if expect_fail and result.reasons[j] != Reason.UNKNOWN_HANDLE:
                    findings.append(f"a deleted handle was used ({Reason(int(result.reasons[j])).name})")
                if not expect_fail and status != ndis.NdisStatus.SUCCESS:
                    findings.append(f"a live handle failed with {status:#x}")

    threads = ([threading.Thread(target=churn, args=(k,)) for k in range(2)]
               + [threading.Thread(target=send, args=(k,)) for k in range(2)])
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = nic.counters
    nbls = sum(v for k, v in counts.items() if k.startswith("nbl."))
    nbs = sum(v for k, v in counts.items() if k.startswith("nb."))
    if nbls != nbs:
        findings.append(f"counters do not add up: {nbls} NBL statuses, {nbs} NET_BUFFER reasons")
    return findings[:MAX_FINDINGS]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ipsecoffload.fuzz",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=None,
                        help="stop after this many frames sent (default: 20000 unless --seconds)")
    parser.add_argument("--seconds", type=float, default=None, help="time budget")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--twin-every", type=int, default=16, metavar="N",
                        help="compare every N-th batch with the pure-Python twin (default 16)")
    parser.add_argument("--stress", type=float, default=0.0, metavar="SECONDS",
                        help="also run the SA-churn stress for this long")
    args = parser.parse_args(argv)
    if args.frames is None and args.seconds is None:
        args.frames = 20000
    if args.twin_every < 1:
        parser.error("--twin-every must be at least 1")
    start = time.perf_counter()
    fuzzer = Fuzzer(args.seed, args.twin_every)
    fuzzer.run(args.frames, args.seconds)
    findings = list(fuzzer.findings)
    if args.stress > 0:
        findings += [f"stress: {f}" for f in stress(args.stress, args.seed)]
    from . import _fastpath
    print(f"fuzz: seed {args.seed}, {fuzzer.batches} batches, {fuzzer.frames_sent} frames sent, "
          f"{fuzzer.frames_received} received, {time.perf_counter() - start:.1f} s, "
          f"bounds-checked {bool(_fastpath.BOUNDS_CHECKED)}, findings {len(findings)}")
    for finding in findings:
        print(f"  {finding}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
