"""The ``ipsecoffload`` command line (docs/architecture.md): demo, encrypt, wireshark-sa, bench.

Results go to stdout; progress (only when stderr is a terminal), warnings and errors to
stderr. Unusable input exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from ..cli import bench
from ..io.capture import CLEAR, DEFAULT_BATCH, EncryptSummary, SaStats, encrypt_capture
from ..io.pcap import LINKTYPE_ETHERNET, PcapError
from ..io.safile import SaFileError, SaPolicy, load_sa_file, wireshark_esp_sa, wireshark_notes

PROG = "ipsecoffload"
EXIT_OK, EXIT_USAGE = 0, 2


class UsageError(Exception):
    """Unusable input or arguments: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- helpers ---------------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _sizes(text: str) -> list:
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated packet sizes such as "
                                             f"64,512,1400, got {text!r}") from None
        # 40: IPv4 and TCP headers; the ESP overhead must fit in an IPv4 datagram
        if not 40 <= size <= 65000:
            raise argparse.ArgumentTypeError(f"packet sizes must be from 40 to 65000 bytes, "
                                             f"got {size}")
        sizes.append(size)
    return sizes


def _min_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"expected a number of seconds in (0, 60], "
                                         f"got {text!r}")
    return value


def _os_error(error: OSError) -> str:
    if error.filename is None:
        return str(error)
    return f"{os.fsdecode(error.filename)!r}: {error.strerror or error}"


class _Progress:
    """A packet counter on stderr, redrawn in place, only when stderr is a terminal."""

    def __init__(self, label: str, stream=None, interval: float = 0.1):
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label
        self.interval = interval
        self.start = self.last = time.perf_counter()
        self.width = 0

    def __call__(self, packets: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        rate = packets / (now - self.start) if now > self.start else 0.0
        text = f"\r{self.label}: {packets} packets, {rate:,.0f}/s"
        self.width = max(self.width, len(text))
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(message.split())}", file=sys.stderr)


# -- summaries -------------------------------------------------------------------------------
def _sa_description(policy: SaPolicy) -> str:
    c = policy.config
    parts = [c.mode, c.encryption + (f" ICV {c.icv}" if c.gcm else f" + {c.integrity}")]
    if c.mode == "tunnel":
        parts.append(f"{c.tunnel_src} -> {c.tunnel_dst}")
    if c.udp_encap:
        parts.append(f"UDP {c.udp_encap[0]}/{c.udp_encap[1]}")
    if c.esn:
        parts.append(f"ESN from {c.seq}")
    selector = ", ".join(f"{k} {v}" for k, v in policy.selector.to_dict().items()) or "any"
    return f"SPI 0x{c.spi:08x}, {', '.join(parts)}; selector: {selector}"


def _status_text(stats: SaStats) -> str:
    parts = [f"{name} {n}" for name, n in sorted(stats.status.items())]
    parts += [f"dropped ({reason}) {n}" for reason, n in sorted(stats.dropped.items())]
    return ", ".join(parts) or "-"


def format_summary(summary: EncryptSummary) -> str:
    link = "Ethernet" if summary.linktype == LINKTYPE_ETHERNET else "raw IP"
    lines = [f"{summary.input} -> {summary.output} ({link}"
             f"{f', MSS {summary.mss}' if summary.mss else ''}): {summary.packets_in} packets "
             f"in, {summary.frames_out} frames out, {summary.seconds:.3f} s, "
             f"{summary.packets_per_second:,.0f} packets/s",
             f"{'SA':<12} {'packets':>8} {'LSO':>5} {'LSO segs':>9} {'frames out':>11} "
             f"{'bytes in':>11} {'bytes out':>11}  status"]
    rows = list(summary.sas.items()) + [(CLEAR, summary.clear)]
    for name, s in rows:
        lines.append(f"{name:<12} {s.packets:>8} {s.lso_packets:>5} {s.lso_segments:>9} "
                     f"{s.frames_out:>11} {s.bytes_in:>11} {s.bytes_out:>11}  {_status_text(s)}")
    if summary.not_ip:
        lines.append(f"not IP (passed unchanged): {summary.not_ip}")
    malformed = sum(summary.malformed.values())
    if malformed:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.malformed.items()))
        lines.append(f"malformed (dropped): {malformed} ({reasons})")
    lines.append(f"total: {summary.bytes_in} bytes in, {summary.bytes_out} bytes out, "
                 f"{summary.dropped} packets dropped")
    return "\n".join(lines)


