"""ipsecoffload: in software, what a NIC does for Windows IPsec Offload Version 2.

The public API, re-exported from the modules that own it:

- one call: ``encrypt(packets, sa)`` and ``decrypt(packets, sas)`` (``api.py``), capture
  helpers (``encrypt_pcap``, ``decrypt_pcap``), the
  pcap reader and writer;
- every exception a caller may catch, under ``IpsecOffloadError`` (``errors.py``);
- the NDIS-level layer: ``Miniport``, ``HostStack``, ``SaConfig``, ``PacketBatch``, ``ndis``.
"""
from ._version import __version__
from . import ndis
from .errors import IpsecOffloadError, SaOffloadRefused
from .datapath.batch import PacketBatch, PacketBatchBuilder
from .datapath.layout import IcvSpace, IvSource, Reason
from .control.miniport import Miniport, OffloadState, default_capabilities
from .io.capture import EncryptSummary, encrypt_capture
from .io.pcap import (LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapError, PcapReader, PcapRecord,
                      PcapTruncatedWarning, PcapWriter, read_pcap, write_pcap)
from .io.safile import SaFileError, SaPolicy, Selector, load_sa_file, save_sa_file
from .host.saconfig import SaConfig
from .datapath.tx import SendResult
from .host.stack import HostStack, SequenceNumberExhausted, StackSa
from .api import (CLEAR, REFUSED, SEQUENCE_EXHAUSTED, SUCCESS, Decryptor, Encryptor,
                  PacketResults, decrypt, decrypt_pcap, decryptor, encrypt, encrypt_pcap,
                  encryptor, forget_decryptors, forget_sa, to_scapy)
from .io.decrypt import DecryptSummary, decrypt_capture

__all__ = [
    # one call
    "encrypt", "encrypt_pcap", "Encryptor", "encryptor", "forget_sa", "PacketResults",
    "SUCCESS", "REFUSED", "SEQUENCE_EXHAUSTED", "to_scapy",
    "decrypt", "decrypt_pcap", "Decryptor", "decryptor", "forget_decryptors", "CLEAR",
    "DecryptSummary", "decrypt_capture",
    # captures
    "PcapReader", "PcapWriter", "PcapRecord", "read_pcap", "write_pcap", "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW", "PcapTruncatedWarning", "EncryptSummary", "encrypt_capture",
    # SAs
    "SaConfig", "SaPolicy", "Selector", "load_sa_file", "save_sa_file",
    # errors
    "IpsecOffloadError", "SaFileError", "PcapError", "SequenceNumberExhausted",
    "SaOffloadRefused",
    # the NDIS-level layer
    "HostStack", "StackSa", "Miniport", "OffloadState", "default_capabilities", "SendResult",
    "PacketBatch", "PacketBatchBuilder", "IcvSpace", "IvSource", "Reason", "ndis",
    "__version__",
]
