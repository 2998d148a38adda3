"""Typed, frozen run configuration.

Three layers at most: the dataclass defaults below, then one YAML file, then ``--set section.key=value``
overrides. Unknown sections or keys and values of the wrong type are errors (``ConfigError``), never
warnings. Each component receives only its own section.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqrec.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Where the interaction log comes from and how it is read."""

    path: str | None = None  # interaction log; None = the built-in synthetic dataset
    format: str = "auto"  # auto | sasrec | csv | tsv | parquet | seqrec (auto: by suffix, .txt -> sasrec; a directory -> seqrec, see data/storage.py)
    # taac: a TAAC 2025 training directory (data/taac/); auto picks it for a directory holding seq.jsonl
    # Side features (data/features.py). None: the ones the data carries (a TAAC directory's; other formats
    # have none) | "none": none | "ml-1m": movies.dat/users.dat/sas_to_original_*.txt next to data.path |
    # "beauty": Beauty_item2attributes.json next to data.path | "taac": the TAAC directory's own | a path:
    # a directory holding one of those sets, or a {raw_item_id: [attribute ids]} JSON file
    features: str | None = None
    # CSV/TSV: the first row names the columns (true) | false: every row is data (as pandas header=None);
    # then user_col, item_col and time_col must be 0-based column positions. Parquet always has names.
    header: bool = True
    # The id and time columns of CSV/TSV/Parquet: a column name (a string, looked up in the header) or a
    # 0-based column position (an integer; the only choice with header: false). ``--set data.user_col=0``
    # is a position, ``--set 'data.user_col="0"'`` a column named 0.
    user_col: str | int = "user_id"  # column holding the user id
    item_col: str | int = "item_id"  # column holding the item id
    time_col: str | int | None = None  # optional timestamp column; events are stably sorted by it per user
    kcore: int = 0  # iterative k-core filter on users and items (0 = off)
    on_bad_line: str = "error"  # error | skip: skipping reports the count, never silently
    # How events become training data and validation/test targets (data/split.py). loo: leave-one-out, each
    # user's last event tests and the one before validates | time: one global cut in time for every user
    # (needs timestamps: data.time_col or TAAC data); events before the validation cut train
    split: str = "loo"
    split_quantiles: tuple[float, float] = (0.8, 0.9)  # split=time: shares of all events (by time) before the validation and the test cut
    split_times: tuple[float, float] | None = None  # split=time: explicit (validation, test) cut timestamps in the data's unit; overrides split_quantiles
    # built-in synthetic data (used when path is None)
    synthetic_users: int = 2000
    synthetic_items: int = 400
    synthetic_seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, ("auto", "sasrec", "csv", "tsv", "parquet", "seqrec", "taac"))
        _check_choice("data.on_bad_line", self.on_bad_line, ("error", "skip"))
        _check_choice("data.split", self.split, ("loo", "time"))
        if not 0 < self.split_quantiles[0] < self.split_quantiles[1] < 1:
            raise ConfigError(f"data.split_quantiles must satisfy 0 < validation < test < 1, got {self.split_quantiles}")
        if self.split_times is not None and not self.split_times[0] < self.split_times[1]:
            raise ConfigError(f"data.split_times: the validation cut must come before the test cut, got {self.split_times}")
        if self.kcore < 0:
            raise ConfigError(f"data.kcore must be >= 0, got {self.kcore}")
        columns = {"user_col": self.user_col, "item_col": self.item_col, "time_col": self.time_col}
        for name, col in columns.items():
            if col == "" or isinstance(col, int) and col < 0:
                raise ConfigError(f"data.{name} must be a column name or a 0-based position >= 0, got {col!r}")
            if not self.header and isinstance(col, str):
                raise ConfigError(f"data.header=false: data.{name} must be a 0-based column position (an integer), "
                                  f"got the name {col!r}")
        chosen = [col for col in columns.values() if col is not None]
        if len(set(chosen)) < len(chosen):
            raise ConfigError(f"data.user_col, data.item_col and data.time_col must name different columns, got {chosen}")
        if self.synthetic_users < 1 or self.synthetic_items < 2:
            raise ConfigError("data.synthetic_users must be >= 1 and data.synthetic_items >= 2")


