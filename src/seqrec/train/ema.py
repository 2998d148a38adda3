"""An exponential moving average of the weights (Polyak averaging), for validation and the kept model.

``train.ema_decay = d``: after every optimizer step ``avg <- d * avg + (1 - d) * weight`` for each trainable
parameter. Validation, model selection and ``best.pt`` use the average; training goes on from the raw
weights, which ``last.pt`` keeps together with the average so a resumed run continues both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """The running average of ``params`` (updated in place by :meth:`update`).

    Args:
        params: the trainable parameters to average (dense tensors).
        decay: weight of the old average per update, in (0, 1).
    """

    def __init__(self, params: list[nn.Parameter], decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.params = params
        self.decay = decay
        self.average = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self) -> None:
        for avg, p in zip(self.average, self.params, strict=True):
            raw = p.detach().clone()
            p.copy_(avg)
            avg.copy_(raw)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the parameters hold the average; afterwards the raw weights again, bit for bit."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "average": self.average}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["average"]) != len(self.average):
            raise ValueError(f"the saved average has {len(state['average'])} tensors, the model {len(self.average)}")
        for avg, saved in zip(self.average, state["average"], strict=True):
            avg.copy_(saved)
