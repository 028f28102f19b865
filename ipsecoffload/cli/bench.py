"""Throughput with its references from the same run (docs/benchmarks.md).

- limit: the suite's raw cipher over one 1 MiB buffer (``AESGCM.encrypt_into``; for CBC +
  HMAC one CBC encryption and one HMAC of 1 MiB; for GMAC one tag over 1 MiB);
- naive: a plain Python loop of one such call per packet of the same size (for CBC + HMAC a
  new CBC encryptor and one HMAC per packet; for AH one HMAC, or one GMAC tag, per packet;
  for AH + ESP the ESP call and then the AH call);
- ours: ``Miniport.send`` over prebuilt frames (path ``send``) or over one LSO super-packet
  (path ``lso``), batch of ``batch`` packets, one core; or (path ``e2e``) ``encrypt`` end to
  end on a generated raw-IP capture of TCP packets, pcap reading and writing included, net of
  process start-up (sizes up to 9000: IP packets of that size, no MSS; above: super-packets
  of that TCP payload cut at ``--mss``, pps counting segments); or (path ``receive``)
  ``Miniport.receive`` over received ESP frames, whose naive loop is one ``decrypt`` call —
  or ICV check and CBC decryption — per packet.

Every row carries ``size, path, suite, pps, gbps, limit_gbps, naive_pps, ratio_limit,
ratio_naive``. Used by ``ipsecoffload bench`` and by the pytest-benchmark suites in
benchmarks/.
"""
from __future__ import annotations

import hmac
import math
import os
import struct
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..control.miniport import Miniport
from ..datapath.batch import PacketBatch
from ..host.saconfig import ENCRYPTIONS, INTEGRITIES, SaConfig
from ..host.stack import HostStack

DEFAULT_SIZES = (64, 512, 1400, 9000)
DEFAULT_LSO_SIZE = 64000
DEFAULT_MSS = 1448
DEFAULT_BATCH = 256
MAX_BATCH = 65536
MAX_MIN_TIME = 60.0
PATHS = ("send", "lso", "e2e", "receive")
DEFAULT_E2E_SIZES = (64, 1400, 64000)
E2E_BYTES = 32 << 20  # plain IP bytes of the generated capture (e2e path)
MAX_E2E_SAS = 4096
MAX_E2E_WORKERS = 64
E2E_MAX_PACKETS = 100_000
_HASHLIB = {"hmac-md5-96": "md5", "hmac-sha1-96": "sha1", "hmac-sha256-128": "sha256"}


def tcp_packet(size: int, *, ipv6: bool = False, seq: int = 1, sport: int = 40000,
               dport: int = 443) -> bytes:
    """A plain IPv4 (or IPv6) TCP packet of exactly ``size`` bytes (at least the headers)."""
    header = 40 if ipv6 else 20
    if size < header + 20:
        raise ValueError(f"size must be at least {header + 20} bytes, got {size}")
    data = bytes(i & 0xFF for i in range(size - header - 20))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0) + data
    if ipv6:
        return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(15) + b"\1",
                           bytes(15) + b"\2") + tcp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 1, 0x4000, 64, 6, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 1, 0, 2])))
    return bytes(ip) + tcp