@dataclass(frozen=True)
class ModelConfig:
    """SASRec encoder shape."""

    # number of most recent items the encoder sees (positions); None = from the data (train/auto.py:
    # the median training-history length rounded up to a multiple of 10, within [50, 200])
    maxlen: int | None = None
    # embedding and transformer width; None = from the data (train/auto.py: 128 for catalogues of up to 1M
    # items, else 64)
    hidden_dim: int | None = None
    # transformer blocks; None = from the data (train/auto.py: 4 when the median training history is at least
    # 20 items, else 2)
    num_blocks: int | None = None
    num_heads: int = 1  # attention heads; must divide hidden_dim
    # dropout on embeddings, attention and feed-forward; None = from the data (train/auto.py: 0.3 when the
    # median training history is shorter than 20 items, else 0.2)
    dropout: float | None = None
    # std of the normal init of every embedding table (items, positions, features); None = hidden_dim**-0.5.
    # Small tables learn faster under cosine scoring: Adam moves each entry by ~lr per step whatever its
    # size, so a table 10x smaller turns 10x faster (BENCHMARKS.md, "the plateau").
    init_std: float | None = 0.01
    norm_first: bool = True  # pre-LN (True) or the original post-LN (False)
    # Score candidates with the input item table (true) or a separate output table (false; with an item tower,
    # the candidate side gets its own fusing layer and an output id table). None = from the model (train/auto.py):
    # tied for an id-only model, untied for an item tower with ids
    tied_embeddings: bool | None = None
    # Side features (model/features.py); they need data.features. The item tower embeds every item, on the
    # input side and as a candidate, from its features (and its id unless use_item_id is false).
    item_features: bool = True  # embed items with their side features when the data has any (False: ids only)
    use_item_id: bool = True  # include the learned id embedding in the item tower (False: features only)
    item_id_dropout: float = 0.0  # training only: chance an item's id embedding is zeroed (per distinct id and call), so the tower also learns to embed items from features alone, as it must for items unseen in training
    user_features: str = "none"  # none | token: a user vector before the first item | add: added at every position
    tower_activation: str = "none"  # none | relu (the TAAC baseline; every vector >= 0, so all cosines >= 0) | gelu, after the tower's fusing Linear
    vector_buffer_max_dim: int = 256  # item vectors up to this dim live in the checkpoint; wider ones are re-read from data.features at load

    def __post_init__(self) -> None:
        if self.maxlen is not None and self.maxlen < 1:
            raise ConfigError(f"model.maxlen must be >= 1, got {self.maxlen}")
        if ((self.hidden_dim is not None and self.hidden_dim < 1) or (self.num_blocks is not None and self.num_blocks < 1)
                or self.num_heads < 1):
            raise ConfigError("model.hidden_dim, model.num_blocks and model.num_heads must be >= 1")
        if self.hidden_dim is not None and self.hidden_dim % self.num_heads:
            raise ConfigError(f"model.num_heads ({self.num_heads}) must divide model.hidden_dim ({self.hidden_dim})")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"model.init_std must be > 0 or null, got {self.init_std}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        _check_choice("model.user_features", self.user_features, ("none", "token", "add"))
        _check_choice("model.tower_activation", self.tower_activation, ("relu", "gelu", "none"))
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ConfigError(f"model.item_id_dropout must be in [0, 1), got {self.item_id_dropout}")
        if self.vector_buffer_max_dim < 0:
            raise ConfigError(f"model.vector_buffer_max_dim must be >= 0, got {self.vector_buffer_max_dim}")


