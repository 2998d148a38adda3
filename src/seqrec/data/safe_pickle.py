"""Load pickles that may only contain plain data, never code.

The TAAC 2025 data ships its id maps and line offsets as pickles (``indexer.pkl``, ``seq_offsets.pkl``,
``emb_81_32.pkl``). A plain ``pickle.load`` of a file from the internet runs whatever callable the file
names. Every callable or class reaches the unpickler through ``find_class`` (the GLOBAL, STACK_GLOBAL,
INST and EXT opcodes), so refusing every global leaves only the opcodes that build dict, list, tuple,
set, int, float, str, bool, None and bytes directly: nothing in the file can run.

By default NumPy arrays are refused too. ``numeric_arrays=True`` (used for the multimodal vector table
``emb_81_*.pkl``, whose vectors are often NumPy arrays) admits exactly the three NumPy functions that
rebuild a numeric array or scalar (``_reconstruct``, ``dtype``, ``scalar``), and the dtype is checked to be
bool, integer or float before anything is built: no object arrays, so still nothing in the file can run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.errors import DataError


class UnsafePickleError(DataError):
    """A pickle names a global (a class or a callable); loading it could run code.

    Attributes:
        path: the file being loaded.
        module: module of the refused global.
        name: qualified name of the refused global.
    """

    def __init__(self, path: str | Path, module: str, name: str) -> None:
        super().__init__(
            f"{path}: refused to load global '{module}.{name}': only plain containers and scalars "
            "(dict, list, tuple, set, int, float, str, bool, None, bytes) are allowed, because "
            "unpickling a class or callable can run arbitrary code",
            path=path,
        )
        self.module = module
        self.name = name


def _numeric_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for pickles, limited to bool, integer and float dtypes."""
    dtype = np.dtype(*args)
    if dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"dtype {dtype} is not numeric")
    return dtype


def _numeric_scalar(dtype: np.dtype, data: Any = None) -> Any:
    """``numpy`` scalar reconstruction for numeric dtypes (the dtype already passed ``_numeric_dtype``)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError("only numeric NumPy scalars may be unpickled")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numeric_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy`` array reconstruction: an empty ndarray whose state (numeric dtype, data) comes next."""
    if cls is not np.ndarray or typecode != b"b":
        raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _numeric_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numpy``'s protocol-5 array reconstruction (out-of-band-capable buffer), numeric dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or order not in ("C", "F"):
        raise pickle.UnpicklingError("only numeric NumPy arrays may be unpickled")
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise pickle.UnpicklingError("array data must be a bytes buffer")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it to write bytes (an array's buffer) as latin-1 text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted for latin-1 text only")
    return text.encode("latin1")


# The globals a pickled numeric NumPy array or scalar names (NumPy 1.x writes numpy.core, 2.x numpy._core).
_NUMERIC_GLOBALS = {
    **{(mod, "_reconstruct"): _numeric_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "scalar"): _numeric_scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _numeric_frombuffer for mod in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("_codecs", "encode"): _latin1_bytes,
}


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` refuses every global (but numeric NumPy ones, when asked)."""

    def __init__(self, file: io.BufferedIOBase, path: str | Path, numeric_arrays: bool = False) -> None:
        super().__init__(file)
        self._path = path
        self._numeric_arrays = numeric_arrays

    def find_class(self, module: str, name: str) -> Any:
        if self._numeric_arrays and (module, name) in _NUMERIC_GLOBALS:
            return _NUMERIC_GLOBALS[module, name]
        raise UnsafePickleError(self._path, module, name)

    def persistent_load(self, pid: Any) -> Any:
        # Persistent ids hand control to loader-defined code; plain data never needs them.
        raise UnsafePickleError(self._path, "<persistent_load>", repr(pid)[:80])


def safe_load_pickle(path: str | Path, *, numeric_arrays: bool = False) -> Any:
    """Load a pickle that holds only plain containers and scalars.

    Args:
        path: the pickle file.
        numeric_arrays: also admit NumPy arrays and scalars of bool, integer or float dtype.

    Returns:
        The unpickled object, built only from dict, list, tuple, set, frozenset, int, float, str, bool,
        None, bytes and bytearray.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the file names a global (class or callable); nothing from it was executed.
        DataError: the file is not a valid pickle (truncated, corrupt, or not a pickle at all); a
            ``ValueError``, as before.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f, path, numeric_arrays).load()
        except UnsafePickleError:
            raise
        except RecursionError as exc:
            raise DataError(f"{path}: pickle is nested too deeply to load", path=path) from exc
        except Exception as exc:  # noqa: BLE001 - every failure of a corrupt pickle is a data error
            raise DataError(f"{path}: not a valid pickle ({type(exc).__name__}: {exc})", path=path) from exc
