"""safe_load_pickle: plain data loads, anything naming a global is refused without running it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from seqrec.data.safe_pickle import UnsafePickleError, safe_load_pickle

PLAIN = {
    "u": {"user_a": 1, 7: 2},
    "i": {123: 1, "456": 2},
    "f": {"100": {"x": 1}},
    "misc": [1, 2.5, -3, True, False, None, "text", b"bytes", (1, (2, 3)), [], {}, 10**30],
}


class _RunsCommand:
    """Unpickling this with the plain loader would run a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Plain:
    pass


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_containers_and_scalars_round_trip(tmp_path, protocol):
    if protocol < 3:
        # Protocols 0-2 pickle bytes through a call to _codecs.encode, which must be refused.
        data = {k: v for k, v in PLAIN.items() if k != "misc"}
    else:
        data = PLAIN
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert safe_load_pickle(path) == data


def test_offsets_list_loads(tmp_path):
    path = tmp_path / "seq_offsets.pkl"
    path.write_bytes(pickle.dumps(list(range(0, 10_000, 37))))
    assert safe_load_pickle(path) == list(range(0, 10_000, 37))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_reduce_calling_os_system_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"i": {1: _RunsCommand(str(marker))}}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message
    assert "system" in message  # the refused global is named (posix.system / os.system)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("numeric_arrays", [False, True], ids=["plain", "numeric-arrays-allowed"])
def test_hand_written_global_opcode_is_refused(tmp_path, numeric_arrays):
    marker = tmp_path / "pwned"
    # Protocol 0 text: GLOBAL builtins.exec, then call it with a string argument.
    payload = f"cbuiltins\nexec\n(Vopen({str(marker)!r}, 'w').close()\ntR.".encode()
    path = tmp_path / "evil0.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"builtins\.exec"):
        safe_load_pickle(path, numeric_arrays=numeric_arrays)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [np.arange(3), np.float32(1.5), _Plain(), complex(1, 2)],
    ids=["ndarray", "numpy-scalar", "class", "complex"],
)
def test_objects_needing_a_global_are_refused(tmp_path, obj):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        safe_load_pickle(path)


@pytest.mark.parametrize(
    "payload",
    [b"", b"not a pickle at all", pickle.dumps(list(range(100)))[:-5]],
    ids=["empty", "text", "truncated"],
)
def test_corrupt_files_raise_value_error_naming_the_file(tmp_path, payload):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="bad.pkl"):
        safe_load_pickle(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        safe_load_pickle(tmp_path / "absent.pkl")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numeric_arrays_load_when_asked(tmp_path, protocol):
    obj = {7: np.arange(4, dtype=np.float32), "s": np.float64(2.5), "m": np.arange(6).reshape(2, 3).T,
           "b": np.array([True, False]), "plain": [1.0, 2.0]}
    path = tmp_path / "vectors.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(path)  # still refused by default
    out = safe_load_pickle(path, numeric_arrays=True)
    assert out.keys() == obj.keys() and out["plain"] == [1.0, 2.0]
    for key in (7, "s", "m", "b"):
        np.testing.assert_array_equal(out[key], obj[key])
        assert np.asarray(out[key]).dtype == np.asarray(obj[key]).dtype


@pytest.mark.parametrize(
    "array",
    [np.array([1, "a"], dtype=object), np.array(["text"]), np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])],
    ids=["object", "unicode", "structured"],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_non_numeric_arrays_are_refused_even_when_arrays_are_allowed(tmp_path, array, protocol):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({1: array}, protocol=protocol))
    with pytest.raises(ValueError, match="bad.pkl"):
        safe_load_pickle(path, numeric_arrays=True)
