"""Pure-Python twin of the compiled stages in _fastpath.pyx: same names, same arguments,
same results, one module per stage.

Slow and plain on purpose: the tests run every stage test on both and compare. Set
IPSECOFFLOAD_PURE=1 to make the whole library use this package.
"""
from ..layout import (COUNTERS, CRYPTO_OP_DTYPE, NB_PLAN_DTYPE, NBL_OOB_DTYPE, RX_PLAN_DTYPE,
                      RX_SA_KEY_DTYPE, RX_STATE_DTYPE, RX_WINDOW_DTYPE, SA_RECORD_DTYPE,
                      TRANSFORM_DTYPE, WIRE_FRAME_DTYPE)
from .op_groups import op_groups
from .rx_deliver import rx_deliver
from .rx_run import rx_nested_candidates, rx_run
from .tx_classify import tx_classify
from .tx_emit import tx_emit
from .tx_fixup import tx_fixup
from .tx_plan import tx_limit, tx_mark, tx_plan
from .tx_run import run_op_groups, tx_run

STRUCT_SIZES = {"NblOob": NBL_OOB_DTYPE.itemsize, "Transform": TRANSFORM_DTYPE.itemsize,
                "SaRecord": SA_RECORD_DTYPE.itemsize, "NbPlan": NB_PLAN_DTYPE.itemsize,
                "WireFrame": WIRE_FRAME_DTYPE.itemsize, "CryptoOp": CRYPTO_OP_DTYPE.itemsize,
                "RxSaKey": RX_SA_KEY_DTYPE.itemsize, "RxState": RX_STATE_DTYPE.itemsize,
                "RxPlan": RX_PLAN_DTYPE.itemsize, "RxWindow": RX_WINDOW_DTYPE.itemsize}
BOUNDS_CHECKED = True  # Python slicing never reaches outside a buffer

__all__ = ["BOUNDS_CHECKED", "COUNTERS", "STRUCT_SIZES", "op_groups", "run_op_groups",
           "rx_deliver", "rx_nested_candidates", "rx_run", "tx_classify", "tx_emit", "tx_fixup", "tx_limit", "tx_mark", "tx_plan",
           "tx_run"]
