"""``specvit scaling``, ``specvit sweep``, ``specvit ablation`` and ``specvit report``: thin wrappers over evaluate/."""
from __future__ import annotations

import argparse
from pathlib import Path

from specvit.atomic import atomic_path

from specvit.errors import InputError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (examples: configs/scaling_small.yaml, configs/sweep_small.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, e.g. sizes=[100,200] or out_dir=runs/x); repeatable")


def _scaling(args) -> int:
    from specvit.evaluate.scaling import load_scaling_config, run_scaling

    table = run_scaling(load_scaling_config(args.config, args.overrides))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _sweep(args) -> int:
    from specvit.evaluate.sweep import load_sweep_config, run_sweep

    run_sweep(load_sweep_config(args.config, args.overrides))
    return 0


def _ablation(args) -> int:
    from specvit.evaluate.ablation import load_ablation_config, run_ablation

    table = run_ablation(load_ablation_config(args.config, args.overrides))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _report(args) -> int:
    import numpy as np
    import pandas as pd

    from specvit.config import provenance
    from specvit.evaluate.figures import plot_parity, plot_r2_vs_snr
    from specvit.scores import evaluate_predictions, summary_table
    from specvit.evaluate.report import write_report
    from specvit.labels import canonical_label

    label = canonical_label(args.label)
    metrics, figures, rows = {}, {}, []
    for item in args.pred:
        if "=" not in item:
            raise InputError("--pred must look like NAME=predictions.csv", field="--pred", value=item)
        name, path = item.split("=", 1)
        try:
            df = pd.read_csv(path)
        except (OSError, pd.errors.ParserError) as e:
            raise InputError(f"cannot read the prediction table ({e})", file=path, field="--pred") from None
        m = evaluate_predictions(df, [label], "snr", np.random.default_rng(args.seed))
        metrics[name] = m
        figures[f"parity {name}"] = plot_parity(df[f"{label}_true"], df[f"{label}_pred"], snr=df["snr"],
                                                label=label, model_name=name)
        t = summary_table(m)
        t.insert(0, "model", name)
        rows.append(t)
    figures = {"R2 vs SNR": plot_r2_vs_snr(metrics, label=label), **figures}
    table = pd.concat(rows, ignore_index=True)
    keep = [c for c in ("model", "bin", "n", "r2", "r2_lo", "r2_hi", "mae", "rmse", "bias") if c in table]
    path = write_report(args.out, title=args.title, metrics={"bootstrap_seed": args.seed, "models": metrics},
                        figures=figures, tables={"metrics per SNR bin": table[keep]},
                        config={"pred": args.pred, "label": label, "seed": args.seed}, provenance=provenance())
    print(path)
    return 0


