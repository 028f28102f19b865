# cython: freethreading_compatible = True
"""Compiled stages of the datapath and the compiled crypto backends (docs/architecture.md).

Send: tx_classify -> tx_plan -> tx_emit -> (backends, per op group) -> tx_fixup.
Receive: rx_classify -> (backends, open) -> rx_complete; the host stack's rx_deliver. Each stage
takes a few typed objects, validates them once, then runs nogil over raw memory with no
Python object inside. Packet faults become statuses in the plans, never exceptions. In the
bounds-checked build (IPSECOFFLOAD_BOUNDS_CHECK=1) every arena access is range-checked and
raises IndexError instead of touching memory outside it. ipsecoffload/datapath/twin/ is the
pure-Python twin of every stage; the reference backend (crypto/reference.py) is the oracle
of every compiled backend.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove, memset

import numpy as np

cimport numpy as cnp

cnp.import_array()

include "datapath/wire.pxi"
include "datapath/structs.pxi"
include "datapath/tx_classify.pxi"
include "datapath/tx_plan.pxi"
include "datapath/ah_mutable.pxi"
include "datapath/tx_emit.pxi"
include "datapath/tx_fixup.pxi"
include "datapath/tx_run.pxi"
include "datapath/rx_classify.pxi"
include "datapath/rx_run.pxi"
include "host/rx_deliver.pxi"
include "crypto/ghash.pxi"
include "crypto/op_groups.pxi"
include "crypto/seal_gcm_batched.pxi"
include "crypto/seal_cbc_hmac.pxi"
include "host/tx_frame.pxi"
include "io/capture_scan.pxi"

# Every cpdef enum code is also a module attribute (REASON_OK, SUITE_AES_GCM, ...).
for _code_enum in (Suite, Integrity, IcvSpace, IvSource, Config, Reason, OpKind, OpStatus, Fixup,
                   IpProto, StatusCounter, RxReason, NatT, CryptoStatusCode, RxConfig, Delivery,
                   PktKind, PktFault, ScanStatus):
    globals().update({_member.name: int(_member) for _member in _code_enum})