@dataclass(frozen=True)
class Suite:
    """A suite by its SA-file names (docs/architecture.md): ``aes-gcm-128``, ``aes-cbc-128`` +
    ``hmac-sha256-128``, ``null`` + ``aes-gmac-128``, ...; ``ah`` names the AH integrity
    of an AH SA (``encryption`` None: AH alone) or of an AH+ESP bundle."""
    encryption: Optional[str] = "aes-gcm-128"
    integrity: Optional[str] = None
    ah: Optional[str] = None

    def __post_init__(self):
        if self.ah is not None and self.ah not in INTEGRITIES:
            raise ValueError(f"unknown AH integrity {self.ah!r}; one of "
                             f"{', '.join(INTEGRITIES)}")
        if self.encryption is None:
            if self.ah is None or self.integrity is not None:
                raise ValueError("a suite without encryption is AH alone: it needs ah and no "
                                 "integrity")
            return
        if self.encryption not in ENCRYPTIONS:
            raise ValueError(f"unknown encryption {self.encryption!r}; one of "
                             f"{', '.join(ENCRYPTIONS)}")
        if self.integrity is not None and self.integrity not in INTEGRITIES:
            raise ValueError(f"unknown integrity {self.integrity!r}; one of "
                             f"{', '.join(INTEGRITIES)}")
        cbc_in_bundle = self.ah is not None and self.encryption.startswith("aes-cbc")
        if not self.aead and self.integrity is None and not cbc_in_bundle:
            raise ValueError(f"{self.encryption} needs an integrity algorithm")

    @property
    def aead(self) -> bool:
        return (self.encryption or "").startswith("aes-gcm")

    @property
    def gmac(self) -> bool:
        return (self.integrity or "").startswith("aes-gmac")

    @property
    def protocol(self) -> str:
        if self.ah is None:
            return "esp"
        return "ah" if self.encryption is None else "ah+esp"

    @property
    def name(self) -> str:
        if self.encryption is None:
            return f"ah-{self.ah}"
        esp = (self.encryption if self.aead or self.integrity is None
               else f"{self.encryption}+{self.integrity}")
        return f"{esp}+ah-{self.ah}" if self.ah else esp

    def sa_config(self, spi: int = 0x1000) -> SaConfig:
        ah_key = bytes(range(2, 2 + INTEGRITIES[self.ah][1])) if self.ah else b""
        if self.encryption is None:
            return SaConfig(spi=spi, protocol="ah", integrity=self.ah, auth_key=ah_key)
        key = bytes(range(ENCRYPTIONS[self.encryption][1]))
        auth_key = bytes(range(1, 1 + INTEGRITIES[self.integrity][1])) if self.integrity else b""
        if self.ah:
            return SaConfig(spi=spi, encryption=self.encryption, key=key,
                            integrity=None if self.aead else self.integrity, auth_key=auth_key,
                            protocol="ah+esp", ah_spi=spi + 1, ah_integrity=self.ah,
                            ah_auth_key=ah_key)
        return SaConfig(spi=spi, encryption=self.encryption, key=key,
                        integrity=None if self.aead else self.integrity, auth_key=auth_key)


_RESEND_HANDLES: dict = {}  # id(miniport) -> (frames, the handles they name)


def resend(miniport: Miniport, frames):
    """``miniport.send(frames)`` again: timing loops send one batch over and over, so the
    NIC's sealed marks are cleared first (else every AEAD frame after the first round would
    fail as a repeated sequence number; docs/send-path.md, "Nonce safety")."""
    cached = _RESEND_HANDLES.get(id(miniport))
    if cached is None or cached[0] is not frames:  # the handles the frames name, once
        handles = np.unique(np.concatenate([frames.oob["offload_handle"],
                                            frames.oob["tunnel_handle"]])).tolist()
        if len(_RESEND_HANDLES) >= 8:  # a few timing loops at a time (threads: one each)
            _RESEND_HANDLES.clear()
        cached = _RESEND_HANDLES[id(miniport)] = (frames, [h for h in handles if h])
    miniport.sas.reset_tx_marks(cached[1])
    return miniport.send(frames)


def prepared_send(size: int, batch: int = DEFAULT_BATCH, encryption: Optional[str] = "aes-gcm-128",
                  integrity: Optional[str] = None, ah: Optional[str] = None
                  ) -> tuple[Miniport, PacketBatch]:
    """A miniport with one transport SA and a batch of prebuilt frames of ``size``-byte packets."""
    if integrity is None and encryption is not None and not encryption.startswith("aes-gcm") \
            and ah is None:
        integrity = "hmac-sha256-128"
    miniport = Miniport()
    stack = HostStack(miniport)
    sa = stack.add_sa(Suite(encryption, integrity, ah).sa_config())
    return miniport, stack.build([tcp_packet(size)] * batch, sa)


