"""The typed config of ``specvit train``: sections data / model / optim / schedule / loss / run.

Read with :func:`load_train_config` from YAML plus ``--set section.key=value``
overrides; an unknown key anywhere is a :class:`specvit.errors.ConfigError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from specvit.config import load_config, name_override
from specvit.data.stream import SimulateStreamConfig
from specvit.errors import ConfigError, InputError


@dataclass
class DataConfig:
    """Where the spectra come from and how they are noised."""

    #: "file" = stream data.train from disk (the default, for your own data); "simulate" = draw every training
    #: batch fresh from the prior data.simulate through the forward model (data.train is then not used)
    source: Literal["file", "simulate"] = "file"
    train: list[str] = field(default_factory=list)  #: training dataset file(s) / shards (pfsspec dataset.h5)
    val: list[str] = field(default_factory=list)  #: validation file(s); empty = no validation
    labels: list[str] = field(default_factory=lambda: ["log_g"])  #: label columns to regress (aliases ok)
    noise_level: float = 1.0  #: multiplies the stored 1-sigma error for training noise (fresh every batch)
    val_noise_level: float | None = None  #: noise level of validation (fixed per row); None = noise_level
    noise_seed: int = 0  #: seed of the fixed validation noise (per row)
    max_train_rows: int | None = None  #: use only the first rows of the training set (scaling curves)
    max_val_rows: int | None = None  #: use only the first rows of the validation set
    chunk_rows: int = 1024  #: contiguous rows per HDF5 read
    buffer_rows: int = 8192  #: shuffle-buffer size in spectra (bounds memory: buffer_rows * n_pixels * 4 bytes)
    prefetch_batches: int = 2  #: batches read ahead in a background thread (0 = read in the training loop)
    error_channel: bool = False  #: feed a leakage-safe error estimated from the noisy flux (model must accept error=)
    #: the prior of data.source=simulate: labels / observing / instrument / model keys exactly as in
    #: ``specvit simulate``, plus samples_per_epoch and stats_samples (see docs/training.md)
    simulate: SimulateStreamConfig = field(default_factory=SimulateStreamConfig)


@dataclass
class ModelSection:
    """Which registered model (``specvit.models.list_models()``) and its keyword overrides."""

    name: str = "specvit_p16_h256_l6"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW; no weight decay on norms, biases, embeddings and tokens."""

    lr: float = 3e-4  #: peak learning rate
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float | None = 0.5  #: max global gradient L2 norm; None = no clipping
    grad_accum_steps: int = 1  #: micro-batches per optimizer step (effective batch = batch_size * this * world)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over optimizer steps."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0  #: linear warm-up from 0 to lr over this many optimizer steps
    warmup_frac: float = 0.0  #: alternatively, warm-up as a fraction of all steps (the larger wins)
    min_lr: float = 1e-5  #: floor of the cosine decay


@dataclass
class LossConfig:
    """Loss on z-scored labels."""

    kind: Literal["mse", "l1", "huber", "gaussian_nll"] = "mse"
    huber_delta: float = 1.0  #: Huber transition, in z units
    label_weights: list[float] | None = None  #: per-label weights (default equal)


