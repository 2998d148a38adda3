"""TensorBoard event files next to metrics.jsonl (``train.tensorboard: true``).

metrics.jsonl stays the record the tests and ``seqrec report`` read; this writes the same per-epoch
records as TensorBoard scalars for people who watch runs there (``tensorboard --logdir RUN``). The
tensorboard package is optional (``pip install 'seqrec[tensorboard]'``); asking for event files without
it is an error at the start of training, not a silent no-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # event files go to RUN/tensorboard
_TRAIN_KEYS = ("train_loss", "lr", "epoch_seconds", "eval_seconds", "temperature")


class TensorboardLog:
    """Writes each epoch record as scalars, at the epoch number as the global step.

    Tags: ``train/loss``, ``train/lr``, ``time/epoch_seconds``, ``time/eval_seconds``,
    ``train/temperature`` (a learnable temperature) and ``valid/<metric>`` for each validation metric.
    The event's time is the moment it is written, so TensorBoard's "relative" axis is wall-clock time.

    Usage (rank 0 only)::

        tensorboard = TensorboardLog(run_dir)
        tensorboard.epoch(record)  # after each metrics.jsonl record
        tensorboard.close()
    """

    def __init__(self, run_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer imports the tensorboard package
            raise RuntimeError("train.tensorboard needs the tensorboard package: pip install 'seqrec[tensorboard]' "
                               "(or set train.tensorboard=false)") from exc
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def epoch(self, record: dict[str, Any]) -> None:
        """Writes one metrics.jsonl record (``epoch`` required; the other keys as present) and flushes."""
        step = int(record["epoch"])
        for key in _TRAIN_KEYS:
            if key in record:
                section = "time" if key.endswith("_seconds") else "train"
                name = "loss" if key == "train_loss" else key
                self._writer.add_scalar(f"{section}/{name}", float(record[key]), step)
        for name, value in record.get("valid", {}).items():
            self._writer.add_scalar(f"valid/{name}", float(value), step)
        self._writer.flush()  # a killed run keeps what it has written

    def close(self) -> None:
        self._writer.close()
