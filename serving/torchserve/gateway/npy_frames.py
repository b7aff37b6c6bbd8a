"""npy bodies on the gateway's data path: each header written or parsed once per dtype and shape, then reused.

numpy's own writer and reader rebuild and re-parse the header text on every call (about 15 and 50 us
on this machine), which was a tenth of the gateway's CPU per request; one model sends the same
header over and over.
"""

from __future__ import annotations

import io

import numpy as np

_MAX_CACHED = 256  # distinct headers remembered (dtype x shape); a full cache starts over
_WRITTEN: dict[tuple[str, tuple[int, ...]], bytes] = {}
_READ: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The bytes ``numpy.save`` writes before the data of a C-ordered array of ``dtype`` and ``shape``."""
    key = (dtype.str, shape)
    header = _WRITTEN.get(key)
    if header is None:
        buffer = io.BytesIO()
        fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        try:
            np.lib.format.write_array_header_1_0(buffer, fields)
        except ValueError:  # a header longer than 64 KiB: only format 2.0 holds it
            buffer = io.BytesIO()
            np.lib.format.write_array_header_2_0(buffer, fields)
        header = buffer.getvalue()
        if len(_WRITTEN) >= _MAX_CACHED:
            _WRITTEN.clear()
        _WRITTEN[key] = header
    return header


def npy_body(array: np.ndarray) -> bytes:
    """``numpy.save`` bytes of ``array`` (no pickles: object arrays are the caller's to refuse)."""
    return npy_header(array.dtype, array.shape) + np.ascontiguousarray(array).tobytes()


def read_npy(body: bytes) -> np.ndarray:
    """The array in npy ``body`` (read-only, a view of its bytes); ValueError if it cannot be read.

    A header seen before is a dict lookup; a new one goes through ``numpy.load`` (which refuses
    object arrays and damaged headers) and is remembered when it describes a plain C-ordered array.
    """
    size = int.from_bytes(body[8:10], "little") if body[6:7] == b"\x01" else -1
    key = body[: 10 + size] if size >= 0 else b""
    layout = _READ.get(key) if key else None
    if layout is not None:
        dtype, shape = layout
        return np.frombuffer(body, dtype=dtype, offset=len(key)).reshape(shape)
    array: np.ndarray = np.load(io.BytesIO(body), allow_pickle=False)
    if key and array.size and array.flags.c_contiguous and len(body) == len(key) + array.nbytes:
        if len(_READ) >= _MAX_CACHED:
            _READ.clear()
        _READ[key] = (array.dtype, array.shape)
    return array
