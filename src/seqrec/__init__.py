"""seqrec: next-item sequential recommenders. The Python API (``seqrec/api.py``):

    import seqrec
    run = seqrec.train("log.csv", out="runs/demo")    # -> Path of the run directory
    rec = seqrec.load(run)                            # -> seqrec.Recommender
    rec.recommend([["i1", "i7"]], k=10)               # [[(raw item id, score), ...]]

``import seqrec`` loads nothing heavy: torch, faiss and the rest are imported by the first call.
"""

import sys
import types

from seqrec import train as _train_package  # an empty package __init__: cheap


class _CallableTrainPackage(types.ModuleType):
    """``seqrec.train`` is both the ``seqrec/train/`` package (``seqrec.train.loop``, ...) and the API
    function ``seqrec.train(data, ...)``: Python binds the subpackage to the name ``train`` of this
    package whenever it is imported, which would replace a plain function, so the package itself is
    made callable."""

    def __call__(self, *args, **kwargs):
        from seqrec.api import train

        return train(*args, **kwargs)


_train_package.__class__ = _CallableTrainPackage
train = sys.modules["seqrec.train"]


def load(run_dir, index: str = "exact"):
    """Loads a run for inference: ``seqrec.api.load`` (returns a ``seqrec.Recommender``)."""
    from seqrec.api import load as load_run

    return load_run(run_dir, index)


def __getattr__(name: str):
    if name == "Recommender":
        from seqrec.api import Recommender

        return Recommender
    raise AttributeError(f"module 'seqrec' has no attribute {name!r}")


__all__ = ["train", "load", "Recommender"]