@dataclass(frozen=True)
class LossConfig:
    """Training objective and its negatives."""

    name: str = "infonce"  # infonce (the design note: cosine, in-batch pooled negatives) | bce (original SASRec) | gbce (gSASRec: calibrated BCE, dot product)
    temperature: float = 0.07  # InfoNCE logit temperature (> 0)
    learnable_temperature: bool = False  # learn the temperature, kept within [min_temperature, 1]
    min_temperature: float = 0.01  # lower bound of a learnable temperature
    negatives_per_position: int = 1  # random negatives drawn per position (pool = k * valid positions)
    pool_size: int | None = None  # cap the pooled negatives by uniform subsampling (None = no cap)
    # pool (the note) | full (whole-catalogue softmax) | auto: full up to 65,536 items or when the catalogue
    # is smaller than the pool (losses/infonce.py: choose_infonce_mode), else the note's pool
    mode: str = "auto"
    extra_pos_negatives: bool = False  # add other rows' positives to the pool, logQ-corrected
    # mask candidates that are in the row's own user history (the evaluation filters them out as well).
    # None = from the data (train/auto.py): off when users repeat items (>= 1% of training events), else on
    history_mask: bool | None = None
    gbce_t: float = 0.75  # gbce calibration in [0, 1]: 0 = plain BCE, 1 = fully calibrated (gSASRec's ML-1M value 0.75)
    # Weight of a position by the action type of its positive (exposure, click, conversion); the loss is
    # the weighted mean over valid positions (0 drops a type). None: unweighted. Needs actions (TAAC data).
    action_weights: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        _check_choice("loss.name", self.name, ("infonce", "bce", "gbce"))
        _check_choice("loss.mode", self.mode, ("pool", "full", "auto"))
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.temperature}")
        if not 0 < self.min_temperature <= 1:
            raise ConfigError(f"loss.min_temperature must be in (0, 1], got {self.min_temperature}")
        if self.negatives_per_position < 1:
            raise ConfigError(f"loss.negatives_per_position must be >= 1, got {self.negatives_per_position}")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigError(f"loss.pool_size must be >= 1 or null, got {self.pool_size}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError(f"loss.gbce_t must be in [0, 1], got {self.gbce_t}")
        if self.name in ("bce", "gbce") and (self.mode == "full" or self.extra_pos_negatives or self.learnable_temperature):
            # (mode auto, the default, means the sampled negatives for them)
            raise ConfigError("loss.mode full, loss.extra_pos_negatives and loss.learnable_temperature apply to infonce only")
        if self.action_weights is not None and (min(self.action_weights) < 0 or max(self.action_weights) <= 0):
            raise ConfigError(f"loss.action_weights must be >= 0 with one > 0, got {self.action_weights}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training schedule."""

    epochs: int = 200  # maximum number of epochs
    # sequences per optimizer step, over all ranks (the global batch); None = from the data (train/auto.py:
    # the largest power of two <= training users / 150, within [32, 256])
    batch_size: int | None = None
    # peak learning rate; None = from the data (train/auto.py: 1e-3 when the median training history is
    # under 20 items, else 3e-3; BENCHMARKS.md "the plateau" and "Quality per minute", session 10)
    lr: float | None = None
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0 = plain Adam behaviour)
    betas: tuple[float, float] = (0.9, 0.98)  # Adam betas
    warmup_steps: int = 20  # linear warm-up steps
    # none | cosine (to 10% of lr at the last epoch) | plateau: halve the lr each time validation has not
    # improved for plateau_patience validations in a row (the fast start of a high lr, then the fine tuning)
    # | budget: plateau's halving, and cosine over the wall-clock budget (train.max_minutes) to 10% of lr at
    # its end, so a run that the budget ends still finishes at a low lr (the lr then depends on the clock)
    lr_decay: str = "plateau"
    plateau_patience: int = 3
    clip_grad_norm: float | None = 1.0  # gradient clipping (None = off)
    # Validate, select and keep an exponential moving average of the weights, updated after every step with
    # this decay (0.99: about the last 100 steps); training itself goes on from the raw weights. None = off.
    # Session 13 (BENCHMARKS.md): TAAC synthetic +1.1-1.7% score, ML-1M default +1.3%, Beauty preset -3.9% test.
    ema_decay: float | None = None
    seed: int = 42  # seeds data order, negatives, initialisation and dropout
    eval_every: int = 1  # validate every N epochs
    patience: int = 10  # stop after this many validations without improvement (0 = never stop early)
    # Wall-clock budget of the whole command in minutes, validation and the final test included (None =
    # unlimited): no epoch starts that, at the pace of the last one (training + validation), would end
    # past the budget less the time the final test evaluation is expected to take. On resume it counts on.
    max_minutes: float | None = 58.0
    # Users per batch of similar training length: shuffled users are cut into chunks of this many batches,
    # each chunk sorted by length (data/batches.py), so short-history batches carry little padding.
    # 0 = uniformly shuffled batches. The epoch still visits every user once.
    length_buckets: int = 8
    # Which window of a history longer than maxlen + 1 events an epoch trains on: "last" (its most recent
    # maxlen events) or "random" (one ending at a uniformly drawn event, fresh each epoch, so long
    # histories are used whole over the epochs; data/batches.py). No effect on shorter histories.
    window: str = "last"
    checkpoint_every_steps: int = 0  # also save `last` every N steps inside an epoch (0 = at epoch ends only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: auto/cuda = cuda:LOCAL_RANK)
    num_threads: int = 0  # torch intra-op threads on CPU (0 = torch default)
    # Fast paths. On CUDA, TF32 matmuls are on.
    # fp32 | bf16: the encoder under bfloat16 autocast and the InfoNCE products in bfloat16 (sums and
    # gradients float32) | auto: bf16 on a CPU whose bfloat16 products measure >= 1.5x float32's, else fp32
    # (train/precision.py)
    precision: str = "auto"
    compile: bool = False  # torch.compile the encoder for training (evaluation uses the plain module)
    num_workers: int = 0  # DataLoader processes building batches (0 = in the training process)
    # Item table with sparse gradients + SparseAdam ("lazy" Adam: only the batch's rows move; no weight
    # decay on it), AdamW for the rest. Much faster with millions of items (benchmarks/results/scale.md);
    # needs loss.mode=pool; under DDP only the batch's rows are exchanged. See seqrec/train/sparse.py, sparse_ddp.py.
    sparse_embeddings: bool = False
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard (pip install 'seqrec[tensorboard]')

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1) or self.eval_every < 1:
            raise ConfigError("train.epochs, train.batch_size and train.eval_every must be >= 1")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.lr is not None and self.lr > 3.4e38:  # the optimizer keeps it as float32; beyond this torch fails with a vague overflow
            raise ConfigError(f"train.lr must fit in float32 (<= 3.4e38), got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.patience < 0 or self.checkpoint_every_steps < 0:
            raise ConfigError("train.weight_decay, warmup_steps, patience, checkpoint_every_steps must be >= 0")
        _check_choice("train.lr_decay", self.lr_decay, ("none", "cosine", "plateau", "budget"))
        if self.lr_decay == "budget" and self.max_minutes is None:
            raise ConfigError("train.lr_decay=budget decays over train.max_minutes; set a time budget")
        _check_choice("train.window", self.window, ("last", "random"))
        if self.plateau_patience < 1:
            raise ConfigError(f"train.plateau_patience must be >= 1, got {self.plateau_patience}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"train.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
        _check_choice("train.precision", self.precision, ("fp32", "bf16", "auto"))
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.length_buckets < 0:
            raise ConfigError(f"train.length_buckets must be >= 0, got {self.length_buckets}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 or null, got {self.max_minutes}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in (0, 1) or be null, got {self.ema_decay}")
        if self.ema_decay is not None and self.sparse_embeddings:
            raise ConfigError("train.ema_decay with train.sparse_embeddings: the average would rewrite every row of "
                              "the item table after each step, which sparse updates exist to avoid")


@dataclass(frozen=True)
class EvalConfig:
    """Full-catalogue ranking evaluation."""

    ks: tuple[int, ...] = (1, 5, 10, 20, 50)  # cut-offs for HR@K and NDCG@K
    # exclude the user's history items from the ranking; None = from the data as loss.history_mask (train/auto.py)
    filter_seen: bool | None = None
    batch_size: int = 512  # users scored per batch
    select_metric: str = "ndcg@10"  # validation metric used for model selection and early stopping

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive cut-offs, got {self.ks}")
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size must be >= 1")
        name, _, k = self.select_metric.partition("@")
        if name not in ("ndcg", "hr") or not k.isdigit() or int(k) not in self.ks:
            if self.select_metric != "mrr":
                raise ConfigError(f"eval.select_metric must be mrr or ndcg@K/hr@K with K in eval.ks, got {self.select_metric}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs, one section per concern."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks ``value`` against a type annotation, converting only lossless cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str) and _looks_numeric(value):
                # PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: 1e-3 and
                # 1.0e3 are strings there, 1.0e-3 and 1.0e+3 are floats.
                mantissa, e, exponent = value.lower().partition("e")
                if e:
                    mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
                    exponent = exponent if exponent[:1] in ("+", "-") else f"+{exponent}"
                    hint = f" (YAML reads {value} as text; write {mantissa}e{exponent})"
                else:
                    hint = " (write it without quotes)"
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}{hint}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {annotation!r}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - names))  # str: YAML keys may be ints or null
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_from_dict(values: dict[str, Any], where: str = "config") -> RunConfig:
    """Builds a RunConfig from nested ``{section: {key: value}}``; unknown sections or keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(values).__name__}")
    hints = typing.get_type_hints(RunConfig)
    unknown = sorted(map(str, set(values) - set(hints)))  # str: YAML keys may be ints or null
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(hints)}")
    sections = {}
    for name, cls in hints.items():
        section = values.get(name)
        if section is None:  # absent, or an empty "model:" line in YAML
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section {name} must be a mapping, got {type(section).__name__} {section!r}")
        try:
            sections[name] = _build(cls, section, name)
        except ConfigError as exc:
            # Name the file the value came from; the default "config" adds nothing.
            if where == "config" or str(exc).startswith(where):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    return RunConfig(**sections)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML, JSON and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parses ``section.key=value``; the value is read as YAML (so 0.1, true, null, [1, 5] work)."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: cannot parse value: {exc}") from exc
    return section, name, value


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (plain PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # unhashable key: super() reports it as a YAML error
                continue
            if repeated:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{self.name}:{line}: key {key!r} appears more than once in the same mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then an optional YAML file, then ``section.key=value`` overrides."""
    values: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory; --config expects a YAML file")
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
            loader.name = str(path)
            try:
                loaded = loader.get_single_data()
            finally:
                loader.dispose()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected a YAML file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        values = loaded or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(values).__name__}")
        where = str(path) if not overrides else f"{path} (with --set overrides)"
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for text in overrides:
        section, name, value = parse_override(text)
        values.setdefault(section, {})
        if not isinstance(values[section], dict):
            raise ConfigError(f"{where}: section {section} must be a mapping")
        values[section][name] = value
    return config_from_dict(values, where)


def replace(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Returns a copy with some section fields replaced, e.g. ``replace(cfg, train={"epochs": 3})``."""
    values = config_to_dict(config)
    for name, updates in sections.items():
        if name not in values:
            raise ConfigError(f"unknown section {name}")
        values[name].update(updates)
    return config_from_dict(values)
