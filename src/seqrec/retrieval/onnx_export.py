"""ONNX export of the user encoder, for serving stacks without Python or seqrec.

``user_encoder.onnx`` maps ``item_ids`` (B, L) int64, internal item ids left-padded with 0 (L <= the
model's maxlen: keep the last maxlen items), to ``user_vectors`` (B, D) float32, with dynamic B and L.
The vectors are the ones ``recommend`` searches with: the encoder output at the last position,
L2-normalised inside the graph iff the checkpoint's similarity is cosine. Score them against
``items.npy`` (same directory, normalised the same way) by inner product. A run with side features
exports its item tower too: the catalogue's feature arrays become constants of the graph. A user tower
(user features) is not part of the graph: like ``POST /recommend``, it encodes histories only.

``user_encoder.json`` says how to call it: input and output names, maxlen, dim, similarity, the model
fingerprint (the ``meta.json`` of the export holds the same one), and the id files mapping raw item ids
to internal ids (``item_ids.npy`` row r = internal id r + 1).

The graph is traced with torch's TorchScript-based exporter (``dynamo=False``: the dynamo one needs
onnxscript). onnxruntime has no boolean ``EyeLike`` kernel, which the attention mask's ``torch.eye`` of
bools exports to, so ``_patch_bool_eyelike`` computes it in float and casts back.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import Interactions
from seqrec.errors import SeqrecError
from seqrec.retrieval.fbin import atomic_path
from seqrec.retrieval.recommend import LoadedModel

ONNX_FILE = "user_encoder.onnx"
ONNX_META = "user_encoder.json"
INPUT, OUTPUT = "item_ids", "user_vectors"
OPSET = 17  # LayerNormalization is an ONNX operator from opset 17 on


class UserEncoder(nn.Module):
    """(B, L) left-padded internal item ids -> (B, D) user vectors, normalised for cosine checkpoints."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.model = _exportable(loaded.model)
        self.normalize = loaded.similarity == "cosine"

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The tensors only: the tracer detaches every entry, and a feature tower's extra state (its
        schema, a dict) is none."""
        state = super().state_dict(*args, **kwargs)
        for key in [k for k, v in state.items() if not isinstance(v, torch.Tensor)]:
            del state[key]
        return state

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        vectors = self.model(item_ids)[:, -1, :]  # (B, D)
        return F.normalize(vectors, dim=-1) if self.normalize else vectors


class _MeanBag(nn.Module):
    """``EmbeddingBag(mode="mean", padding_idx=p)`` over (N, W) bags in plain ops: the exporter has no
    ``embedding_bag`` with ``padding_idx``. Padding values are left out of the mean; an empty bag is zero."""

    def __init__(self, bag: nn.EmbeddingBag):
        super().__init__()
        self.weight = bag.weight
        self.padding_idx = -1 if bag.padding_idx is None else bag.padding_idx

    def forward(self, bags: torch.Tensor) -> torch.Tensor:
        keep = (bags != self.padding_idx).unsqueeze(-1).to(self.weight.dtype)  # (N, W, 1)
        total = (F.embedding(bags, self.weight) * keep).sum(dim=1)  # (N, D)
        return total / keep.sum(dim=1).clamp(min=1.0)


def _exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every mean ``EmbeddingBag`` replaced by :class:`_MeanBag`."""
    bags = [m for m in model.modules() if isinstance(m, nn.EmbeddingBag)]
    if not bags:
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.EmbeddingBag):
                if child.mode != "mean":
                    raise ValueError(f"cannot export EmbeddingBag(mode={child.mode!r}) to ONNX")
                setattr(parent, name, _MeanBag(child))  # a ModuleDict entry too: both live in _modules
    return model


