"""The typed config of ``specvit train``: sections data / model / optim / schedule / loss / run.

Read with :func:`load_train_config` from YAML plus ``--set section.key=value``
overrides; an unknown key anywhere is a :class:`specvit.errors.ConfigError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from specvit.config import load_config
from specvit.errors import ConfigError


@dataclass
class DataConfig:
    """Where the spectra come from and how they are noised."""

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

        if not self.data.train:
            bad("data.train", self.data.train, "at least one training file is required")
        if not self.data.labels:
            bad("data.labels", self.data.labels, "at least one label is required")
        if self.data.noise_level < 0:
            bad("data.noise_level", self.data.noise_level, "must be >= 0")
        if self.optim.grad_accum_steps < 1:
            bad("optim.grad_accum_steps", self.optim.grad_accum_steps, "must be >= 1")
        if self.optim.lr <= 0:
            bad("optim.lr", self.optim.lr, "must be > 0")
        if self.run.batch_size < 1:
            bad("run.batch_size", self.run.batch_size, "must be >= 1")
        if self.run.epochs < 1:
            bad("run.epochs", self.run.epochs, "must be >= 1")
        if self.loss.label_weights is not None and len(self.loss.label_weights) != len(self.data.labels):
            bad("loss.label_weights", self.loss.label_weights, f"needs one weight per label ({len(self.data.labels)})")
        if self.run.early_stopping_patience is not None and not self.data.val:
            bad("run.early_stopping_patience", self.run.early_stopping_patience, "early stopping needs data.val")
        return self


def load_train_config(path=None, overrides=(), *, data: dict | None = None) -> TrainConfig:
    """Load and check a :class:`TrainConfig` (YAML file, then dict, then ``key=value`` overrides)."""
    return load_config(TrainConfig, path, overrides, data=data).validate(source=str(path) if path else None)
