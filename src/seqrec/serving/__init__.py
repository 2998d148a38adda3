"""Answers from a trained run: the HTTP service (``app``, ``batcher``) and the TAAC result file (``taac``)."""