def prepared_lso(payload: int, mss: int = DEFAULT_MSS, suite: Suite = Suite()
                 ) -> tuple[Miniport, PacketBatch, int]:
    """A miniport, one LSO super-packet of ``payload`` TCP bytes, and its segment count."""
    miniport = Miniport()
    stack = HostStack(miniport)
    sa = stack.add_sa(suite.sa_config())
    frames = stack.build_lso(tcp_packet(payload + 40), sa, mss)
    return miniport, frames, max(1, -(-payload // mss))


def prepared_receive(size: int, batch: int = DEFAULT_BATCH, suite: Suite = Suite()
                     ) -> tuple[Miniport, PacketBatch]:
    """A miniport with one inbound transport SA and a batch of the ESP frames its peer sent
    for ``size``-byte packets (sequence numbers 1..batch)."""
    config = suite.sa_config()
    sender = HostStack(Miniport())
    wire = sender.send([tcp_packet(size)] * batch, sender.add_sa(config)).wire
    receiver = Miniport()
    receiver.add_sa(config.add_sa_entry(False, inbound=True))
    return receiver, PacketBatch.from_frames(wire.frames(), l2_len=14)


def naive_receive_packets_per_second(size: int, batch: int = DEFAULT_BATCH,
                                     min_time: float = 0.3, suite: Suite = Suite()) -> float:
    """One verify-and-decrypt per packet in a Python loop: AESGCM.decrypt; for CBC + HMAC an
    HMAC compared in constant time, then a new CBC decryptor; GMAC and NULL + HMAC: the tag."""
    encryption = suite.encryption or ""
    size = -(-size // 16) * 16 if encryption.startswith("aes-cbc") else size
    packets = [os.urandom(size) for _ in range(batch)]
    integrity = suite.integrity or ""
    if suite.aead:
        aead, aad = AESGCM(bytes(int(encryption[-3:]) // 8)), bytes(8)
        sealed = [aead.encrypt(i.to_bytes(12, "big"), p, aad) for i, p in enumerate(packets)]

        def open_aead() -> None:
            for i, ct in enumerate(sealed):
                aead.decrypt(i.to_bytes(12, "big"), ct, aad)
        return _rate(open_aead, min_time) * batch
    if suite.gmac:
        gmac = AESGCM(bytes(int(integrity[-3:]) // 8))
        tags = [gmac.encrypt(i.to_bytes(12, "big"), b"", p) for i, p in enumerate(packets)]

        def verify_gmac() -> None:
            for i, packet in enumerate(packets):
                hmac.compare_digest(gmac.encrypt(i.to_bytes(12, "big"), b"", packet), tags[i])
        return _rate(verify_gmac, min_time) * batch
    digest = _HASHLIB[integrity]
    auth_key = bytes(INTEGRITIES[integrity][1])
    macs = [hmac.new(auth_key, p, digest).digest() for p in packets]
    key = bytes(ENCRYPTIONS[encryption][1]) if encryption != "null" else b""

    def verify_and_decrypt() -> None:
        for i, packet in enumerate(packets):
            if hmac.compare_digest(hmac.new(auth_key, packet, digest).digest(), macs[i]) and key:
                decryptor = Cipher(algorithms.AES(key), modes.CBC(i.to_bytes(16, "big"))
                                   ).decryptor()
                decryptor.update(packet)
                decryptor.finalize()
    return _rate(verify_and_decrypt, min_time) * batch


def _rate(run: Callable[[], object], min_time: float,
          tidy: Optional[Callable[[], object]] = None) -> float:
    """Calls per second of ``run``, timed over at least ``min_time`` seconds of its own
    running; ``tidy`` runs after each call, outside the timing."""
    run()  # warm up
    if tidy is not None:
        tidy()
    calls, spent = 0, 0.0
    while spent < min_time:
        start = time.perf_counter()
        run()
        spent += time.perf_counter() - start
        calls += 1
        if tidy is not None:
            tidy()
    return calls / spent


def _naive_call(suite: Suite) -> Callable[[int, bytearray, bytearray], object]:
    """What a plain program does for one packet of this suite: the ESP call, then (AH) the
    AH call."""
    esp = _esp_naive_call(suite) if suite.encryption is not None else None
    ah = _ah_naive_call(suite.ah) if suite.ah else None
    if esp is not None and ah is not None:
        def both(i: int, packet: bytearray, out: bytearray) -> None:
            esp(i, packet, out)
            ah(i, packet, out)
        return both
    call = esp or ah
    if call is None:
        raise ValueError("a suite needs ESP or AH")
    return call


def _ah_naive_call(integrity: str) -> Callable[[int, bytearray, bytearray], object]:
    """One AH ICV per packet: an HMAC, or a GMAC tag (AES-GCM with an empty plaintext)."""
    if integrity.startswith("aes-gmac"):
        aead = AESGCM(bytes(int(integrity[-3:]) // 8))
        return lambda i, packet, out: aead.encrypt(i.to_bytes(12, "big"), b"", packet)
    digest, auth_key = _HASHLIB[integrity], bytes(INTEGRITIES[integrity][1])
    return lambda i, packet, out: hmac.new(auth_key, packet, digest).digest()


def _esp_naive_call(suite: Suite) -> Callable[[int, bytearray, bytearray], object]:
    encryption = suite.encryption or ""
    if suite.aead:
        aead, aad = AESGCM(bytes(int(encryption[-3:]) // 8)), bytes(8)
        return lambda i, packet, out: aead.encrypt_into(i.to_bytes(12, "big"), packet, aad, out)
    integrity = suite.integrity or ""
    if suite.gmac:
        aead = AESGCM(bytes(int(integrity[-3:]) // 8))
        return lambda i, packet, out: aead.encrypt(i.to_bytes(12, "big"), b"", packet)
    key = bytes(ENCRYPTIONS[encryption][1])
    if suite.integrity is None:  # encryption only, inside an AH+ESP bundle
        def cbc(i: int, packet: bytearray, out: bytearray) -> None:
            encryptor = Cipher(algorithms.AES(key), modes.CBC(i.to_bytes(16, "big"))).encryptor()
            encryptor.update(packet) + encryptor.finalize()
        return cbc
    digest = _HASHLIB[suite.integrity]
    auth_key = bytes(INTEGRITIES[suite.integrity][1])
    if suite.encryption == "null":
        return lambda i, packet, out: hmac.new(auth_key, packet, digest).digest()

    def cbc_hmac(i: int, packet: bytearray, out: bytearray) -> None:
        encryptor = Cipher(algorithms.AES(key), modes.CBC(i.to_bytes(16, "big"))).encryptor()
        ct = encryptor.update(packet) + encryptor.finalize()
        hmac.new(auth_key, ct, digest).digest()
    return cbc_hmac


def limit_bytes_per_second(min_time: float = 0.3, suite: Suite = Suite()) -> float:
    """The suite's raw cipher over one 1 MiB buffer."""
    size = 1 << 20
    data = bytearray(size)
    out = bytearray(size + 16)
    call = _naive_call(suite)
    return _rate(lambda: call(1, data, out), min_time) * size


def prepared_e2e(size: int, mss: int, suite: Suite, *, sas: int = 1, workers: int = 1):
    """A generated raw-IP pcap of TCP packets in a temporary directory, its SA file, and a
    callable that encrypts it end to end (in process: net of interpreter start-up) with
    ``workers`` workers. ``sas`` > 1: the packets go round-robin to that many destinations,
    each the selector of its own SA (a gateway's capture). Returns (work, units, ip_bytes,
    naive_size, cleanup)."""
    import json
    import shutil
    import tempfile

    from ..io.pcap import LINKTYPE_RAW, write_pcap
    from ..io.safile import parse_sa_list
    lso = size > 9000
    ip_size = size + 40 if lso else size
    count = min(E2E_MAX_PACKETS, max(16, E2E_BYTES // ip_size))
    directory = tempfile.mkdtemp(prefix="ipsecoffload-e2e-")
    plain = os.path.join(directory, "plain.pcap")
    out = os.path.join(directory, "out.pcap")
    base = tcp_packet(ip_size)
    # destination 10.1.x.y of SA k: x, y = divmod(k + 2, 256)
    variants = [base[:16] + bytes([10, 1, (k + 2) >> 8, (k + 2) & 0xFF]) + base[20:]
                for k in range(sas)] if sas > 1 else [base]
    try:
        write_pcap(plain, LINKTYPE_RAW, [variants[i % len(variants)] for i in range(count)],
                   [1_700_000_000 * 10**9 + i * 1000 for i in range(count)])
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    config = suite.sa_config()
    entry = {"name": "e2e", "spi": config.spi, "encryption": config.encryption,
             "key": config.key.hex(), "esn": True, "seq": 1}
    if config.integrity:
        entry.update(integrity=config.integrity, auth_key=config.auth_key.hex())
    entries = [entry] if sas == 1 else [
        dict(entry, name=f"e2e{k}", spi=config.spi + k,
             selector={"dst": f"10.1.{(k + 2) >> 8}.{(k + 2) & 0xFF}/32"}) for k in range(sas)]
    policies = parse_sa_list(json.loads(json.dumps(entries)))
    segments = -(-size // mss) if lso else 1

    work = E2eWork(plain, out, policies, mss if lso else None, workers, count * segments)
    return work, count * segments, count * ip_size, mss + 40 if lso else size, \
        lambda: shutil.rmtree(directory, ignore_errors=True)


class E2eWork:
    """One timed ``encrypt`` of the generated capture to a new output file (a call), and the
    removal of that output (``tidy``, untimed: it is the harness's, not part of encrypting).
    Left in place, run after run of outputs fills the page cache until the kernel throttles
    every writer to the disk's speed, which a single encrypt of the capture never meets;
    removed inside the timing, the freeing of its page cache (about 100 ns per 1400 B packet
    measured here) would count as encrypting."""

    def __init__(self, plain: str, out: str, policies, mss: Optional[int], workers: int,
                 frames: int):
        self.plain, self.out, self.policies = plain, out, policies
        self.mss, self.workers, self.frames = mss, workers, frames
        self.runs = 0

    def __call__(self) -> None:
        from ..io.capture import encrypt_capture
        self.tidy()
        self.runs += 1
        summary = encrypt_capture(self.plain, f"{self.out}.{self.runs}", self.policies,
                                  mss=self.mss, workers=self.workers)
        if summary.frames_out != self.frames:
            raise RuntimeError(f"e2e bench: {summary.frames_out} frames out, "
                               f"{self.frames} expected")

    def tidy(self) -> None:
        """Removes the output of the last call, if it is still there."""
        if self.runs:
            try:
                os.unlink(f"{self.out}.{self.runs}")
            except FileNotFoundError:
                pass


def naive_packets_per_second(size: int, batch: int = DEFAULT_BATCH, min_time: float = 0.3,
                             suite: Suite = Suite()) -> float:
    """One call per packet in a Python loop: what a plain program gets."""
    size = -(-size // 16) * 16 if (suite.encryption or "").startswith("aes-cbc") else size
    packets = [bytearray(os.urandom(size)) for _ in range(batch)]
    outs = [bytearray(size + 16) for _ in range(batch)]
    call = _naive_call(suite)

    def run() -> None:
        for i, packet in enumerate(packets):
            call(i + 1, packet, outs[i])
    return _rate(run, min_time) * batch


@dataclass
class BenchRow:
    size: int  # plain IP packet bytes in (lso: the TCP payload of one super-packet)
    path: str
    suite: str
    pps: float  # packets (lso: segments) per second
    gbps: float  # IP bytes in
    limit_gbps: float
    naive_pps: float
    ratio_limit: float  # ours / limit (Gbit/s)
    ratio_naive: float  # ours / naive (packets/s)
    sas: int = 1  # e2e: SAs the capture is spread over
    workers: int = 1  # e2e: encrypt --workers

    def as_dict(self) -> dict:
        """The design's row keys; ``sas`` and ``workers`` only in a run that set them."""
        row = asdict(self)
        if (self.sas, self.workers) == (1, 1):
            del row["sas"], row["workers"]
        return row


def check_arguments(sizes: Sequence[int], batch: int, min_time: float, path: str,
                    mss: int) -> None:
    """ValueError naming the argument when a run could not finish or would run away."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_BATCH}, got {batch}")
    if not (math.isfinite(min_time) and 0 < min_time <= MAX_MIN_TIME):
        raise ValueError(f"min_time must be a number of seconds in (0, {MAX_MIN_TIME:g}], "
                         f"got {min_time}")
    if not 1 <= mss <= 9000:
        raise ValueError(f"mss must be between 1 and 9000, got {mss}")
    limit = {"send": 60000, "lso": 262144, "e2e": 65000, "receive": 60000}[path]
    for size in sizes:
        if not 60 <= size <= limit:
            raise ValueError(f"size {size} is outside 60..{limit} for path {path}")


ROUNDS = 3


def run(sizes: Optional[Sequence[int]] = None, batch: int = DEFAULT_BATCH,
        min_time: float = 0.3, *, path: str = "send", encryption: Optional[str] = "aes-gcm-128",
        integrity: Optional[str] = None, mss: int = DEFAULT_MSS,
        ah: Optional[str] = None, sas: int = 1, workers: int = 1) -> list[BenchRow]:
    """One row per size; every figure comes from this one run. The limit, ours and the
    naive loop are timed in turn, ROUNDS times (``min_time`` split between the rounds), and
    each keeps its best round: on a shared machine a slow round is interference, and turns
    keep a drift of the machine's speed out of the ratios."""
    if sizes is None:
        sizes = {"send": DEFAULT_SIZES, "lso": (DEFAULT_LSO_SIZE,),
                 "e2e": DEFAULT_E2E_SIZES, "receive": DEFAULT_SIZES}[path]
    suite = Suite(encryption, integrity, ah)
    if path in ("receive", "e2e") and suite.ah:
        raise ValueError(f"path {path} has no AH rows yet (the receive path verifies ESP only; "
                         f"e2e times ESP SAs)")
    check_arguments(sizes, batch, min_time, path, mss)
    if (sas != 1 or workers != 1) and path != "e2e":
        raise ValueError("sas and workers are options of path e2e")
    if not 1 <= sas <= MAX_E2E_SAS or not 1 <= workers <= MAX_E2E_WORKERS:
        raise ValueError(f"sas must be 1..{MAX_E2E_SAS} and workers 1..{MAX_E2E_WORKERS}, "
                         f"got {sas} and {workers}")
    share = min_time / ROUNDS
    rows = []
    for size in sizes:
        work: Callable[[], object]
        tidy: Optional[Callable[[], object]] = None
        if path == "send":
            miniport, frames = prepared_send(size, batch, suite.encryption, suite.integrity,
                                             suite.ah)
            units, ip_bytes, naive_size = batch, batch * size, size
            work = lambda: resend(miniport, frames)  # noqa: E731
        elif path == "lso":
            miniport, frames, units = prepared_lso(size, mss, suite)
            ip_bytes, naive_size = size + 40, mss + 40
            work = lambda: resend(miniport, frames)  # noqa: E731
        elif path == "receive":
            receiver, received = prepared_receive(size, batch, suite)
            units, ip_bytes, naive_size = batch, batch * size, size
            work = lambda: receiver.receive(received)  # noqa: E731
        else:
            e2e, units, ip_bytes, naive_size, cleanup = prepared_e2e(
                size, mss, suite, sas=sas, workers=workers)
            work, tidy = e2e, e2e.tidy
        limit = ours = naive = 0.0
        try:
            for _ in range(ROUNDS):
                limit = max(limit, limit_bytes_per_second(share, suite))
                ours = max(ours, _rate(work, share, tidy))
                naive_rate = (naive_receive_packets_per_second if path == "receive"
                              else naive_packets_per_second)
                naive = max(naive, naive_rate(naive_size, batch, share, suite))
        finally:
            if path == "e2e":
                cleanup()
        limit_gbps = limit * 8 / 1e9
        pps, gbps = ours * units, ours * ip_bytes * 8 / 1e9
        rows.append(BenchRow(size=size, path=path, suite=suite.name, pps=pps, gbps=gbps,
                             limit_gbps=limit_gbps, naive_pps=naive,
                             ratio_limit=gbps / limit_gbps, ratio_naive=pps / naive,
                             sas=sas, workers=workers))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    lines = [f"{'path':>5} {'suite':<28} {'size':>6} {'Mpps':>8} {'Gbit/s':>8} {'limit':>8} "
             f"{'naive Mpps':>11} {'ours/limit':>11} {'ours/naive':>11}"]
    for r in rows:
        suite = r.suite if (r.sas, r.workers) == (1, 1) else \
            f"{r.suite} {r.sas} SAs {r.workers}w"
        lines.append(f"{r.path:>5} {suite:<28} {r.size:>6} {r.pps / 1e6:>8.3f} {r.gbps:>8.2f} "
                     f"{r.limit_gbps:>8.2f} {r.naive_pps / 1e6:>11.3f} {r.ratio_limit:>11.3f} "
                     f"{r.ratio_naive:>11.3f}")
    return "\n".join(lines)
