"""The ``ipsecoffload`` command line (docs/architecture.md): demo, encrypt, wireshark-sa, bench.

Results go to stdout; progress (only when stderr is a terminal), warnings and errors to
stderr. Unusable input exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from typing import Optional, Sequence

from ..cli import bench
from ..io.capture import CLEAR, DEFAULT_BATCH, MAX_BATCH, EncryptSummary, SaStats, encrypt_capture
from ..host.receive import DEFAULT_REPLAY_WINDOW
from ..io.decrypt import DecryptSummary, decrypt_capture
from ..io.pcap import LINKTYPE_ETHERNET, PcapError
from ..io.atomic import OutputRefused
from ..io.safile import (SaFileError, SaPolicy, load_sa_file, update_sa_file_seq,
                          wireshark_esp_sa)

PROG = "ipsecoffload"
MAX_SIZES = 64  # bench --sizes: each size is a measurement of --min-time or more
EXIT_OK, EXIT_USAGE = 0, 2


class UsageError(Exception):
    """Unusable input or arguments: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- helpers ---------------------------------------------------------------------------------
def _quoted(text: str, limit: int = 24) -> str:
    """An argument as an error message quotes it: cut short, so that a line stays a line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _positive(text: str) -> int:
    try:
        value = int(text) if len(text) <= 20 else -1
    except ValueError:
        value = -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {_quoted(text)}")
    return value


def _batch(text: str) -> int:
    value = _positive(text) if len(text) <= 20 else MAX_BATCH + 1
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BATCH} packets per batch, "
                                         f"got {_quoted(text)}")
    return value


def _sizes(text: str) -> list:
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated packet sizes such as "
                                             f"64,512,1400, got {_quoted(text)}") from None
        # 40: IPv4 and TCP headers; the ESP overhead must fit in an IPv4 datagram
        if not 40 <= size <= 65000:
            raise argparse.ArgumentTypeError(f"packet sizes must be from 40 to 65000 bytes, "
                                             f"got {_quoted(part)}")
        sizes.append(size)
    if len(sizes) > MAX_SIZES:
        raise argparse.ArgumentTypeError(f"at most {MAX_SIZES} packet sizes, got {len(sizes)}")
    return sizes


def _min_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"expected a number of seconds in (0, 60], "
                                         f"got {_quoted(text)}")
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

    def __call__(self, packets: int, fraction: Optional[float] = None) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        rate = packets / (now - self.start) if now > self.start else 0.0
        percent = f"{min(fraction, 1.0):6.1%} " if fraction is not None else ""
        text = f"\r{self.label}: {percent}{packets} packets, {rate:,.0f}/s"
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
    if c.encryption is None:  # AH alone
        parts = [c.mode, f"AH {c.integrity}"]
    else:
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


def _with_progress(label: str, work, quiet: bool = False):
    """``work(progress)`` with a packet counter on stderr, erased afterwards."""
    progress = _Progress(label)
    progress.enabled = progress.enabled and not quiet
    try:
        return work(progress)
    finally:
        progress.close()


def _print_warnings(summary: EncryptSummary) -> None:
    for warning in summary.warnings:
        _warn(warning)


# -- commands --------------------------------------------------------------------------------
class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program runs so that the output is cleaned up
    (io/atomic.py) and the exit says why."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise _Terminated(signum)


_STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def _catch_stop_signals() -> list:
    """Turn SIGTERM and SIGHUP into _Terminated (main thread only); returns what to restore."""
    import signal
    if not threading_main():
        return []
    previous = []
    for name in _STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            previous.append((signum, signal.signal(signum, _on_signal)))
    return previous


def _restore_signals(previous: list) -> None:
    import signal
    for signum, handler in previous:
        signal.signal(signum, handler)


def cmd_encrypt(args) -> int:
    policies = load_sa_file(args.sa)
    summary = _with_progress("encrypt", lambda progress: encrypt_capture(
        args.input, args.output, policies, mss=args.mss, batch_size=args.batch,
        progress=progress, output_format=args.format, count=args.count,
        protect=[(args.sa, "SA file")], workers=args.workers), quiet=args.quiet)
    _print_warnings(summary)
    if args.update_sa:
        _update_sa_file(args, policies, summary)
    # with -o - the capture owns standard output: the summary goes to stderr
    stream = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print(json.dumps(summary.as_dict()), file=stream)
    else:
        print(format_summary(summary), file=stream)
    return EXIT_OK


def _update_sa_file(args, policies, summary: EncryptSummary) -> None:
    """encrypt --update-sa: each SA's seq becomes its next unused sequence number, so that
    the next run never repeats one (README: with AES-GCM/GMAC a repeat reuses the nonce)."""
    try:
        changed = update_sa_file_seq(args.sa, policies, summary.next_seq)
    except (SaFileError, OSError) as error:
        reason = _os_error(error) if isinstance(error, OSError) else str(error)
        pending = ", ".join(f"{name} {seq}" for name, seq in list(summary.next_seq.items())[:8])
        raise UsageError(f"{summary.output} was written, but the SA file was not updated "
                         f"({reason}); next sequence numbers: {pending}"
                         f"{', ...' if len(summary.next_seq) > 8 else ''}") from None
    if changed:
        print(f"{PROG}: updated seq of {len(changed)} SA(s) in {args.sa}", file=sys.stderr)


def format_decrypt_summary(summary: DecryptSummary) -> str:
    link = "Ethernet" if summary.linktype == LINKTYPE_ETHERNET else "raw IP"
    lines = [f"{summary.input} -> {summary.output} ({link}): {summary.packets_in} packets in, "
             f"{summary.packets_out} out, {summary.seconds:.3f} s, "
             f"{summary.packets_per_second:,.0f} packets/s",
             f"clear (passed unchanged) {summary.clear}, no SA {summary.no_sa}, "
             f"malformed {summary.malformed}",
             f"{'SA':<12} {'packets':>8} {'decrypted':>10} {'replayed':>9}  CryptoStatus"]
    for name, s in summary.sas.items():
        status = ", ".join(f"{k} {n}" for k, n in sorted(s.crypto_status.items())) or "-"
        other = ", ".join(f"{k} {n}" for k, n in sorted(s.dropped.items()))
        lines.append(f"{name:<12} {s.packets:>8} {s.decapsulated:>10} {s.replayed:>9}  {status}"
                     + (f"; dropped: {other}" if other else ""))
    return "\n".join(lines)


def cmd_decrypt(args) -> int:
    policies = load_sa_file(args.sa)
    summary = _with_progress("decrypt", lambda progress: decrypt_capture(
        args.input, args.output, policies, replay_window=args.replay_window,
        keep_failed=args.keep_failed, batch_size=args.batch, count=args.count,
        progress=progress, output_format=args.format, protect=[(args.sa, "SA file")],
        workers=args.workers),
        quiet=args.quiet)
    for warning in summary.warnings:
        _warn(warning)
    # with -o - the capture owns standard output: the summary goes to stderr
    stream = sys.stderr if args.output == "-" else sys.stdout
    if args.json:
        print(json.dumps(summary.as_dict()), file=stream)
    else:
        print(format_decrypt_summary(summary), file=stream)
    return EXIT_OK


def _window(text: str) -> int:
    from ..datapath.layout import RX_WINDOW_MAX
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= RX_WINDOW_MAX:
        raise argparse.ArgumentTypeError(f"expected a window of 0 to {RX_WINDOW_MAX} packets, "
                                         f"got {_quoted(text)}")
    return value


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def cmd_wireshark_sa(args) -> int:
    from ..io.wireshark import wireshark_notes

    policies = load_sa_file(args.sa)
    for line in wireshark_esp_sa(policies):
        print(line)
    for note in wireshark_notes(policies):
        print(f"{PROG}: note: {note}", file=sys.stderr)
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
          f"'wireshark -o esp.enable_encryption_decode:TRUE "
          f"-o esp.enable_authentication_check:TRUE {os.path.join(out, 'esp.pcap')}' "
          f"(Wireshark cannot check the ICVs of the ESN SA esn6: no ESN in its SA table)")
    return EXIT_OK


def cmd_bench(args) -> int:
    try:
        encryption = None if args.encryption in ("none", "") else args.encryption
        rows = bench.run(args.sizes, args.batch, min_time=args.min_time, path=args.path,
                         encryption=encryption, integrity=args.integrity, mss=args.mss,
                         ah=args.ah, sas=args.sas, workers=args.workers)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps([row.as_dict() for row in rows]))
    else:
        print(bench.format_table(rows))
    if args.plot:
        from .plot import plot_rows
        try:
            plot_rows(rows, args.plot)
        except ImportError as error:
            raise UsageError(str(error)) from None
    return EXIT_OK


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """What --version prints: the package, the kernels in use, cryptography and OpenSSL, and
    the AES engine and GHASH path of the batched backends on this CPU."""
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
    aes = ""
    if compiled and hasattr(kernels, "ghash_default_path"):
        try:
            ghash = kernels.ghash_default_path()
        except ValueError as error:
            ghash = f"unusable: {error}"
        try:
            from ..crypto.aes_engine import engine
            aes = f"; AES engine: {engine()}"
        except ValueError as error:
            aes = f"; AES engine: unusable: {error}"
    return (f"ipsecoffload {__version__}; {kind}; cryptography {cryptography.__version__} "
            f"({openssl.openssl_version_text()}){aes}; GHASH path: {ghash}")


# -- parser ----------------------------------------------------------------------------------
SA_FILE_POINTER = ("SA file: a JSON list of SAs in the format README.md gives (section "
                   "\"SA file\"); 'ipsecoffload demo' writes one (sa.json) to start from.")
EPILOGS = {
    "demo": """examples:
  ipsecoffload demo                      # writes demo-out/plain.pcap, esp.pcap, sa.json, esp_sa
  ipsecoffload demo --out /tmp/demo      # somewhere else
  ipsecoffload encrypt -i demo-out/plain.pcap -o again.pcap --sa demo-out/sa.json""",
    "encrypt": """examples:
  ipsecoffload encrypt -i plain.pcap -o esp.pcap --sa sa.json
  ipsecoffload encrypt -i plain.pcap -o esp.pcap --sa sa.json --mss 1448   # LSO segments
  ipsecoffload encrypt -i plain.pcap -o esp.pcap --sa sa.json --json       # summary as JSON
  ipsecoffload encrypt -i day2.pcap -o esp2.pcap --sa sa.json --update-sa  # seq continues""",
    "wireshark-sa": "\n".join([
        "examples:",
        "  ipsecoffload wireshark-sa --sa demo-out/sa.json   # the demo's SAs",
        "  ipsecoffload wireshark-sa --sa sa.json > esp_sa   # notes on stderr, table on stdout",
        "  opts=(); while read -r l; do opts+=(-o \"uat:esp_sa:$l\"); done < esp_sa",
        "  tshark -r esp.pcap -o esp.enable_encryption_decode:TRUE \\",
        "         -o esp.enable_authentication_check:TRUE \"${opts[@]}\""]),
    "bench": """examples:
  ipsecoffload bench                                   # AES-GCM-128, 64 to 9000 bytes
  ipsecoffload bench --encryption aes-cbc-128 --integrity hmac-sha256-128 --json
  ipsecoffload bench --path lso --mss 1448 --plot lso.png""",
}