def _with_progress(label: str, work):
    """``work(progress)`` with a packet counter on stderr, erased afterwards."""
    progress = _Progress(label)
    try:
        return work(progress)
    finally:
        progress.close()


def _print_warnings(summary: EncryptSummary) -> None:
    for warning in summary.warnings:
        _warn(warning)


# -- commands --------------------------------------------------------------------------------
def cmd_encrypt(args) -> int:
    policies = load_sa_file(args.sa)
    summary = _with_progress("encrypt", lambda progress: encrypt_capture(
        args.input, args.output, policies, mss=args.mss, batch_size=args.batch,
        progress=progress))
    _print_warnings(summary)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(format_summary(summary))
    return EXIT_OK


def cmd_wireshark_sa(args) -> int:
    policies = load_sa_file(args.sa)
    for line in wireshark_esp_sa(policies):
        print(line)
    for note in wireshark_notes(policies):  # what the table cannot carry, on stderr
        print(f"{PROG} wireshark-sa: note: {note}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args) -> int:
    from ..cli.demo import DEMO_KEY_NOTE, DEMO_MSS, run_demo

    result = _with_progress("demo", lambda progress: run_demo(args.out, progress=progress))
    _print_warnings(result.summary)
    summary, out = result.summary, args.out
    lso = sum(s.lso_packets for s in summary.sas.values())
    print(f"{PROG} demo: wrote {out}{os.sep} ({DEMO_KEY_NOTE})")
    print(f"  plain.pcap  {result.plain_packets} packets, {result.plain_bytes} bytes of "
          f"synthetic IPv4/IPv6 TCP/UDP/ICMP traffic ({lso} TCP packets above MSS {DEMO_MSS} "
          f"go as LSO super-packets)")
    print(f"  sa.json     {len(result.policies)} SAs:")
    for policy in result.policies:
        print(f"                {policy.name:<6} {_sa_description(policy)}")
    print(f"  esp.pcap    {summary.frames_out} frames, the full host stack + miniport path:")
    print("\n".join("    " + line for line in format_summary(summary).splitlines()))
    print(f"  esp_sa      the Wireshark ESP SA table ({result.esp_sa_lines} lines, "
          f"with the demo keys)")
    print(f"To decrypt in Wireshark: put the lines of {os.path.join(out, 'esp_sa')} into your "
          f"profile's esp_sa file (e.g. ~/.config/wireshark/esp_sa), then run "
          f"'wireshark -o esp.enable_encryption_decode:TRUE {os.path.join(out, 'esp.pcap')}'")
    return EXIT_OK


def cmd_bench(args) -> int:
    try:
        encryption = None if args.encryption in ("none", "") else args.encryption
        rows = bench.run(args.sizes, args.batch, min_time=args.min_time, path=args.path,
                         encryption=encryption, integrity=args.integrity, mss=args.mss,
                         ah=args.ah)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps([row.as_dict() for row in rows]))
    else:
        print(bench.format_table(rows))
    return EXIT_OK


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """What --version prints: the package, the kernels in use, cryptography and OpenSSL, and
    the GHASH path of the batched AES-GCM backend on this CPU."""
    import cryptography
    from cryptography.hazmat.backends.openssl import backend as openssl

    from .. import __version__
    from ..datapath.tx import load_kernels
    try:
        kernels = load_kernels()
        compiled = kernels.__name__.endswith("_fastpath")
        kind = ("compiled Cython kernels" + (" (bounds-checked)" if kernels.BOUNDS_CHECKED
                                               else "")) if compiled else "pure-Python twin"
    except ImportError:
        compiled, kind = False, "compiled kernels not built"
    ghash = "none (reference backend)"
    if compiled and hasattr(kernels, "ghash_default_path"):
        try:
            ghash = kernels.ghash_default_path()
        except ValueError as error:
            ghash = f"unusable: {error}"
    return (f"ipsecoffload {__version__}; {kind}; cryptography {cryptography.__version__} "
            f"({openssl.openssl_version_text()}); GHASH path: {ghash}")


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="In software, what a NIC does for Windows IPsec "
                                            "Offload Version 2: offloaded ESP SAs, the send "
                                            "path, LSO.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="the package, kernels, cryptography/OpenSSL and GHASH path")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser(
        "demo", help="synthetic traffic through built-in SAs; writes plain.pcap, esp.pcap, "
                     "sa.json and esp_sa",
        description="With no input at all: synthetic IPv4/IPv6 TCP/UDP traffic (LSO "
                    "super-packets included) through built-in SAs (AES-GCM transport, "
                    "AES-CBC + HMAC tunnel, ESN across 2**32, UDP-encapsulated), the full host "
                    "stack + miniport path. Writes plain.pcap, esp.pcap, sa.json and esp_sa "
                    "(Wireshark) into DIR. The SA keys are fixed, public demo keys.")
    demo.add_argument("--out", metavar="DIR", default="demo-out",
                      help="output directory (default: demo-out)")
    demo.set_defaults(run=cmd_demo)

    encrypt = commands.add_parser(
        "encrypt", help="plaintext capture to IPsec capture",
        description="Encrypt a classic pcap capture (Ethernet or raw IP) with the SAs of an SA "
                    "file: the first SA whose selector matches a packet protects it, unmatched "
                    "packets pass in clear, malformed packets are counted and dropped. The "
                    "summary goes to stdout.")
    encrypt.add_argument("-i", "--input", metavar="IN.pcap", required=True)
    encrypt.add_argument("-o", "--output", metavar="OUT.pcap", required=True)
    encrypt.add_argument("--sa", metavar="SA.json", required=True, help="the SA file")
    encrypt.add_argument("--mss", metavar="N", type=_positive,
                         help="TCP packets with more than N payload bytes in transport-mode "
                              "SAs go as LSO super-packets and leave as N-byte segments")
    encrypt.add_argument("--json", action="store_true", help="the summary as one JSON object")
    encrypt.add_argument("--batch", metavar="N", type=_positive, default=DEFAULT_BATCH,
                         help=f"packets per batch (default: {DEFAULT_BATCH})")
    encrypt.set_defaults(run=cmd_encrypt)

    wireshark = commands.add_parser(
        "wireshark-sa", help="print the Wireshark esp_sa table for an SA file (with keys)",
        description="Print the SAs as lines of Wireshark's esp_sa file (Preferences > "
                    "Protocols > ESP > ESP SAs). This prints the keys: it is the one command "
                    "that outputs key material.")
    wireshark.add_argument("--sa", metavar="SA.json", required=True, help="the SA file")
    wireshark.set_defaults(run=cmd_wireshark_sa)

    benchmark = commands.add_parser(
        "bench", help="throughput per packet size, with reference figures",
        description="Miniport throughput per packet size, with the same run's reference "
                    "figures: the suite's raw cipher on 1 MiB (limit) and a Python loop of one "
                    "cipher call per packet (naive). Path 'send': prebuilt frames, one NBL "
                    "per packet; 'lso': one LSO super-packet of SIZE TCP payload bytes cut "
                    "at --mss (pps counts segments).")
    sizes = ",".join(map(str, bench.DEFAULT_SIZES))
    benchmark.add_argument("--json", action="store_true", help="a JSON list of rows")
    benchmark.add_argument("--path", choices=bench.PATHS, default="send",
                           help="what to time (default: send)")
    benchmark.add_argument("--sizes", type=_sizes, default=None,
                           help=f"comma-separated IP packet sizes (default: {sizes}; for lso "
                                f"the TCP payload, default {bench.DEFAULT_LSO_SIZE})")
    benchmark.add_argument("--batch", metavar="N", type=_positive, default=bench.DEFAULT_BATCH,
                           help=f"packets per send, at most {bench.MAX_BATCH} "
                                f"(default: {bench.DEFAULT_BATCH})")
    benchmark.add_argument("--mss", metavar="N", type=_positive, default=bench.DEFAULT_MSS,
                           help=f"lso: the segment payload (default: {bench.DEFAULT_MSS})")
    benchmark.add_argument("--encryption", default="aes-gcm-128",
                           help="SA-file encryption name (default: aes-gcm-128)")
    benchmark.add_argument("--integrity", default=None,
                           help="SA-file integrity name (with aes-cbc-* or null)")
    benchmark.add_argument("--ah", metavar="INTEGRITY", default=None,
                           help="add AH with this SA-file integrity name: an AH+ESP bundle, "
                                "or AH alone with --encryption none")
    benchmark.add_argument("--min-time", metavar="SECONDS", type=_min_time, default=0.3,
                           help="time each measurement for at least this long (default: 0.3)")
    benchmark.set_defaults(run=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_OK
    except (UsageError, PcapError, SaFileError) as error:
        message = str(error)
    except OSError as error:
        message = _os_error(error)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE
