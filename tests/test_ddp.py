"""Two gloo processes against one: same global batch, same data order and negatives, same parameters.

The 2-process runs go through ``train`` exactly as under torchrun (RANK/WORLD_SIZE/LOCAL_RANK and
MASTER_ADDR/PORT in the environment), one of them resuming a single-process run interrupted mid-epoch.
Dropout is 0, so a step is a deterministic function of the parameters and the global batch.

One parameter is left out of the comparison: the key bias of attention. Softmax ignores a constant
shift of a row's logits, so its gradient is zero up to float rounding (~1e-10) and Adam, which divides
by the gradient's scale, turns that rounding noise into steps of order lr * noise / eps. Its value has
no effect on any output, and it is the only parameter that depends on how a batch is partitioned.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from seqrec.cli import torchrun_command
from seqrec.config import config_to_dict
from seqrec.train.checkpoint import load_checkpoint
from seqrec.train.loop import train
from seqrec.train.objective import Objective
from tests.conftest import tiny_config
from tests.processes import child_env, failure, run, spawn

WORLD = 2
REPO = Path(__file__).resolve().parents[1]
# A hang fails the test (its ranks killed) instead of holding the CI job until its own limit. The
# spawned tests take well under a minute on 2 idle cores; 15 minutes leaves room for a loaded machine.
SPAWN_TIMEOUT = 900

# 300 training users: batches of 64 leave a last batch of 44 (22 rows per rank); batches of 299 leave a
# last batch of one row, so rank 0 has no row at all in that step and must still join every collective.
CONFIGS = {
    "infonce": tiny_config(
        model={"dropout": 0.0},
        loss={"learnable_temperature": True},
        train={"checkpoint_every_steps": 2},
    ),
    "full": tiny_config(model={"dropout": 0.0}, loss={"mode": "full"}, train={"batch_size": 299}),
    "bce": tiny_config(model={"dropout": 0.0}, loss={"name": "bce"}, train={"batch_size": 299}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_master_port(store: dist.FileStore, key: str, rank: int) -> None:
    """MASTER_PORT for the next group: a port rank 0 finds free right before the run, shared through a
    file store in the test's directory. Ports picked before the processes start could be taken (by the
    earlier runs' own sockets, say) by the time a later run binds them."""
    if rank == 0:
        store.set(key, str(_free_port()))
    os.environ["MASTER_PORT"] = store.get(key).decode()


def _worker(rank: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1"})
    store = dist.FileStore(str(Path(root) / "ports.store"), WORLD)
    for name, config in CONFIGS.items():
        _set_master_port(store, name, rank)
        result = train(config, Path(root) / f"ddp-{name}", progress=False, command=["test"])
        assert not dist.is_initialized()  # train created the group and destroyed it
        Path(root, f"ddp-{name}-rank{rank}.json").write_text(json.dumps([result.best_valid, result.test]))
    _set_master_port(store, "resumed", rank)
    train(CONFIGS["infonce"], Path(root) / "resumed", resume=True, progress=False, command=["test"])


def _state(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {"model": state["model"], "objective": state["objective"]}


def _assert_same_parameters(got: Path, want: Path) -> None:
    a, b = _state(got), _state(want)
    dim = CONFIGS["infonce"].model.hidden_dim
    for part in ("model", "objective"):
        assert a[part].keys() == b[part].keys()
        for name in b[part]:
            x, y = a[part][name], b[part][name]
            if name.endswith("attn.qkv.bias"):  # q and v only; the key bias is explained above
                x, y = torch.cat([x[:dim], x[2 * dim :]]), torch.cat([y[:dim], y[2 * dim :]])
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5, msg=f"{part}.{name}")


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _interrupt_after(calls_allowed: int, monkeypatch) -> None:
    calls = {"n": 0}
    original = Objective.forward

    def interrupted(self, model, batch, generator=None):
        calls["n"] += 1
        if calls["n"] > calls_allowed:
            raise KeyboardInterrupt
        return original(self, model, batch, generator)

    monkeypatch.setattr(Objective, "forward", interrupted)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_processes_train_the_single_process_model(tmp_path, monkeypatch):
    for name, config in CONFIGS.items():
        train(config, tmp_path / f"single-{name}", progress=False, command=["test"])

    # A single-process run stopped in epoch 2 (5 steps per epoch, `last` saved at step 6) ...
    _interrupt_after(7, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIGS["infonce"], tmp_path / "resumed", progress=False, command=["test"])
    monkeypatch.undo()

    # ... is continued by two processes in the worker, after the fresh 2-process runs.
    spawn(_worker, (str(tmp_path),), WORLD, timeout=SPAWN_TIMEOUT)

    for name in CONFIGS:
        single, ddp = tmp_path / f"single-{name}", tmp_path / f"ddp-{name}"
        _assert_same_parameters(ddp, single)
        assert _losses(ddp) == pytest.approx(_losses(single), rel=1e-5)
        ranks = [json.loads((tmp_path / f"ddp-{name}-rank{r}.json").read_text()) for r in range(WORLD)]
        assert ranks[0] == ranks[1]  # sharded evaluation: every rank got the same metrics
        results = json.loads((single / "results.json").read_text())
        assert ranks[0] == [pytest.approx(results["valid"], abs=1e-6), pytest.approx(results["test"], abs=1e-6)]
    _assert_same_parameters(tmp_path / "resumed", tmp_path / "single-infonce")
    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["world_size"]) for r in records] == [(1, 1), (2, WORLD)]


