"""The SA file of the command line (docs/architecture.md): a JSON list of outbound SAs (ESP, AH or
AH+ESP bundles, README), each with an optional selector. The first SA whose selector matches a packet protects it; unmatched
packets pass in clear. Also the SA table in Wireshark's ``esp_sa`` format.

Error messages name the file, the SA (by ``name``, or by index) and the field, and never
contain key bytes.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence, Union

from ..errors import IpsecOffloadError, shown, shown_name
from ..host.packetinfo import ICMP, ICMPV6, TCP, UDP, MalformedPacket, PacketInfo, parse_packet
from ..host.saconfig import SaConfig

__all__ = ["MAX_SA_FILE_BYTES", "SaFileError", "update_sa_file_seq", "Selector", "SaPolicy", "load_sa_file", "parse_sa_list",
           "save_sa_file", "policy_to_dict", "wireshark_esp_sa", "wireshark_notes"]

PROTOCOL_NAMES = {"tcp": (TCP,), "udp": (UDP,), "icmp": (ICMP, ICMPV6)}
SA_KEYS = ("name", "selector", "protocol", "mode", "tunnel", "spi", "encryption", "icv_len",
           "key", "integrity", "auth_key", "esn", "seq", "udp_encap", "ah", "via")
PROTOCOLS = ("esp", "ah", "ah+esp")
AH_KEYS = ("spi", "integrity", "auth_key")
SELECTOR_KEYS = ("src", "dst", "proto", "sport", "dport")


class SaFileError(IpsecOffloadError, ValueError):
    """The SA file cannot be used; the message says where and why (never key bytes)."""


def _allowed(names) -> str:
    return ", ".join(shown_name(n) for n in names)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Selector:
    """Which plain packets an SA protects; every part is optional (absent = any).

    ``src``/``dst`` are prefixes ("10.0.0.0/8", "2001:db8::1"), ``proto`` is 'tcp', 'udp',
    'icmp' (ICMP or ICMPv6) or a protocol number, ``sport``/``dport`` are TCP/UDP ports.
    """
    src: Optional[str] = None
    dst: Optional[str] = None
    proto: Union[str, int, None] = None
    sport: Optional[int] = None
    dport: Optional[int] = None
    _src_net: Any = field(default=None, init=False, repr=False, compare=False)
    _dst_net: Any = field(default=None, init=False, repr=False, compare=False)
    _protos: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        nets = {}
        for name in ("src", "dst"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"selector.{name} must be an address prefix string such as "
                                 f"'10.0.0.0/8' or '2001:db8::/32', got {shown(value)}")
            try:
                nets[name] = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"selector.{name} is not an address prefix: {shown(value)}") from None
        if len(nets) == 2 and nets["src"].version != nets["dst"].version:
            raise ValueError("selector.src and selector.dst must be of the same IP version")
        protos = None
        if self.proto is not None:
            if isinstance(self.proto, str) and self.proto.lower() in PROTOCOL_NAMES:
                protos = PROTOCOL_NAMES[self.proto.lower()]
                object.__setattr__(self, "proto", self.proto.lower())
            elif isinstance(self.proto, int) and _is_int(self.proto) and 0 <= self.proto <= 255:
                protos = (self.proto,)
            else:
                raise ValueError(f"selector.proto must be one of {_allowed(PROTOCOL_NAMES)} or "
                                 f"a protocol number 0-255, got {shown(self.proto)}")
        for name in ("sport", "dport"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_int(value) or not 0 <= value <= 0xFFFF:
                raise ValueError(f"selector.{name} must be a port number 0-65535, got {shown(value)}")
            if protos is not None and not set(protos) <= {TCP, UDP}:
                raise ValueError(f"selector.{name} needs proto 'tcp' or 'udp' (or no proto), "
                                 f"got proto {self.proto!r}")
        object.__setattr__(self, "_src_net", nets.get("src"))
        object.__setattr__(self, "_dst_net", nets.get("dst"))
        object.__setattr__(self, "_protos", protos)

    @classmethod
    def from_dict(cls, value) -> "Selector":
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"selector must be an object with keys among "
                             f"{_allowed(SELECTOR_KEYS)}")
        unknown = sorted(set(value) - set(SELECTOR_KEYS))
        if unknown:
            raise ValueError(f"selector has unknown key(s) {_allowed(unknown)}; allowed: "
                             f"{_allowed(SELECTOR_KEYS)}")
        return cls(**value)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in SELECTOR_KEYS
                if getattr(self, name) is not None}

    @property
    def versions(self) -> tuple:
        """The IP versions this selector can match."""
        for net in (self._src_net, self._dst_net):
            if net is not None:
                return (net.version,)
        return (4, 6)

    def matches(self, packet) -> bool:
        """Does this plain IPv4/IPv6 packet match? Unparseable packets never do."""
        try:
            return self.matches_info(parse_packet(packet))
        except MalformedPacket:
            return False

    def matches_info(self, info: PacketInfo) -> bool:
        for net, address in ((self._src_net, info.src), (self._dst_net, info.dst)):
            if net is not None and (net.version != info.version or int.from_bytes(
                    address, "big") & int(net.netmask) != int(net.network_address)):
                return False
        if self._protos is not None and info.proto not in self._protos:
            return False
        # A later fragment carries no ports, so it cannot match a selector that names them.
        if self.sport is not None and info.sport != self.sport:
            return False
        if self.dport is not None and info.dport != self.dport:
            return False
        return True


class SaPolicy(NamedTuple):
    name: str
    selector: Selector
    config: SaConfig
    # transport over tunnel: the name of the tunnel SA (same file) that carries this one
    via: Optional[str] = None


# -- loading -------------------------------------------------------------------------------
# room for 4096 SAs (the default SaOffloadCapacity) of about 1 KB each; reading stops there
MAX_SA_FILE_BYTES = 4 << 20
MAX_NAME_CHARS = 256  # a name is a label in summaries and messages
MAX_INT_DIGITS = 40  # the largest integer an SA file needs (a 64-bit seq) has 20 digits


class _TooLarge(ValueError):
    pass


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooLarge(f"an integer of {len(text.lstrip('-'))} digits (at most "
                        f"{MAX_INT_DIGITS})")
    return int(text)


def load_sa_file(path: Union[str, "os.PathLike[str]"]) -> list:
    """The SA policies of an SA file (README), in file order; raises SaFileError.

    The file is read up to MAX_SA_FILE_BYTES (a larger file, or an endless one such as
    /dev/zero, is refused), integers have at most MAX_INT_DIGITS digits, and nesting deep
    enough to exhaust the decoder's recursion is refused."""
    source = os.fspath(path)
    document = _read_sa_document(source)
    return parse_sa_list(document, source)


