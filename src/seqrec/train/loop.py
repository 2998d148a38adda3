"""The training loop: one explicit function, top to bottom.

setup -> (resume) -> epochs -> steps: forward, loss, backward, clip, step -> periodic validation ->
checkpoints (last, best) -> early stopping -> one test evaluation of the best checkpoint.

Several processes (torchrun, or ``seqrec train --nproc N``) train one model with DistributedDataParallel:
``train.batch_size`` is the global batch; every rank rebuilds the same global batch (same users, same
negatives) and trains on its contiguous share, and the losses are normalised so that DDP's gradient
average is the single-process gradient of the global batch. Evaluation is sharded over the ranks and
gathered, so every rank sees the same metrics and takes the same decisions; rank 0 alone writes files.
Checkpoints hold the plain model, so a run resumes on any number of processes.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from seqrec.config import EvalConfig, RunConfig, config_to_dict
from seqrec.data.batches import Batch, BatchBuilder
from seqrec.data.dataset import Interactions
from seqrec.data.features import FeatureSet, read_dataset, read_features
from seqrec.data.split import LeaveOneOut, TimeSplit, make_split, require_evaluable
from seqrec.errors import NonFiniteLossError, RunDirError
from seqrec.evaluation.evaluate import evaluate_model, evaluate_popularity, model_ranks
from seqrec.evaluation.metrics import ranking_metrics
from seqrec.losses.distributed import all_gather_variable, all_reduce_sum
from seqrec.model.features import build_model, has_item_tower
from seqrec.model.sasrec import SASRec, similarity_for_loss
from seqrec.train.auto import repeat_share, resolve_auto
from seqrec.train.checkpoint import (
    atomic_write,
    ids_to_list,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from seqrec.train.ema import WeightAverage
from seqrec.train.objective import Objective
from seqrec.train.precision import resolve_precision
from seqrec.train.processes import (
    RankBatches,
    enable_tf32,
    from_rank0,
    join_process_group,
    on_rank0,
    seed_rank_dropout,
)
from seqrec.train.run_dir import append_jsonl, check_run_dir, prepare_run_dir, truncate_metrics
from seqrec.train.schedule import learning_rate, seed_everything
from seqrec.train.sparse import check_sparse_setup, clip_grad_norm, item_tables, make_optimizer
from seqrec.train.sparse_ddp import all_reduce_sparse_grads, dense_all_reduce_bytes, exclude_from_ddp
from seqrec.train.tensorboard import TensorboardLog

log = logging.getLogger(__name__)

_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters
LOG_EVERY_SECONDS = 30.0  # without a progress bar, a progress line at most this often inside an epoch


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_valid: dict[str, float]
    test: dict[str, float]
    popularity_test: dict[str, float]
    epochs_run: int
    train_seconds: float


class _LossModule(nn.Module):
    """Encoder and objective as one module, what a training step calls.

    Wrapped in DDP, it synchronises every trainable parameter (a learnable temperature too) and the
    whole forward runs inside DDP.
    """

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        return self.objective(self.model, batch, generator)


def _evaluate(
    model: SASRec, split: LeaveOneOut | TimeSplit, stage: str, similarity: str, config: EvalConfig,
    device: torch.device, rank: int, world: int, bf16: bool = False,
) -> dict[str, float]:
    """Metrics over every evaluated user, the same on every rank.

    With several ranks, each ranks a contiguous share of the users and the ranks are gathered. ``bf16``:
    the encoder under bfloat16 autocast (validations during a bf16 run; the final numbers are float32).
    """
    if world == 1:
        return evaluate_model(model, split, stage, similarity, config, device=device, bf16=bf16)
    n = len(split.users(stage))
    share = slice(n * rank // world, n * (rank + 1) // world)
    ranks = model_ranks(model, split, stage, similarity, config, device=device, share=share, bf16=bf16)
    gathered, _ = all_gather_variable(torch.from_numpy(ranks).to(device))
    return ranking_metrics(gathered.cpu().numpy(), config.ks)


def _clock(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def item_counts(split: LeaveOneOut | TimeSplit) -> np.ndarray:
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
    features: FeatureSet | None = None,
) -> TrainResult:
    """Trains a SASRec model as configured and writes the run directory.

    Under torchrun (or in an initialised process group) every rank calls this with the same arguments;
    see the module docstring. Every rank returns the same result.

    Args:
        config: the resolved run configuration.
        run_dir: output directory (config.yaml, command.txt, metrics.jsonl, checkpoints/, results.json).
        resume: continue from ``checkpoints/last.pt`` (same config; any number of processes).
        overwrite: replace an existing run.
        interactions: already-loaded data (otherwise read from ``config.data``).
        features: side features aligned with ``interactions`` (otherwise those ``config.data`` names).
        command: the command line, recorded in the run directory.
    """
    rank, world, device, created = join_process_group(config.train.device)
    # A bar redraws itself on a terminal; in a file or a pipe every redraw would be a line of its own, so
    # there the loop writes a progress line every LOG_EVERY_SECONDS and one per epoch instead.
    bar = progress and rank == 0 and sys.stderr.isatty()
    try:
        return _train(config, Path(run_dir), rank, world, device, resume=resume, overwrite=overwrite,
                      progress=bar, interactions=interactions, command=command, features=features)
    finally:
        if created:
            dist.destroy_process_group()


def _train(
    config: RunConfig,
    run_dir: Path,
    rank: int,
    world: int,
    device: torch.device,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
    interactions: Interactions | None,
    command: list[str] | None,
    features: FeatureSet | None = None,
) -> TrainResult:
    """The body of :func:`train` on one rank of ``world`` (1 = a single process)."""
    command_started = time.perf_counter()  # train.max_minutes counts from here, data reading included
    # Only checks here: --overwrite deletes the old run once the data below has proved readable.
    on_rank0(lambda: check_run_dir(run_dir, resume=resume, overwrite=overwrite), rank, world)
    tc = config.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if device.type == "cuda":
        enable_tf32()
    precision = resolve_precision(tc.precision, device)  # auto: measured on this machine, rank 0 decides
    if world > 1:
        precision = "bf16" if from_rank0(float(precision == "bf16"), device) else "fp32"
    if tc.precision == "auto" and rank == 0:
        log.info("train.precision=auto: %s on this %s", precision, device.type)

    # ---- setup: data, model, objective, optimizer
    if interactions is None:
        inter, features = read_dataset(config.data, progress=progress)
    else:
        inter = interactions
        features = features if features is not None else read_features(config.data, inter)
    split = make_split(inter, config.data)
    if isinstance(split, TimeSplit) and rank == 0:
        log.info("%s", split.summary())
    item_tower = has_item_tower(config.model, features)
    repeats = repeat_share(inter.offsets, inter.items, split.train_lengths)
    config, chosen = resolve_auto(config, split.train_lengths, repeats, item_tower, inter.num_items)
    tc = config.train
    if chosen and rank == 0:
        log.info("chosen from the data (train/auto.py): %s", ", ".join(f"{k}={v}" for k, v in chosen.items()))
    builder = BatchBuilder(
        inter.offsets, inter.items, split.train_lengths, inter.num_items, config.model.maxlen,
        config.loss.negatives_per_position, actions=inter.actions if config.loss.action_weights else None,
        length_buckets=tc.length_buckets, window=tc.window,
    )
    if config.loss.action_weights and inter.actions is None:
        raise ValueError("loss.action_weights needs the action type of every event (e.g. TAAC data); this data has none")
    if len(builder.users) == 0:
        raise ValueError("no user has two or more training interactions; nothing to train on")
    require_evaluable(split, config.data.path)
    on_rank0(lambda: prepare_run_dir(run_dir, resume=resume, overwrite=overwrite), rank, world)
    tensorboard = TensorboardLog(run_dir) if tc.tensorboard and rank == 0 else None
    seed_everything(tc.seed)
    model = build_model(inter.num_items, config.model, features).to(device)
    objective = Objective(config.loss, item_counts(split), precision=precision, distributed=world > 1).to(device)
    similarity = similarity_for_loss(config.loss.name)
    params = list(model.parameters()) + list(objective.parameters())
    if tc.sparse_embeddings:
        check_sparse_setup(config.loss.name, config.loss.mode)
    optimizer = make_optimizer(model, objective.parameters(), lr=tc.lr, betas=tc.betas,
                               weight_decay=tc.weight_decay, sparse_embeddings=tc.sparse_embeddings)
    average = None if tc.ema_decay is None else WeightAverage([p for p in params if p.requires_grad], tc.ema_decay)
    averaged = nullcontext if average is None else average.swapped_in  # validation sees the average
    steps_per_epoch = builder.num_batches(tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs

    epoch, epoch_step, step = 0, 0, 0
    best_metric, best_epoch, bad_evals, train_seconds = -math.inf, -1, 0, 0.0
    lr_scale = 1.0  # train.lr_decay=plateau|budget: halved after every plateau_patience validations without improvement
    budget_used = 0.0  # share of the time budget spent, as of the last check (train.lr_decay=budget)
    best_valid: dict[str, float] | None = None
    wall_before = 0.0  # wall-clock seconds of earlier invocations (resume)
    eval_seconds = 0.0  # duration of the last validation: the test evaluation at the end costs about as much
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        if state["config"] != config_to_dict(config):
            raise RunDirError(f"--resume: the configuration differs from the one stored in {state['path']}")
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        if average is not None and state.get("ema") is not None:
            average.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        epoch, epoch_step, step = state["epoch"], state["epoch_step"], state["step"]
        best_metric, best_epoch, bad_evals = state["best_metric"], state["best_epoch"], state["bad_evals"]
        lr_scale = state.get("lr_scale", 1.0)
        train_seconds = state["train_seconds"]
        wall_before = state.get("wall_seconds", train_seconds)
        best_valid = state.get("best_valid")
        eval_seconds = state.get("eval_seconds", 0.0)
        if rank == 0:
            truncate_metrics(metrics_path, step)
            log.info("resumed %s at epoch %d step %d on %d process(es)", run_dir, epoch, epoch_step, world)
    elif rank == 0:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        atomic_write(run_dir / "config.yaml", lambda h: h.write(text.encode()))
        cmd = " ".join(command if command is not None else sys.argv)
        atomic_write(run_dir / "command.txt", lambda h: h.write((cmd + "\n").encode()))
    if rank > 0:
        seed_rank_dropout(tc.seed, rank, step)
    # What a step calls: the (compiled) encoder and the objective, under DDP with several processes.
    # Evaluation and checkpoints use the plain ``model``, which shares the parameters.
    step_module: nn.Module = _LossModule(torch.compile(model) if tc.compile else model, objective)
    # train.sparse_embeddings under DDP: the item tables stay out of DDP's dense all-reduce; only the rows
    # of the global batch are exchanged after backward (train/sparse_ddp.py).
    sparse_tables = item_tables(model) if tc.sparse_embeddings and world > 1 else []
    if world > 1:
        if sparse_tables:
            exclude_from_ddp(step_module, sparse_tables)
        # The model's buffers are constant feature tables (model/features.py), identical on every rank:
        # re-broadcasting them before each step would only cost bandwidth (they are synced once, at init).
        # ``forward_sync_buffers`` (torch >= 2.13) replaces ``broadcast_buffers``, deprecated there.
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers"
        step_module = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                              **{no_sync: False})
    pin = device.type == "cuda"

    budget = None if tc.max_minutes is None else tc.max_minutes * 60.0

    def wall_seconds() -> float:
        """Seconds this run has taken so far, earlier invocations included (the same on every rank)."""
        now = wall_before + time.perf_counter() - command_started
        return from_rank0(now, device) if world > 1 else now

    def checkpoint_state() -> dict[str, Any]:
        # Rank 0 alone calls this, so it must not run a collective: wall_seconds()'s broadcast here met
        # the other ranks' next collective (a barrier, an all-reduce) and hung or aborted them (issue 18).
        own_wall_seconds = wall_before + time.perf_counter() - command_started
        return {
            "model": model.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": None if average is None else average.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "epoch_step": epoch_step,
            "step": step,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "bad_evals": bad_evals,
            "lr_scale": lr_scale,
            "train_seconds": train_seconds,
            "wall_seconds": own_wall_seconds,
            "best_valid": best_valid,
            "eval_seconds": eval_seconds,
            "config": config_to_dict(config),
            "similarity": similarity,
            "num_items": inter.num_items,
            "item_ids": ids_to_list(inter.item_ids),
            "user_ids": ids_to_list(inter.user_ids),
        }

    # ---- epochs
    select = config.eval.select_metric
    if budget is not None:
        budget_used = wall_seconds() / budget  # a resumed run goes on where its lr schedule was
    stop = tc.patience > 0 and bad_evals >= tc.patience
    last_epoch_wall = 0.0  # training + validation of the last epoch
    while epoch < tc.epochs and not stop:
        if budget is not None and epoch > 0 and wall_seconds() + last_epoch_wall + eval_seconds > budget:
            # The next epoch, at the last one's pace, and the test evaluation would end past the budget.
            break
        model.train()
        started = time.perf_counter()
        out_of_time = False
        loader = DataLoader(
            RankBatches(builder, tc.seed, epoch, tc.batch_size, epoch_step, rank, world),
            batch_size=None, num_workers=tc.num_workers, pin_memory=pin,
            # Its own generator: an iterator draws a worker base seed, which from the global RNG would
            # shift the dropout stream of a resumed epoch (batches depend on (seed, epoch, step) only).
            generator=torch.Generator(),
        )
        bar = tqdm(
            loader, total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=not progress, leave=False, unit="batch",
        )
        loss_sum, loss_count, sequences = 0.0, 0, 0
        logged_at = started
        for batch in bar:
            batch = batch.to(device, non_blocking=pin)
            lr = learning_rate(step, total_steps, tc, budget_used) * lr_scale
            for group in optimizer.param_groups:
                group["lr"] = lr
            generator = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + step)
            loss = step_module(batch, generator)
            loss_value = all_reduce_sum(loss.detach()).item() / world  # the loss of the global batch
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch + 1} step {epoch_step} (global step {step}), "
                    f"lr {lr:.3g}, loss {config.loss.name}; the best checkpoint is untouched"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sparse_tables:
                exchanged = all_reduce_sparse_grads(sparse_tables, world)
                if step == 0 and rank == 0:
                    log.info("sparse item-table gradients under DDP: step 1 exchanged %.2f MB per rank "
                             "(row ids + rows); a dense all-reduce of the tables moves %.2f MB per rank",
                             exchanged / 1e6, dense_all_reduce_bytes(sparse_tables, world) / 1e6)
            if tc.clip_grad_norm is not None:
                (clip_grad_norm if tc.sparse_embeddings else torch.nn.utils.clip_grad_norm_)(params, tc.clip_grad_norm)
            optimizer.step()
            if average is not None:
                average.update()
            sequences += min(tc.batch_size, len(builder.users) - epoch_step * tc.batch_size)  # global rows
            step += 1
            epoch_step += 1
            loss_sum += loss_value
            loss_count += 1
            now = time.perf_counter()
            seq_s = sequences / max(now - started, 1e-9)
            if progress:
                bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", seq_s=f"{seq_s:.0f}")
            elif rank == 0 and now - logged_at >= LOG_EVERY_SECONDS:
                logged_at = now
                eta = (steps_per_epoch - epoch_step) * (now - started) / max(loss_count, 1)
                log.info("epoch %d/%d step %d/%d: loss %.4f, %.0f seq/s, epoch ends in %s", epoch + 1, tc.epochs,
                         epoch_step, steps_per_epoch, loss_sum / loss_count, seq_s, _clock(eta))
            if budget is not None and (epoch_step % 16 == 0 or world == 1):
                # A long epoch is cut short when validation and the test evaluation would no longer fit.
                now_wall = wall_seconds()
                budget_used = now_wall / budget  # lr_decay=budget: the same on every rank (rank 0's clock)
                out_of_time = now_wall + 2 * eval_seconds >= budget
                if out_of_time:
                    break
            if (rank == 0 and tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0
                    and epoch_step < steps_per_epoch):
                train_seconds_now = train_seconds + time.perf_counter() - started
                save_checkpoint({**checkpoint_state(), "train_seconds": train_seconds_now}, run_dir / "checkpoints" / "last.pt")
        epoch_seconds = time.perf_counter() - started
        if world > 1:
            epoch_seconds = from_rank0(epoch_seconds, device)  # the time budget must stop every rank alike
        train_seconds += epoch_seconds
        epoch += 1
        epoch_step = 0  # a budget stop inside the epoch ends the run: its remaining steps are never needed
        record: dict[str, Any] = {
            "epoch": epoch, "step": step, "train_loss": loss_sum / max(loss_count, 1),
            "epoch_seconds": epoch_seconds, "train_seconds": train_seconds, "lr": lr, "world_size": world,
        }
        if objective.log_temperature is not None:
            record["temperature"] = objective.temperature.detach().item()
        improved = False
        if epoch % config.train.eval_every == 0 or epoch == tc.epochs or out_of_time or best_epoch < 0 and budget is not None:
            eval_started = time.perf_counter()
            with averaged():
                valid = _evaluate(model, split, "valid", similarity, config.eval, device, rank, world, precision == "bf16")
            eval_seconds = time.perf_counter() - eval_started
            record["valid"] = valid
            record["eval_seconds"] = eval_seconds
            if valid[select] > best_metric:
                best_metric, best_epoch, bad_evals, improved = valid[select], epoch, 0, True
                best_valid = valid
            else:
                bad_evals += 1
                if tc.lr_decay in ("plateau", "budget") and bad_evals % tc.plateau_patience == 0:
                    lr_scale *= 0.5
            stop = tc.patience > 0 and bad_evals >= tc.patience
            if rank == 0:
                log.info("epoch %d: loss %.4f, valid %s %.4f (best %.4f at %d), %.1fs training + %.1fs validation, "
                         "%.0f seq/s, %s elapsed", epoch, record["train_loss"], select, valid[select], best_metric,
                         best_epoch, epoch_seconds, eval_seconds, sequences / max(epoch_seconds, 1e-9),
                         _clock(wall_before + time.perf_counter() - command_started))
        last_epoch_wall = time.perf_counter() - started
        record["wall_seconds"] = wall_seconds()
        if budget is not None and (out_of_time or record["wall_seconds"] + last_epoch_wall + eval_seconds > budget):
            stop = True
            record["stopped"] = "time budget" + (" (inside the epoch)" if out_of_time else "")
        if rank == 0:
            state = checkpoint_state()
            if improved:
                with averaged():  # best.pt holds the weights validation scored
                    best_state = state if average is None else {
                        **state, "model": model.state_dict(), "objective": objective.state_dict(), "ema": None}
                    save_checkpoint(best_state, run_dir / "checkpoints" / "best.pt")
            # The record goes first: a kill between the two then resumes from the older last.pt, whose
            # resume drops this record and writes it again; the other order would lose it for good.
            append_jsonl(metrics_path, record)
            if tensorboard is not None:
                tensorboard.epoch(record)
            save_checkpoint(state, run_dir / "checkpoints" / "last.pt")

    # ---- test, once, on the model selected by validation
    if best_epoch < 0:
        raise RuntimeError("training ended without a validation; no best checkpoint")
    if world > 1:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)  # rank 0 has written best.pt
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    # A bf16 run selected its best epoch on bf16 validations; the reported numbers are float32 ones.
    valid_best = best_valid if best_valid is not None and precision == "fp32" else _evaluate(
        model, split, "valid", similarity, config.eval, device, rank, world)
    test = _evaluate(model, split, "test", similarity, config.eval, device, rank, world)
    pop = evaluate_popularity(split, "test", config.eval)
    results = {
        "best_epoch": best_epoch, "epochs_run": epoch, "train_seconds": train_seconds,
        "wall_seconds": wall_seconds(),
        "valid": valid_best, "test": test, "popularity": {"test": pop},
    }
    text = json.dumps(results, indent=2) + "\n"
    if rank == 0:
        atomic_write(run_dir / "results.json", lambda h: h.write(text.encode()))
    if tensorboard is not None:
        tensorboard.close()
    return TrainResult(run_dir, best_epoch, valid_best, test, pop, epoch, train_seconds)
