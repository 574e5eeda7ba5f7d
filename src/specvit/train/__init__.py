"""One training engine for every neural model: config, losses, schedule, checkpoints, DDP, predict.

>>> from specvit.train import Trainer, load_train_config   # doctest: +SKIP
>>> Trainer(load_train_config("configs/tiny_cpu.yaml")).fit()
"""
from __future__ import annotations

from specvit.train.config import TrainConfig, load_train_config
from specvit.train.trainer import StopTraining, Trainer

__all__ = ["TrainConfig", "load_train_config", "Trainer", "StopTraining"]