@dataclass
class RunConfig:
    """Loop length, hardware, logging, checkpoints, early stopping."""

    out_dir: str = "runs/train"
    epochs: int = 200
    max_steps: int | None = None  #: stop after this many optimizer steps (None = epochs)
    batch_size: int = 256  #: micro-batch per process
    eval_batch_size: int | None = None  #: None = batch_size
    seed: int = 42  #: model init, dropout, data order and training noise
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  #: autocast dtype (fp16 only on CUDA, with GradScaler)
    compile: bool = False  #: torch.compile the model
    compile_backend: str = "inductor"  #: torch.compile backend ("inductor"; "eager"/"aot_eager" for debugging)
    num_threads: int | None = None  #: torch intra-op threads on CPU (None = torch default)
    eval_every_epochs: int = 1
    eval_every_steps: int | None = None  #: also evaluate every N optimizer steps
    checkpoint_every_steps: int | None = None  #: mid-epoch checkpoints (always one at each epoch end)
    keep_checkpoints: int = 2  #: how many step checkpoints to keep besides last/best
    resume: Literal["auto", "never", "must"] = "auto"  #: auto = continue from out_dir/checkpoints/last.pt if present
    early_stopping_metric: Literal["val_loss", "val_r2", "val_mae"] = "val_loss"
    early_stopping_patience: int | None = None  #: evaluations without improvement before stopping; None = off
    early_stopping_min_delta: float = 0.0
    log_every_steps: int = 10
    progress: bool = True  #: tqdm bar on rank 0
    tensorboard: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, source=None) -> "TrainConfig":
        def bad(field_, value, msg):
            raise ConfigError(msg, file=source, field=field_, value=value)

        def check(field_, ok, msg):
            section, key = field_.split(".")
            value = getattr(getattr(self, section), key)
            if value is None and "or null" in msg:
                return
            if not ok(value):
                bad(field_, value, msg)

        def finite(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if self.data.source == "file" and not self.data.train:
            bad("data.train", self.data.train, "at least one training file is required (or data.source=simulate)")
        if not self.data.labels:
            bad("data.labels", self.data.labels, "at least one label is required")
        from specvit.labels import canonical_label

        for name in self.data.labels:
            try:
                canonical_label(name)
            except InputError as e:
                bad("data.labels", name, e.message)
        if self.data.source == "simulate":
            for name in self.data.labels:
                d = getattr(self.data.simulate.labels, canonical_label(name))
                if d.low == d.high:
                    bad(f"data.simulate.labels.{canonical_label(name)}", [d.low, d.high],
                        "a label the model trains on must vary in the prior (low < high)")
            if self.data.error_channel:
                bad("data.error_channel", True, "not available with data.source=simulate")
        # every number is checked here, when the config is read: nothing invalid is found after training started
        ge0, gt0 = (lambda v: finite(v) and v >= 0), (lambda v: finite(v) and v > 0)
        ge1 = lambda v: finite(v) and v >= 1  # noqa: E731
        check("data.noise_level", ge0, "must be a finite number >= 0")
        check("data.val_noise_level", ge0, "must be a finite number >= 0, or null")
        for k in ("max_train_rows", "max_val_rows"):
            check(f"data.{k}", ge1, "must be >= 1, or null")
        check("data.chunk_rows", ge1, "must be >= 1")
        check("data.buffer_rows", ge1, "must be >= 1")
        check("data.prefetch_batches", ge0, "must be >= 0")
        check("optim.lr", gt0, "must be a finite number > 0")
        check("optim.weight_decay", ge0, "must be a finite number >= 0")
        check("optim.eps", gt0, "must be a finite number > 0")
        check("optim.betas", lambda b: len(b) == 2 and all(finite(x) and 0 <= x < 1 for x in b),
              "must be two numbers in [0, 1)")
        check("optim.clip_grad_norm", gt0, "must be a finite number > 0, or null (no clipping)")
        check("optim.grad_accum_steps", ge1, "must be >= 1")
        check("schedule.warmup_steps", ge0, "must be >= 0")
        check("schedule.warmup_frac", lambda v: finite(v) and 0 <= v <= 1, "must be in [0, 1]")
        check("schedule.min_lr", ge0, "must be a finite number >= 0")
        check("loss.huber_delta", gt0, "must be a finite number > 0")
        check("loss.label_weights", lambda w: all(ge0(x) for x in w) and any(x > 0 for x in w),
              "must be finite numbers >= 0 (not all 0), or null")
        check("run.epochs", ge1, "must be >= 1")
        check("run.max_steps", ge1, "must be >= 1, or null (no limit besides run.epochs)")
        check("run.batch_size", ge1, "must be >= 1")
        check("run.eval_batch_size", ge1, "must be >= 1, or null")
        check("run.num_threads", ge1, "must be >= 1, or null")
        check("run.eval_every_epochs", ge1, "must be >= 1")
        check("run.eval_every_steps", ge1, "must be >= 1, or null")
        check("run.checkpoint_every_steps", ge1, "must be >= 1, or null")
        check("run.keep_checkpoints", ge0, "must be >= 0")
        check("run.early_stopping_patience", ge1, "must be >= 1, or null")
        check("run.early_stopping_min_delta", ge0, "must be a finite number >= 0")
        check("run.log_every_steps", ge1, "must be >= 1")
        if self.loss.label_weights is not None and len(self.loss.label_weights) != len(self.data.labels):
            bad("loss.label_weights", self.loss.label_weights, f"needs one weight per label ({len(self.data.labels)})")
        if self.run.early_stopping_patience is not None and not self.data.val:
            bad("run.early_stopping_patience", self.run.early_stopping_patience, "early stopping needs data.val")
        return self


def load_train_config(path=None, overrides=(), *, data: dict | None = None) -> TrainConfig:
    """Load and check a :class:`TrainConfig` (YAML file, then dict, then ``key=value`` overrides)."""
    cfg = load_config(TrainConfig, path, overrides, data=data)
    try:
        return cfg.validate(source=str(path) if path else None)
    except ConfigError as e:
        raise name_override(e, overrides) from None