def export_onnx(loaded: LoadedModel, out: str | Path, *, fingerprint: str) -> Path:
    """Writes ``out/user_encoder.onnx`` and ``out/user_encoder.json``; returns the ``.onnx`` path.

    Raises:
        SeqrecError: If the ``onnx`` package is missing (``pip install 'seqrec[onnx]'``).
    """
    try:
        import onnx
    except ImportError as exc:
        raise SeqrecError("the ONNX export needs the onnx package: pip install 'seqrec[onnx]'") from exc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ONNX_META).unlink(missing_ok=True)  # incomplete until the JSON is back
    encoder = UserEncoder(loaded).eval()
    example = torch.tensor([[0, 1], [1, 1]], dtype=torch.int64).clamp(max=loaded.model.num_items)
    path = out / ONNX_FILE
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The sequence-length check of SASRec.forward is traced as a constant (the graph cannot raise).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(encoder, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch", 1: "length"}, OUTPUT: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
        graph = onnx.load(str(tmp))
        _patch_bool_eyelike(graph)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    meta: dict[str, Any] = {
        "file": ONNX_FILE,
        "input": {"name": INPUT, "dtype": "int64", "shape": ["batch", "length"],
                  "meaning": "internal item ids (item_ids.npy row + 1), oldest first, left-padded with 0"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", loaded.model.config.hidden_dim]},
        "maxlen": int(loaded.model.config.maxlen),
        "dim": int(loaded.model.config.hidden_dim),
        "num_items": int(loaded.model.num_items),
        "similarity": loaded.similarity,
        "normalized": loaded.similarity == "cosine",
        "item_tower": loaded.model.item_tower is not None,
        "fingerprint": fingerprint,
        "opset": OPSET,
    }
    with atomic_path(out / ONNX_META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def _patch_bool_eyelike(model: Any) -> None:
    """Rewrites every ``EyeLike`` as Cast(float) -> EyeLike(float) -> Cast(bool) (see the module docstring)."""
    from onnx import TensorProto, helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "EyeLike":
            nodes.append(node)
            continue
        source, target = node.input[0], node.output[0]
        dtype = next((a.i for a in node.attribute if a.name == "dtype"), None)
        for attribute in node.attribute:
            if attribute.name == "dtype":
                attribute.i = TensorProto.FLOAT
        node.input[0], node.output[0] = f"{source}_as_float", f"{target}_as_float"
        nodes.append(helper.make_node("Cast", [source], [node.input[0]], to=TensorProto.FLOAT, name=f"{node.name}_in"))
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [target], to=dtype if dtype is not None else TensorProto.BOOL,
                                      name=f"{node.name}_out"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def onnx_max_difference(loaded: LoadedModel, path: str | Path, windows: np.ndarray) -> float:
    """Largest absolute difference between onnxruntime's and torch's user vectors of ``windows``.

    Args:
        windows: (B, L) int64 left-padded internal item ids, L <= maxlen.

    Raises:
        ImportError: If onnxruntime is not installed.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: np.ascontiguousarray(windows, dtype=np.int64)})[0]
    expected = loaded.user_vectors(torch.from_numpy(np.asarray(windows, dtype=np.int64)))
    return float(np.abs(got - expected).max(initial=0.0))


def history_windows(loaded: LoadedModel, inter: Interactions, rows: np.ndarray) -> np.ndarray:
    """(n, L) left-padded windows of the last maxlen items of users ``rows``: real encoder inputs."""
    starts, ends = inter.offsets[rows], inter.offsets[rows + 1]
    width = int(min(max((ends - starts).max(initial=1), 1), loaded.model.config.maxlen))
    return left_padded_windows(inter.items, starts, ends, width)


def check_onnx(loaded: LoadedModel, path: str | Path, inter: Interactions, users: int = 256) -> float | None:
    """onnxruntime vs torch on the histories of up to ``users`` users (spread over the data, in batches
    of 64); None when onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    rows = np.unique(np.linspace(0, inter.num_users - 1, num=min(users, inter.num_users)).astype(np.int64))
    rows = rows[inter.lengths[rows] > 0]
    worst = 0.0
    for start in range(0, len(rows), 64):
        worst = max(worst, onnx_max_difference(loaded, path, history_windows(loaded, inter, rows[start : start + 64])))
    return worst
