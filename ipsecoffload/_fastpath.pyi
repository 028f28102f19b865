"""Type stubs of the compiled kernels (ipsecoffload/_fastpath.pyx); _pykernels.py is the twin."""
import numpy as np
import numpy.typing as npt

STRUCT_SIZES: dict[str, int]
BOUNDS_CHECKED: bool

def struct_offsets() -> dict[str, dict[str, int]]: ...
def classify(arena: npt.NDArray[np.uint8], nb_off: npt.NDArray[np.int64],
             nb_len: npt.NDArray[np.int64], nb_nbl: npt.NDArray[np.int32],
             nb_count: npt.NDArray[np.int32], offload_handle: npt.NDArray[np.uint64],
             tunnel_handle: npt.NDArray[np.uint64], next_header: npt.NDArray[np.uint8],
             pad_length: npt.NDArray[np.uint8], ah_off4: npt.NDArray[np.uint8],
             esp_off4: npt.NDArray[np.uint8], lso_info: npt.NDArray[np.uint64],
             l2_len: npt.NDArray[np.uint16], records: npt.NDArray[np.uint8], config: int,
             icv_space: int, plans: npt.NDArray[np.uint8],
             nbl_status: npt.NDArray[np.uint32]) -> None: ...
def emit(arena: npt.NDArray[np.uint8], nb_off: npt.NDArray[np.int64],
         nb_len: npt.NDArray[np.int64], nb_nbl: npt.NDArray[np.int32],
         plans: npt.NDArray[np.uint8], records: npt.NDArray[np.uint8], iv_source: int,
         rand: npt.NDArray[np.uint8], nb_out_pos: npt.NDArray[np.int64],
         nb_frame: npt.NDArray[np.int64], nb_job: npt.NDArray[np.int64],
         out: npt.NDArray[np.uint8], out_off: npt.NDArray[np.int64],
         out_len: npt.NDArray[np.int64], out_nbl: npt.NDArray[np.int32],
         job_slot: npt.NDArray[np.int32], job_esp: npt.NDArray[np.int64],
         job_text: npt.NDArray[np.int64], job_text_len: npt.NDArray[np.int64],
         job_icv: npt.NDArray[np.int64], job_seq_hi: npt.NDArray[np.uint32],
         job_post: npt.NDArray[np.uint8], job_udp: npt.NDArray[np.int64],
         job_ip: npt.NDArray[np.int64]) -> None: ...
def finalize(out: npt.NDArray[np.uint8], records: npt.NDArray[np.uint8],
             job_slot: npt.NDArray[np.int32], job_icv: npt.NDArray[np.int64],
             job_post: npt.NDArray[np.uint8], job_udp: npt.NDArray[np.int64],
             job_ip: npt.NDArray[np.int64]) -> None: ...