def _epilog(command: str) -> str:
    text = EPILOGS[command]
    if command in ("demo", "bench"):
        return text
    return f"{text}\n\n" + "\n".join(textwrap.wrap(SA_FILE_POINTER, 78))


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped as usual; the epilog (examples) kept line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="In software, what a NIC does for Windows IPsec "
                                            "Offload Version 2: offloaded ESP SAs, the send "
                                            "path, LSO.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="the package, kernels, cryptography/OpenSSL and GHASH path")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    demo = commands.add_parser(
        "demo", epilog=_epilog("demo"), formatter_class=_HelpFormatter,
        help="synthetic traffic through built-in SAs; writes plain.pcap, esp.pcap, "
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
        "encrypt", epilog=_epilog("encrypt"), formatter_class=_HelpFormatter,
        help="plaintext capture to IPsec capture",
        description="Encrypt a pcap or pcapng capture (Ethernet, VLAN tags included, or raw "
                    "IP) with the SAs of an SA "
                    "file: the first SA whose selector matches a packet protects it, unmatched "
                    "packets pass in clear, malformed packets are counted and dropped. The "
                    "summary goes to stdout.")
    encrypt.add_argument("-i", "--input", metavar="IN.pcap", required=True,
                         help="pcap or pcapng capture; - reads standard input")
    encrypt.add_argument("-o", "--output", metavar="OUT.pcap", required=True,
                         help="output capture; - writes standard output (the summary then "
                              "goes to stderr)")
    encrypt.add_argument("--format", choices=("pcap", "pcapng"), default=None,
                         help="output format (default: the input's)")
    encrypt.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    encrypt.add_argument("--workers", metavar="N", type=_positive, default=1,
                         help="send each batch in N shards at once, by SA (threads; "
                              "default: 1)")
    encrypt.add_argument("-c", "--count", metavar="N", type=_positive, default=None,
                         help="stop after N packets")
    encrypt.add_argument("--sa", metavar="SA.json", required=True, help="the SA file")
    encrypt.add_argument("--mss", metavar="N", type=_positive,
                         help="TCP packets with more than N payload bytes in transport-mode "
                              "SAs go as LSO super-packets and leave as N-byte segments")
    encrypt.add_argument("--json", action="store_true", help="the summary as one JSON object")
    encrypt.add_argument("--update-sa", action="store_true",
                         help="after a successful run, rewrite each SA's seq in the SA file "
                              "(atomically; formatting may change) to its next unused "
                              "sequence number, so that the next run continues it: two runs "
                              "from the same seq reuse AES-GCM/GMAC nonces. Without it the SA "
                              "file is never written")
    encrypt.add_argument("--batch", metavar="N", type=_batch, default=DEFAULT_BATCH,
                         help=f"packets per batch, at most {MAX_BATCH} (default: "
                              f"{DEFAULT_BATCH})")
    encrypt.set_defaults(run=cmd_encrypt)

    decrypt = commands.add_parser(
        "decrypt", help="IPsec capture to plaintext",
        description="Decrypt a pcap or pcapng capture (Ethernet, VLAN tags included, or raw IP; "
                    "'-' is standard input / output) with the SAs of the SA "
                    "file that encrypted it: a packet's SA is found by its SPI (a tunnel SA also "
                    "by its tunnel endpoints; a transport SA's selector prefixes must contain "
                    "the packet's addresses). Verified packets leave decapsulated (transport: "
                    "the original IP packet; tunnel: the inner one); non-IPsec packets, NAT-T "
                    "keepalives and IKE pass unchanged; failures (no SA, a CryptoStatus other "
                    "than SUCCESS, replays) are dropped and counted. The summary goes to stdout.",
        epilog="examples:\n  ipsecoffload decrypt -i esp.pcap -o plain.pcap --sa sa.json\n"
               "  ipsecoffload decrypt -i esp.pcap -o out.pcap --sa sa.json --json "
               "--replay-window 1024 --keep-failed\nThe SA file format is in README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    decrypt.add_argument("-i", "--input", metavar="IN.pcap", required=True)
    decrypt.add_argument("-o", "--output", metavar="OUT.pcap", required=True)
    decrypt.add_argument("--sa", metavar="SA.json", required=True, help="the SA file")
    decrypt.add_argument("--json", action="store_true", help="the summary as one JSON object")
    decrypt.add_argument("--replay-window", metavar="N", type=_window,
                         default=DEFAULT_REPLAY_WINDOW,
                         help=f"anti-replay window in packets; 0 turns off only the replay "
                              f"check (default: {DEFAULT_REPLAY_WINDOW})")
    decrypt.add_argument("--keep-failed", action="store_true",
                         help="write failed IPsec packets too, exactly as read")
    decrypt.add_argument("-c", "--count", metavar="N", type=_positive, default=None,
                         help="stop after N packets")
    decrypt.add_argument("--batch", metavar="N", type=_batch, default=DEFAULT_BATCH,
                         help=f"packets per batch, at most {MAX_BATCH} (default: "
                              f"{DEFAULT_BATCH})")
    decrypt.add_argument("--format", choices=("pcap", "pcapng"), default=None,
                         help="output format (default: the input's)")
    decrypt.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    decrypt.add_argument("--workers", metavar="N", type=_positive, default=1,
                         help="spread the SAs over N threads (each SA's window stays in one)")
    decrypt.set_defaults(run=cmd_decrypt)
    wireshark = commands.add_parser(
        "wireshark-sa", epilog=_epilog("wireshark-sa"), formatter_class=_HelpFormatter,
        help="print the Wireshark esp_sa table for an SA file (with keys)",
        description="Print the SAs as lines of Wireshark's esp_sa file (Preferences > "
                    "Protocols > ESP > ESP SAs). This prints the keys: it is the one command "
                    "that outputs key material. What Wireshark cannot check goes to stderr, "
                    "one note per SA: ESN SAs (its SA table has no extended sequence numbers, "
                    "so their ICVs show as bad), AES-GMAC (not in Wireshark: no ICV check, "
                    "the IV read as payload) and AH (no ICV check). AES-GCM, AES-CBC + HMAC "
                    "and NULL + HMAC without ESN decrypt and verify.")
    wireshark.add_argument("--sa", metavar="SA.json", required=True, help="the SA file")
    wireshark.set_defaults(run=cmd_wireshark_sa)

    benchmark = commands.add_parser(
        "bench", epilog=_epilog("bench"), formatter_class=_HelpFormatter,
        help="throughput per packet size, with reference figures",
        description="Miniport throughput per packet size, with the same run's reference "
                    "figures: the suite's raw cipher on 1 MiB (limit) and a Python loop of one "
                    "cipher call per packet (naive). Path 'send': prebuilt frames, one NBL "
                    "per packet; 'lso': one LSO super-packet of SIZE TCP payload bytes cut "
                    "at --mss (pps counts segments); 'e2e': encrypt end to end on a generated "
                    "capture (sizes above 9000: super-packets of that TCP payload cut at "
                    "--mss).")
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
    benchmark.add_argument("--sas", metavar="N", type=_positive, default=1,
                           help=f"e2e: spread the capture over N SAs, one destination each "
                                f"(at most {bench.MAX_E2E_SAS}; default: 1)")
    benchmark.add_argument("--workers", metavar="N", type=_positive, default=1,
                           help=f"e2e: encrypt with --workers N (at most "
                                f"{bench.MAX_E2E_WORKERS}; default: 1)")
    benchmark.add_argument("--min-time", metavar="SECONDS", type=_min_time, default=0.3,
                           help="time each measurement for at least this long (default: 0.3)")
    benchmark.add_argument("--plot", metavar="FILE.png",
                           help="also draw Gbit/s against size for ours, the naive loop and "
                                "the raw cipher, from this run (needs matplotlib: "
                                "pip install 'ipsecoffload[plot]')")
    benchmark.set_defaults(run=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    previous = _catch_stop_signals()
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_OK
    except (UsageError, PcapError, SaFileError, OutputRefused) as error:
        message = str(error)
    except OSError as error:
        message = _os_error(error)
    except _Terminated as stop:
        import signal
        name = signal.Signals(stop.signum).name
        print(f"{PROG}: stopped by {name}: the run did not finish, and an output file was "
              f"left as it was (a capture on standard output is cut short)", file=sys.stderr)
        return 128 + stop.signum  # the shell's status for a death by that signal
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore_signals(previous)
    message = " ".join(message.split())
    print(f"{PROG}: error: {message}", file=sys.stderr)
    wants_json = getattr(args, "json", False) if args is not None else "--json" in argv
    if wants_json and getattr(args, "output", None) != "-":
        print(json.dumps({"error": message}))  # --json callers read stdout
    return EXIT_USAGE