def _read_sa_document(source: str):
    """The decoded JSON of an SA file, with load_sa_file's bounds."""
    try:
        with open(source, "rb") as f:
            raw = f.read(MAX_SA_FILE_BYTES + 1)
    except OSError as error:
        raise SaFileError(f"cannot read SA file {source!r}: {error.strerror or error}") from None
    if len(raw) > MAX_SA_FILE_BYTES:
        raise SaFileError(f"SA file {source!r} is larger than {MAX_SA_FILE_BYTES} bytes; "
                          f"an SA file is a short JSON list")
    try:
        return json.loads(raw, parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise SaFileError(f"SA file {source!r} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        # The position only: the message must not echo the file's content (keys).
        raise SaFileError(f"SA file {source!r} is not valid JSON: {error.msg} at line "
                          f"{error.lineno} column {error.colno}") from None
    except _TooLarge as error:
        raise SaFileError(f"SA file {source!r} holds {error}") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise SaFileError(f"SA file {source!r} nests lists or objects too deeply") from None
    except ValueError:  # any other refusal of the decoder; its message may quote content
        raise SaFileError(f"SA file {source!r} is not a usable JSON SA list") from None


def update_sa_file_seq(path: Union[str, "os.PathLike[str]"], policies: Sequence[SaPolicy],
                       next_seq: dict) -> list:
    """Rewrite the ``seq`` of each SA in ``next_seq`` (SA name -> the next unused 64-bit
    sequence number) so that the next run continues them (README, "encrypt --update-sa").

    The file is read again and must still hold ``policies`` (else SaFileError: it changed
    during the run); every other key and value, and the key order, stay; the formatting
    becomes ``json.dumps(indent=2)``. Written to a temporary file beside it and renamed into
    place, with the file's permissions (io/atomic.py). Returns the names of the SAs changed.
    """
    from .atomic import SafeOutput
    source = os.fspath(path)
    document = _read_sa_document(source)
    if parse_sa_list(document, source) != list(policies):
        raise SaFileError(f"SA file {source!r} changed during the run; its seq values were "
                          f"not updated")
    changed = []
    for entry, policy in zip(document, policies):
        seq = next_seq.get(policy.name)
        if seq is None or seq == policy.config.seq:
            continue
        entry["seq"] = int(seq)
        changed.append(policy.name)
    if changed:
        text = json.dumps(document, indent=2) + "\n"
        # the real file, not a symlink to it, is replaced
        with SafeOutput(os.path.realpath(source)) as out:
            assert out.file is not None
            out.file.write(text.encode("utf-8"))
    return changed


def parse_sa_list(document, source: str = "SA list") -> list:
    """Validate a decoded SA file (a list of SA objects) into SaPolicy entries."""
    if not isinstance(document, list):
        raise SaFileError(f"{source}: must be a JSON list of SA objects, "
                          f"got a JSON {_json_type(document)}")
    if not document:
        raise SaFileError(f"{source}: lists no SA")
    policies: list[SaPolicy] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(document):
        policy = _parse_sa(entry, index, source)
        if policy.name in names:
            raise SaFileError(f"{source}: SA at index {index}: name {shown_name(policy.name)} is already "
                              f"used by the SA at index {names[policy.name]}")
        names[policy.name] = index
        policies.append(policy)
    for index, policy in enumerate(policies):
        if policy.via is not None:
            _check_via(policy, policies, names, f"{source}: SA {policy.name!r}")
    return policies


def _check_via(policy: SaPolicy, policies: list, names: dict, label: str) -> None:
    """``via`` names a tunnel SA of the same file that has no ``via`` itself, on a transport
    SA, never with UDP encapsulation on both (docs/send-path.md)."""
    if policy.config.mode != "transport":
        raise SaFileError(f"{label}: via is for mode 'transport' SAs; a tunnel SA cannot be "
                          f"carried by another tunnel")
    if policy.via == policy.name:
        raise SaFileError(f"{label}: via names the SA itself")
    if policy.via not in names:
        raise SaFileError(f"{label}: via names {policy.via!r}, which is no SA of this file")
    target = policies[names[policy.via]]
    if target.config.mode != "tunnel":
        raise SaFileError(f"{label}: via must name a mode 'tunnel' SA; {policy.via!r} is "
                          f"mode {target.config.mode!r}")
    if target.via is not None:
        raise SaFileError(f"{label}: via names {policy.via!r}, which has a via itself; "
                          f"tunnels do not chain")
    if policy.config.udp_encap and target.config.udp_encap:
        raise SaFileError(f"{label}: udp_encap on both this SA and its tunnel {policy.via!r} "
                          f"is not supported; keep it on one layer")


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _parse_sa(entry, index: int, source: str) -> SaPolicy:
    label = f"SA at index {index}"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
        label = f"SA {shown_name(entry['name'])}"

    def bad(message: str) -> SaFileError:
        return SaFileError(f"{source}: {label}: {message}")

    if not isinstance(entry, dict):
        raise bad(f"must be a JSON object, got a JSON {_json_type(entry)}")
    unknown = sorted(set(entry) - set(SA_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {_allowed(unknown)}; allowed: {_allowed(SA_KEYS)}")
    protocol = entry.get("protocol", "esp")
    if protocol not in PROTOCOLS:
        raise bad(f"protocol must be one of {_allowed(PROTOCOLS)}, got {shown(protocol)}")
    for required in ("spi",) + (("encryption",) if protocol != "ah" else ()):
        if required not in entry:
            raise bad(f"{required} is missing")
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise bad(f"name must be a non-empty string, got {shown(name)}")
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise bad(f"name must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    name = name or f"sa{index}"
    try:
        selector = Selector.from_dict(entry.get("selector"))
    except (TypeError, ValueError) as error:
        raise bad(str(error)) from None
    kwargs: dict[str, Any] = {"name": name, "spi": _spi(entry["spi"], bad),
                              "protocol": protocol}
    for key in ("encryption", "mode", "integrity"):
        value = entry.get(key)
        if value is None and (key == "mode" or (key == "encryption" and protocol != "ah")):
            if key in entry:
                raise bad(f"{key} must be a string, got null")
            continue
        if value is not None and not isinstance(value, str):
            raise bad(f"{key} must be a string, got {shown(value)}")
        kwargs[key] = value
    for key in ("key", "auth_key"):
        kwargs[key] = _hex_key(entry.get(key), key, bad)
    for key in ("icv_len", "seq"):
        if entry.get(key) is not None:
            if not _is_int(entry[key]):
                raise bad(f"{key} must be an integer, got {shown(entry[key])}")
            kwargs[key] = entry[key]
    if "esn" in entry:
        if not isinstance(entry["esn"], bool):
            raise bad(f"esn must be true or false, got {shown(entry['esn'])}")
        kwargs["esn"] = entry["esn"]
    tunnel = entry.get("tunnel")
    if tunnel is not None:
        _check_object(tunnel, "tunnel", ("src", "dst"), bad)
        kwargs["tunnel_src"], kwargs["tunnel_dst"] = tunnel.get("src"), tunnel.get("dst")
        for part in ("src", "dst"):
            if kwargs[f"tunnel_{part}"] is not None and not isinstance(kwargs[f"tunnel_{part}"],
                                                                       str):
                raise bad(f"tunnel.{part} must be an IP address string")
    ah = entry.get("ah")
    if protocol == "ah+esp":
        if ah is None:
            raise bad(f"ah is missing: protocol 'ah+esp' needs an object with keys "
                      f"{_allowed(AH_KEYS)}")
        _check_object(ah, "ah", AH_KEYS, bad)
        for required in AH_KEYS:
            if ah.get(required) is None:
                raise bad(f"ah.{required} is missing")
        if not isinstance(ah["integrity"], str):
            raise bad(f"ah.integrity must be a string, got {shown(ah['integrity'])}")
        kwargs["ah_spi"] = _spi(ah["spi"], bad)
        kwargs["ah_integrity"] = ah["integrity"]
        kwargs["ah_auth_key"] = _hex_key(ah["auth_key"], "ah.auth_key", bad)
    elif ah is not None:
        raise bad("ah is only for protocol 'ah+esp'")
    udp = entry.get("udp_encap")
    if udp is not None:
        _check_object(udp, "udp_encap", ("sport", "dport"), bad)
        kwargs["udp_encap"] = (udp.get("sport", 4500), udp.get("dport", 4500))
    via = entry.get("via")
    if via is not None and (not isinstance(via, str) or not via):
        raise bad(f"via must be the name of a tunnel SA of this file (a string), got a JSON "
                  f"{_json_type(via)}")
    try:
        config = SaConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise bad(_strip_sa_prefix(str(error), name)) from None
    return SaPolicy(name, selector, config, via)


def _check_object(value, name: str, keys: tuple, bad) -> None:
    if not isinstance(value, dict):
        raise bad(f"{name} must be an object with keys {_allowed(keys)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise bad(f"{name} has unknown key(s) {_allowed(unknown)}; allowed: {_allowed(keys)}")


def _strip_sa_prefix(message: str, name: str) -> str:
    for prefix in (f"SA {shown_name(name)}: ", "SA: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _spi(value, bad) -> int:
    if _is_int(value):
        return value
    if isinstance(value, str) and value[:2].lower() == "0x":
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise bad(f"spi must be an integer or a hex string such as '0x00001001', got {shown(value)}")


def _hex_key(value, name: str, bad) -> bytes:
    """Key bytes from a hex string; the message on error shows neither value nor digits."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise bad(f"{name} must be a hex string (or null)")
    text = value[2:] if value[:2].lower() == "0x" else value
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise bad(f"{name} must be a hex string of whole bytes (digits 0-9, a-f)") from None


# -- saving --------------------------------------------------------------------------------
def policy_to_dict(policy: SaPolicy) -> dict:
    """One SA object of the SA file (keys as hex strings)."""
    config = policy.config
    entry: dict[str, Any] = {"name": policy.name, "selector": policy.selector.to_dict(),
                             "protocol": config.protocol, "mode": config.mode}
    if config.mode == "tunnel":
        entry["tunnel"] = {"src": config.tunnel_src, "dst": config.tunnel_dst}
    entry["spi"] = f"0x{config.spi:08x}"
    if config.has_esp:
        entry["encryption"] = config.encryption
        if config.gcm:
            entry["icv_len"] = config.icv
        entry["key"] = config.key.hex()
    entry.update({"integrity": config.integrity,
                  "auth_key": config.auth_key.hex() if config.integrity else None})
    if config.protocol == "ah+esp":
        entry["ah"] = {"spi": f"0x{config.ah_spi:08x}", "integrity": config.ah_integrity,
                       "auth_key": config.ah_auth_key.hex()}
    entry.update({"esn": config.esn, "seq": config.seq})
    if config.udp_encap:
        entry["udp_encap"] = {"sport": config.udp_encap[0], "dport": config.udp_encap[1]}
    if policy.via is not None:
        entry["via"] = policy.via
    return entry


def save_sa_file(path: Union[str, "os.PathLike[str]"], policies: Sequence[SaPolicy]) -> None:
    """Write policies as an SA file that load_sa_file reads back to the same SAs."""
    text = json.dumps([policy_to_dict(p) for p in policies], indent=2)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


# -- Wireshark -----------------------------------------------------------------------------
# The value strings of Wireshark's ESP dissector (epan/dissectors/packet-ipsec.c,
# esp_encryption_type_vals / esp_authentication_type_vals). Wireshark has no AES-GMAC:
# with encryption NULL the payload is readable and the ICV is left unchecked.
_WS_AUTHENTICATION = {
    None: "NULL",
    "hmac-md5-96": "HMAC-MD5-96 [RFC2403]",
    "hmac-sha1-96": "HMAC-SHA-1-96 [RFC2404]",
    "hmac-sha256-128": "HMAC-SHA-256-128 [RFC4868]",
    "aes-gmac-128": "ANY 128 bit authentication [no checking]",
    "aes-gmac-192": "ANY 128 bit authentication [no checking]",
    "aes-gmac-256": "ANY 128 bit authentication [no checking]",
}


def _ws_encryption(config: SaConfig) -> str:
    if config.gcm:
        return f"AES-GCM with {config.icv} octet ICV [RFC4106]"
    if (config.encryption or "").startswith("aes-cbc"):
        return "AES-CBC [RFC3602]"
    return "NULL"


def _ws_address(text: Optional[str]) -> str:
    """An address for the table; '*' (any) unless the prefix is one host."""
    if text is None:
        return "*"
    net = ipaddress.ip_network(text, strict=False)
    return str(net.network_address) if net.num_addresses == 1 else "*"


def wireshark_esp_sa(policies: Sequence[SaPolicy]) -> list:
    """Lines of a Wireshark ``esp_sa`` file (Preferences > Protocols > ESP > ESP SAs).

    One line per SA and IP version: a transport SA whose selector names no address may
    carry IPv4 and IPv6, so it gets a line for each. AES-GCM keys include the 4-byte salt,
    as Wireshark wants them. These lines contain the keys.
    """
    lines = []
    for policy in policies:
        config = policy.config
        if not config.has_esp:  # AH alone: Wireshark's table is for ESP (wireshark_notes)
            continue
        if config.mode == "tunnel":
            assert config.tunnel_src and config.tunnel_dst  # SaConfig checked them
            rows = [(ipaddress.ip_address(config.tunnel_src).version, config.tunnel_src,
                     config.tunnel_dst)]
        else:
            rows = [(version, _ws_address(policy.selector.src), _ws_address(policy.selector.dst))
                    for version in policy.selector.versions]
        for version, src, dst in rows:
            fields = [f"IPv{version}", src, dst, f"0x{config.spi:08X}", _ws_encryption(config),
                      f"0x{config.key.hex()}" if config.key else "",
                      _WS_AUTHENTICATION[config.integrity],
                      f"0x{config.auth_key.hex()}" if config.auth_key else ""]
            lines.append(",".join(f'"{value}"' for value in fields))
    return lines


def wireshark_notes(policies: Sequence[SaPolicy]) -> list:
    """What the ``esp_sa`` lines leave out, one note per SA and limit (io/wireshark.py)."""
    from .wireshark import wireshark_notes as notes
    return notes(policies)