def _uncertainty(args) -> int:
    import pandas as pd

    from specvit.atomic import write_text_atomic
    from specvit.config import provenance
    from specvit.data import open_dataset
    from specvit.evaluate.figures import plot_sigma_vs_posterior
    from specvit.evaluate.report import markdown_table, uncertainty_tables, write_report
    from specvit.labels import canonical_label

    labels = [canonical_label(x) for x in args.labels]

    def read(path, what):
        try:
            return pd.read_csv(path)
        except (OSError, pd.errors.ParserError) as e:
            raise InputError(f"cannot read the {what} ({e})", file=path) from None

    cats = {}
    for item in args.pred:
        if "=" not in item:
            raise InputError("--pred must look like NAME=catalogue.csv", field="--pred", value=item)
        name, path = item.split("=", 1)
        cats[name] = read(path, "catalogue")
    with open_dataset(args.truth) as ds:
        truth = pd.DataFrame(ds.labels(labels), columns=labels)
    bayes = read(args.bayes, "bayes catalogue") if args.bayes else None
    table, sub = uncertainty_tables(cats, truth, label_names=labels, bayes=bayes)
    figures, captions = {}, {}
    if bayes is not None:
        b = bayes.set_index("row").loc[sub]
        post = b[[f"{x}_sd" for x in labels]].to_numpy(float)
        nets = {n: c.set_index("row").loc[sub, [f"{x}_err" for x in labels]].to_numpy(float) for n, c in cats.items()}
        figures["sigma_vs_posterior"] = plot_sigma_vs_posterior(nets, post, label_names=labels,
                                                                prior_sd=truth[labels].std().to_numpy())
        captions["sigma_vs_posterior"] = (
            f"Per test spectrum ({len(sub)} spectra, the same fixed noise), each network's calibrated 1σ "
            "against the posterior sd; dashed 1:1, dotted: sd of the test labels (≈ the prior's).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = table.copy()
    with atomic_path(out / "uncertainty.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    write_text_atomic(out / "uncertainty.md", markdown_table(fmt))
    path = write_report(out, title=args.title, metrics={"table": table.to_dict(orient="records")},
                        figures=figures, captions=captions, tables={"accuracy and coverage": table},
                        config={"pred": args.pred, "truth": args.truth, "bayes": args.bayes, "labels": labels},
                        provenance=provenance())
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "scaling", help="test R2 vs training-set size (prefixes of one training set) for every model; with a "
                        "stream: section, learning curves vs samples seen on fresh simulations",
        description="Train every configured model (neural via the training engine, LightGBM, Ridge) on prefixes "
                    "of one training set, test all on the same rows with the same fixed noise, and write "
                    "scaling.csv plus the scaling figure. Finished (model, size) runs are skipped on restart. "
                    "With a `stream:` section (configs/curves_stream.yaml): LEARNING CURVES -- each neural model "
                    "trains once on fresh simulations and is tested at 8k, 16k, ... samples seen (recording "
                    "samples, training wall and CPU time), baselines on file prefixes, van Trees ceilings per SNR "
                    "bin and the Bayes posterior mean; writes curves.csv, curves_by_snr.csv and curves_*.png. "
                    "Re-running resumes; raising a max_samples extends a curve.")
    _config_args(p)
    p.set_defaults(func=_scaling)

    p = subparsers.add_parser(
        "sweep", help="Optuna architecture / hyper-parameter sweep (study in SQLite, resumable)",
        description="Optuna search over a space of dotted training-config keys (patch size, hidden size, depth, "
                    "heads, lr, tokenizer, position encoding, ...), scored on the validation set. The study is kept "
                    "in OUT_DIR/study.db, so an interrupted sweep resumes. Writes trials.csv, best.json, "
                    "ablation.png and importance.png.")
    _config_args(p)
    p.set_defaults(func=_sweep)

    p = subparsers.add_parser(
        "ablation", help="equal-compute ablation: every variant trains for the same CPU-time budget (resumable)",
        description="Time each variant of a base training config for a few steps (CPU-s per step, one thread), "
                    "train it for budget_cpu_s / (CPU-s per step) steps, score it on the validation set. Finished "
                    "(variant, seed) runs are skipped on rerun; writes OUT_DIR/results.csv and results.md. "
                    "Example: configs/ablation_specvit.yaml.")
    _config_args(p)
    p.set_defaults(func=_ablation)

    p = subparsers.add_parser(
        "report", help="HTML report comparing prediction tables (R2 vs SNR, parity, metrics)",
        description="Evaluate prediction CSVs (columns id, snr, <label>_true, <label>_pred, as written by "
                    "`specvit baseline` and `specvit scaling`) and write OUT/report.html and OUT/metrics.json.")
    p.add_argument("--pred", action="append", required=True, metavar="NAME=CSV", help="a model's predictions; repeatable")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--label", default="log_g", help="label to evaluate (default log_g)")
    p.add_argument("--title", default="specvit report")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (recorded in metrics.json)")
    p.set_defaults(func=_report)

    p = subparsers.add_parser(
        "uncertainty", help="accuracy and 68/95%% interval coverage of Gaussian networks vs the Bayes posterior",
        description="Issue #14's report (docs/uncertainty.md): for catalogues of `specvit predict` (Gaussian-head "
                    "models; <label>_err calibrated, <label>_err_raw raw) on a test set with true labels, and "
                    "optionally the `specvit baseline bayes` catalogue of the same noisy spectra: per label the test "
                    "R2 and the coverage of pred±sigma and pred±1.96sigma, raw and calibrated, the posterior's central "
                    "68/95 % intervals, and the figure of each network's sigma against the posterior sd per "
                    "spectrum. Writes OUT/uncertainty.csv, uncertainty.md, report.html, metrics.json, figures/.")
    p.add_argument("--pred", action="append", required=True, metavar="NAME=CSV",
                   help="a model's specvit predict catalogue; repeatable")
    p.add_argument("--truth", required=True, metavar="DATASET", help="the test dataset the catalogues were made from")
    p.add_argument("--bayes", default=None, metavar="CSV", help="specvit baseline bayes catalogue of the same test set")
    p.add_argument("--labels", nargs="+", default=["T_eff", "log_g", "M_H", "a_M", "C_M"])
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--title", default="specvit uncertainty report")
    p.set_defaults(func=_uncertainty)
