"""Load pickles that may only contain plain data, never code.

The TAAC 2025 data ships its id maps and line offsets as pickles (``indexer.pkl``, ``seq_offsets.pkl``,
``emb_81_32.pkl``). A plain ``pickle.load`` of a file from the internet runs whatever callable the file
names. Every callable or class reaches the unpickler through ``find_class`` (the GLOBAL, STACK_GLOBAL,
INST and EXT opcodes), so refusing every global leaves only the opcodes that build dict, list, tuple,
set, int, float, str, bool, None and bytes directly: nothing in the file can run.

The price is that objects such as NumPy arrays are refused too; a file holding them has to be
converted by its owner (or loaded by other means they trust), which the error message says.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any


class UnsafePickleError(ValueError):
    """A pickle names a global (a class or a callable); loading it could run code.

    Attributes:
        path: the file being loaded.
        module: module of the refused global.
        name: qualified name of the refused global.
    """

    def __init__(self, path: str | Path, module: str, name: str) -> None:
        self.path = str(path)
        self.module = module
        self.name = name
        super().__init__(
            f"{self.path}: refused to load global '{module}.{name}': only plain containers and scalars "
            "(dict, list, tuple, set, int, float, str, bool, None, bytes) are allowed, because "
            "unpickling a class or callable can run arbitrary code"
        )


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` refuses every global."""

    def __init__(self, file: io.BufferedIOBase, path: str | Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(self._path, module, name)

    def persistent_load(self, pid: Any) -> Any:
        # Persistent ids hand control to loader-defined code; plain data never needs them.
        raise UnsafePickleError(self._path, "<persistent_load>", repr(pid)[:80])


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle that holds only plain containers and scalars.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object, built only from dict, list, tuple, set, frozenset, int, float, str, bool,
        None, bytes and bytearray.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the file names a global (class or callable); nothing from it was executed.
        ValueError: the file is not a valid pickle (truncated, corrupt, or not a pickle at all).
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except RecursionError as exc:
            raise ValueError(f"{path}: pickle is nested too deeply to load") from exc
        except Exception as exc:  # noqa: BLE001 - every failure of a corrupt pickle is a data error
            raise ValueError(f"{path}: not a valid pickle ({type(exc).__name__}: {exc})") from exc
