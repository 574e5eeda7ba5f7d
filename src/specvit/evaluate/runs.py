"""Pieces shared by the file-mode scaling study and the stream learning curves: baseline runs, run folders, PNGs."""
from __future__ import annotations

from pathlib import Path

from specvit.config import load_config
from specvit.errors import ConfigError, InputError


def baseline_config(cfg, m, size: int, out: Path):
    if m.kind == "lightgbm":
        from specvit.baselines.gbm import LightGBMConfig as C
    else:
        from specvit.baselines.ridge import RidgeConfig as C
    opts = dict(m.options)
    for k in ("data", "out_dir"):
        if k in opts:
            raise ConfigError("this key is set by the scaling config", field=f"models[{m.name}].options.{k}")
    d = cfg.data
    data = {"train": d.train, "val": d.val, "test": d.test, "labels": list(d.labels), "noise_level": d.noise_level,
            "eval_noise_seed": d.eval_noise_seed, "max_train_rows": size, "max_val_rows": d.max_val_rows,
            "max_test_rows": d.max_test_rows}
    defaults = {"eval_seed": cfg.seed}
    if m.kind == "lightgbm":
        defaults.update(seed=cfg.seed, log_every=0)
    try:
        return load_config(C, data={**defaults, **opts, "data": data, "out_dir": str(out)})
    except InputError as e:
        raise ConfigError(f"in models[{m.name}].options: {e}") from None


def run_dir(cfg, m, size: int) -> Path:
    return Path(cfg.out_dir) / "runs" / m.name / f"n{size}"


def run_baseline(m, rc, log) -> dict:
    if m.kind == "lightgbm":
        from specvit.baselines.gbm import run_lightgbm as run
    else:
        from specvit.baselines.ridge import run_ridge as run
    metrics = run(rc, log=lambda s: log(f"    {s}"))
    return {"test": metrics["test"], "train": {k: v for k, v in metrics.items() if k not in ("test",)}}


def save_png(fig, path: Path) -> None:
    from specvit.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")


def check_train_rows(cfg) -> None:
    """Refuse training-set sizes larger than the training file (``cfg.data.train``, ``cfg.sizes``)."""
    from specvit.data.pfsspec import open_dataset
    from specvit.errors import InputError

    ds = open_dataset(cfg.data.train)
    try:
        n = len(ds)
    finally:
        ds.close()
    big = [s for s in cfg.sizes if s > n]
    if big:
        raise InputError(f"training set has only {n} rows", file=cfg.data.train, field="sizes", value=big[0])
