"""``specvit baseline {lightgbm,ridge,templatefit} --config FILE [--set key=value ...]``."""
from __future__ import annotations

import argparse

from specvit.errors import SpecvitError

_HELP = {
    "lightgbm": "LightGBM on raw noisy flux (paper: lr 0.05, 63 leaves, early stopping on validation)",
    "ridge": "Ridge on standardised noisy flux; alpha chosen on validation; streamed sufficient statistics",
    "templatefit": "maximum-likelihood template fit of the labels with a spectral model (specvit.baselines.templatefit)",
    "bayes": "posterior of the five labels under the simulator's prior and exact likelihood (specvit.baselines.bayes)",
}

_EPILOG = """\
config (YAML) for lightgbm / ridge, e.g.:
  data:
    train: data/train.h5      # file, list, directory of shards or glob
    val: data/val.h5
    test: data/test.h5
    labels: [log_g]
    noise_level: 1.0
    eval_noise_seed: 42       # fixed test/val noise shared by every model
    n_augment: 1              # fixed noisy copies per training row
    max_train_rows: null      # prefix of the training set
  out_dir: runs/ridge
writes OUT_DIR/predictions.csv (id,row,snr,<label>_true,<label>_pred), metrics.json,
config.yaml (resolved config + provenance) and the model (ridge_model.npz / lightgbm_<label>.txt).

config for templatefit (keys of specvit.baselines.templatefit.TemplateFitConfig), e.g.:
  input: data/test.h5
  output: runs/templatefit/predictions.csv   # + predictions.metrics.json beside it
  mode: lm                  # lm (Levenberg-Marquardt) | grid (chi2 on a grid, the paper's)
  lm_method: auto           # auto | observed (fast search + exact polish_steps, emulator) | exact (reference)
  noise_seed: 42            # use the same fixed test noise as the other baselines

config for bayes (keys of specvit.baselines.bayes.BayesConfig), e.g.:
  input: data/test.h5
  output: runs/bayes/catalogue.csv   # + catalogue.metrics.json beside it
  prior: dataset            # the labels prior the dataset was simulated with (or: box)
  n_samples: 384            # importance draws per round; max_rounds: 6; min_ess: 200
  noise_seed: 42            # the same fixed test noise as the other baselines
writes per spectrum and label the posterior mean, sd, 2.5/16/50/84/97.5 percentiles, the mode, the
effective sample size and a flag (ok, low_ess, poor_fit, bad_input).
"""


class TemplateFitUnavailable(SpecvitError):
    """The template fit module is not installed in this version."""


def _load(name):
    if name == "lightgbm":
        from specvit.baselines.gbm import LightGBMConfig, run_lightgbm

        return LightGBMConfig, run_lightgbm
    if name == "ridge":
        from specvit.baselines.ridge import RidgeConfig, run_ridge

        return RidgeConfig, run_ridge
    if name == "bayes":
        from specvit.baselines.bayes import BayesConfig, run_bayes

        return BayesConfig, run_bayes
    try:
        from specvit.baselines.templatefit import TemplateFitConfig, run_templatefit
    except ImportError as e:
        raise TemplateFitUnavailable(f"template fit is not available: {e}") from None
    return TemplateFitConfig, run_templatefit


def _run(args) -> int:
    from specvit.config import load_config

    cls, run = _load(args.model)
    cfg = load_config(cls, args.config, args.set or [])
    result = run(cfg)
    if args.model == "templatefit":
        from specvit.baselines.templatefit import finish_templatefit

        finish_templatefit(cfg, result)
    if args.model == "bayes":
        from specvit.baselines.bayes import finish_bayes

        finish_bayes(cfg, result)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "baseline", help="train and evaluate a classical baseline (lightgbm, ridge, templatefit, bayes)",
        description="Train a classical baseline on a training split, choose its hyper-parameter on the "
                    "validation split and evaluate it on the test split with the shared fixed noise.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", choices=sorted(_HELP), help="; ".join(f"{k}: {v}" for k, v in _HELP.items()))
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (unknown keys are an error)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, dotted for sections (e.g. data.max_train_rows=50000); repeatable")
    p.set_defaults(func=_run)
