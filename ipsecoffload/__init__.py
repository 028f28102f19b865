"""ipsecoffload: in software, what a NIC does for Windows IPsec Offload Version 2.

The public API, re-exported from the modules that own it.
"""
from . import ndis
from .datapath.batch import PacketBatch, PacketBatchBuilder
from .datapath.layout import IcvSpace, IvSource, Reason
from .control.miniport import Miniport, OffloadState, default_capabilities
from .io.capture import encrypt_capture
from .io.safile import SaFileError, SaPolicy, Selector, load_sa_file, save_sa_file
from .host.saconfig import SaConfig
from .datapath.tx import SendResult
from .host.stack import HostStack, StackSa

__version__ = "0.1.0"

__all__ = ["HostStack", "IcvSpace", "IvSource", "Miniport", "OffloadState", "PacketBatch",
           "PacketBatchBuilder", "Reason", "SaConfig", "SaFileError", "SaPolicy", "Selector",
           "SendResult", "StackSa", "default_capabilities", "encrypt_capture", "load_sa_file",
           "ndis", "save_sa_file", "__version__"]
