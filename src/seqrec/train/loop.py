"""The training loop: one explicit function, top to bottom.

setup -> (resume) -> epochs -> steps: forward, loss, backward, clip, step -> periodic validation ->
checkpoints (last, best) -> early stopping -> one test evaluation of the best checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from seqrec.config import RunConfig, config_to_dict
from seqrec.data.batches import BatchBuilder
from seqrec.data.dataset import Interactions
from seqrec.data.readers import read_interactions
from seqrec.data.split import LeaveOneOut, leave_one_out
from seqrec.evaluation.evaluate import evaluate_model, evaluate_popularity
from seqrec.model.sasrec import SASRec, similarity_for_loss
from seqrec.train.checkpoint import (
    atomic_write,
    ids_to_list,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from seqrec.train.objective import Objective
from seqrec.train.schedule import learning_rate, seed_everything

log = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists without --resume/--overwrite, not writable, ...)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_valid: dict[str, float]
    test: dict[str, float]
    popularity_test: dict[str, float]
    epochs_run: int
    train_seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Creates ``run_dir``; refuses to reuse one that holds a run unless resuming or overwriting."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other")
    existing = run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)
    if existing and not (resume or overwrite):
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise RunDirError(f"--resume: no checkpoint at {run_dir / 'checkpoints' / 'last.pt'}")
    if overwrite and existing:
        for name in ("metrics.jsonl", "results.json"):
            (run_dir / name).unlink(missing_ok=True)
        for name in ("last.pt", "best.pt"):
            (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"run directory {run_dir} is not writable: {exc.strerror or exc}") from exc


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drops records written after the checkpoint being resumed (they will be rewritten)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line).get("step", 0) <= step]
    atomic_write(path, lambda h: h.write("".join(line + "\n" for line in keep).encode()))


def item_counts(split: LeaveOneOut) -> np.ndarray:
    inter = split.interactions
    within = np.arange(len(inter.items)) - np.repeat(inter.offsets[:-1], inter.lengths)
    train_events = inter.items[within < np.repeat(split.train_lengths, inter.lengths)]
    return np.bincount(train_events, minlength=inter.num_items + 1)


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    interactions: Interactions | None = None,
    command: list[str] | None = None,
) -> TrainResult:
    """Trains a SASRec model as configured and writes the run directory.

    Args:
        config: the resolved run configuration.
        run_dir: output directory (config.yaml, command.txt, metrics.jsonl, checkpoints/, results.json).
        resume: continue from ``checkpoints/last.pt`` (same config).
        overwrite: replace an existing run.
        interactions: already-loaded data (otherwise read from ``config.data``).
        command: the command line, recorded in the run directory.
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    tc = config.train
    device = resolve_device(tc.device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)

    # ---- setup: data, model, objective, optimizer
    inter = interactions if interactions is not None else read_interactions(config.data)
    split = leave_one_out(inter)
    builder = BatchBuilder(
        inter.offsets, inter.items, split.train_lengths, inter.num_items, config.model.maxlen,
        config.loss.negatives_per_position,
    )
    if len(builder.users) == 0:
        raise ValueError("no user has two or more training interactions; nothing to train on")
    seed_everything(tc.seed)
    model = SASRec(inter.num_items, config.model).to(device)
    objective = Objective(config.loss, item_counts(split)).to(device)
    similarity = similarity_for_loss(config.loss.name)
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    steps_per_epoch = builder.num_batches(tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs

    epoch, epoch_step, step = 0, 0, 0
    best_metric, best_epoch, bad_evals, train_seconds = -math.inf, -1, 0, 0.0
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if state["config"] != config_to_dict(config):
            raise RunDirError(f"--resume: the configuration differs from the one stored in {state['path']}")
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        epoch, epoch_step, step = state["epoch"], state["epoch_step"], state["step"]
        best_metric, best_epoch, bad_evals = state["best_metric"], state["best_epoch"], state["bad_evals"]
        train_seconds = state["train_seconds"]
        _truncate_metrics(metrics_path, step)
        log.info("resumed %s at epoch %d step %d", run_dir, epoch, epoch_step)
    else:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        atomic_write(run_dir / "config.yaml", lambda h: h.write(text.encode()))
        cmd = " ".join(command if command is not None else sys.argv)
        atomic_write(run_dir / "command.txt", lambda h: h.write((cmd + "\n").encode()))

    def checkpoint_state() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "epoch_step": epoch_step,
            "step": step,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "bad_evals": bad_evals,
            "train_seconds": train_seconds,
            "config": config_to_dict(config),
            "similarity": similarity,
            "num_items": inter.num_items,
            "item_ids": ids_to_list(inter.item_ids),
            "user_ids": ids_to_list(inter.user_ids),
        }

    # ---- epochs
    select = config.eval.select_metric
    stop = tc.patience > 0 and bad_evals >= tc.patience
    while epoch < tc.epochs and not stop:
        model.train()
        started = time.perf_counter()
        bar = tqdm(
            builder.epoch(tc.seed, epoch, tc.batch_size, start_step=epoch_step),
            total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=not progress, leave=False, unit="batch",
        )
        loss_sum, loss_count, sequences = 0.0, 0, 0
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            lr = learning_rate(step, total_steps, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            generator = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + step)
            loss = objective(model, batch, generator)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch + 1} step {epoch_step} (global step {step}), "
                    f"lr {lr:.3g}, loss {config.loss.name}; the best checkpoint is untouched"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, tc.clip_grad_norm)
            optimizer.step()
            step += 1
            epoch_step += 1
            loss_sum += loss.item()
            loss_count += 1
            sequences += batch.input_ids.shape[0]
            bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", seq_s=f"{sequences / (time.perf_counter() - started):.0f}")
            if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0 and epoch_step < steps_per_epoch:
                train_seconds_now = train_seconds + time.perf_counter() - started
                save_checkpoint({**checkpoint_state(), "train_seconds": train_seconds_now}, run_dir / "checkpoints" / "last.pt")
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        epoch += 1
        epoch_step = 0
        record: dict[str, Any] = {
            "epoch": epoch, "step": step, "train_loss": loss_sum / max(loss_count, 1),
            "epoch_seconds": epoch_seconds, "train_seconds": train_seconds, "lr": lr,
        }
        if objective.log_temperature is not None:
            record["temperature"] = float(objective.temperature)
        improved = False
        if epoch % config.train.eval_every == 0 or epoch == tc.epochs:
            valid = evaluate_model(model, split, "valid", similarity, config.eval, device=device)
            record["valid"] = valid
            if valid[select] > best_metric:
                best_metric, best_epoch, bad_evals, improved = valid[select], epoch, 0, True
            else:
                bad_evals += 1
            stop = tc.patience > 0 and bad_evals >= tc.patience
            log.info("epoch %d: loss %.4f, valid %s %.4f (best %.4f at %d), %.1fs",
                     epoch, record["train_loss"], select, valid[select], best_metric, best_epoch, epoch_seconds)
        if tc.max_minutes is not None and train_seconds >= tc.max_minutes * 60:
            stop = True
            record["stopped"] = "time budget"
        state = checkpoint_state()
        if improved:
            save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
        save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
        _append_jsonl(metrics_path, record)

    # ---- test, once, on the model selected by validation
    if best_epoch < 0:
        raise RuntimeError("training ended without a validation; no best checkpoint")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    valid_best = evaluate_model(model, split, "valid", similarity, config.eval, device=device)
    test = evaluate_model(model, split, "test", similarity, config.eval, device=device)
    pop = evaluate_popularity(split, "test", config.eval)
    results = {
        "best_epoch": best_epoch, "epochs_run": epoch, "train_seconds": train_seconds,
        "valid": valid_best, "test": test, "popularity": {"test": pop},
    }
    text = json.dumps(results, indent=2) + "\n"
    atomic_write(run_dir / "results.json", lambda h: h.write(text.encode()))
    return TrainResult(run_dir, best_epoch, valid_best, test, pop, epoch, train_seconds)