def _threads() -> dict[int, str]:
    """This process's threads (native ones too): thread id -> name."""
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            threads[int(tid)] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # ended meanwhile
            pass
    return threads


def _teardown_worker(rank: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1"})
    store = dist.FileStore(str(Path(root) / "ports.store"), WORLD)
    _set_master_port(store, "teardown", rank)
    started: dict[int, str] = {}
    init = dist.init_process_group

    def recording_init(*args, **kwargs):  # the threads the group starts: gloo's workers, its TCP loop, the store
        before = _threads()
        init(*args, **kwargs)
        started.update({tid: name for tid, name in _threads().items() if tid not in before})

    dist.init_process_group = recording_init
    train(CONFIGS["bce"], Path(root) / "run", progress=False, command=["test"])
    left = {tid: name for tid, name in _threads().items() if tid in started}
    Path(root, f"threads{rank}.json").write_text(json.dumps({"started": started, "left": left}))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_the_group_threads_end_when_train_returns(tmp_path):
    """Issue 18: a rank whose gloo threads outlive the group exits with them running and may abort (SIGABRT).

    DDP's constructor imports torch.distributed.nn.functional, whose defaults ``group=group.WORLD`` kept
    the group alive after destroy_process_group() when that import came after the group was created.
    """
    spawn(_teardown_worker, (str(tmp_path),), WORLD, timeout=SPAWN_TIMEOUT)
    for rank in range(WORLD):
        threads = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert threads["started"], f"rank {rank}: joining the group started no thread; the test sees nothing"
        assert not threads["left"], f"rank {rank}: threads of the destroyed group still run: {threads}"


@pytest.mark.slow
def test_cli_nproc_relaunches_through_torchrun(tmp_path):
    config_file = tmp_path / "bce.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(CONFIGS["bce"])))
    # torchrun --standalone rendezvouses on a port the OS picks; the process group is killed at the end
    done = run(
        [sys.executable, "-m", "seqrec", "train", "--config", str(config_file), "--set", "train.epochs=1",
         "--out", str(tmp_path / "run"), "--quiet", "--nproc", str(WORLD)],
        cwd=REPO, timeout=300, env=child_env(),
    )
    assert done.returncode == 0, failure(done)
    assert done.stdout.count("run directory:") == 1  # every rank has the result; rank 0 prints it
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["world_size"] == WORLD and (tmp_path / "run" / "results.json").is_file()


def test_torchrun_command_drops_nproc_in_every_spelling():
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "seqrec"]
    for argv in (["train", "--nproc", "2", "--out", "r"], ["train", "--nproc=2", "--out", "r"],
                 ["train", "--npr", "2", "--out", "r"]):
        assert torchrun_command(4, argv) == [*head, "train", "--out", "r"]
    assert torchrun_command(4, ["-v", "train", "--set", "train.lr=0.1"]) == [*head, "-v", "train", "--set", "train.lr=0.1"]


def test_a_bad_config_under_nproc_is_reported_once_before_any_process_starts(tmp_path, monkeypatch, capsys):
    from seqrec import cli

    started = []
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: started.append(a))
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--nproc", "2", "--set", "loss.temperature=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("temperature must be > 0") == 1 and "ChildFailedError" not in err
    assert not started  # torchrun was never launched
