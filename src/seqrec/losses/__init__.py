"""Training objectives as pure functions; ``LOSSES`` names them for the config's ``loss.name``."""

from seqrec.losses.bce import bce_loss
from seqrec.losses.gbce import gbce_loss
from seqrec.losses.infonce import full_softmax_loss, infonce_loss

LOSSES = {"bce": bce_loss, "gbce": gbce_loss, "infonce": infonce_loss}

__all__ = ["LOSSES", "bce_loss", "gbce_loss", "infonce_loss", "full_softmax_loss"]
