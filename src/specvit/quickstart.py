"""``specvit quickstart``: the main job, end to end, on the embedded default spectral model.

simulate train / val / test (PFS MR arm) -> train SpecViT, CNN, MLP (training engine) on fresh
simulations from the training file's prior (the same number of spectra each), LightGBM and Ridge on
the training file -> template fit of the test spectra -> the Bayes posterior of the
first test spectra (``specvit baseline bayes``: the Bayes-optimal estimate under the simulator's prior
and likelihood) -> Fisher ceilings (Cramer-Rao and van Trees) at the test labels -> per-SNR-bin
evaluation of every model on the same noisy test spectra -> figures -> ``report.html`` and ``metrics.json``.

Sized to finish in well under 15 minutes on a 2-core laptop; every size is a config key
(``--set n_train=100000 ...``), and the same modules scale to the paper's runs
(``configs/paper.yaml``, ``specvit scaling``). Re-running the same command resumes: finished
datasets and model runs are kept.

Output folder::

    data/{train,val,test}.h5        the simulated split (pfsspec layout)
    runs/<model>/n<N>/              each model's run (config, weights, predictions.csv, metrics)
    templatefit/predictions.csv     the template fit of the first test spectra
    bayes/catalogue.csv             the posterior of the first test spectra (all five labels, percentiles, flags)
    fisher/ceiling_by_snr_bin.json  the ceilings per SNR bin
    report.html, figures/*.png      the report
    metrics.json                    per model: overall test R2, MAE, RMSE, bias, per-SNR-bin R2; the ceilings;
                                    coverage: 68/95 % interval coverage per label of the Bayes posterior and
                                    of every Gaussian-head network (raw and calibrated sigmas)
    config.yaml                     resolved config, seeds, versions, command
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specvit.config import config_to_dict, load_config, provenance, write_resolved_config
from specvit.errors import ConfigError
from specvit.evaluate.scaling import ScalingModel
from specvit.labels import canonical_label


def _default_models() -> list[ScalingModel]:
    """SpecViT, CNN and MLP on fresh simulations, the same number of spectra each; LightGBM and Ridge on the file.

    The neural models draw every training batch from the prior the training file was simulated from
    (``data.source: simulate`` with the ``specvit simulate`` defaults; the file's prior is the same),
    each for the same number of spectra (equal samples seen, not equal time: the MLP is ~10x cheaper
    per spectrum than SpecViT). The classical baselines stay on the ``n_train`` rows of the file.
    Why this SpecViT: docs/models.md, "Equal-compute ablation" (issue #13).
    """
    # the budget of every neural model: at most 12 "epochs" of 8,192 fresh spectra (early stopping on the
    # validation R2 may end it sooner); fresh dicts per model, no config dict is shared
    def stream():
        return {"source": "simulate", "simulate": {"samples_per_epoch": 8192}}

    def neural_run():  # a tqdm bar per model (stderr)
        return {"batch_size": 128, "epochs": 12, "early_stopping_metric": "val_r2", "early_stopping_patience": 4,
                "num_threads": 2, "progress": True}

    return [
        ScalingModel("specvit", "neural", {
            "model": {"name": "specvit_p256_h64_l3"},  # flatten head, 256-pixel patches
            "optim": {"lr": 1.0e-3, "weight_decay": 0.01, "clip_grad_norm": 0.5},
            "schedule": {"kind": "cosine", "warmup_frac": 0.05, "min_lr": 1.0e-5},
            "data": stream(), "run": neural_run()}),
        ScalingModel("cnn", "neural", {
            "model": {"name": "cnn_small"}, "optim": {"lr": 1.0e-3},
            "schedule": {"warmup_frac": 0.05}, "data": stream(), "run": neural_run()}),
        ScalingModel("mlp", "neural", {
            "model": {"name": "mlp_small"}, "optim": {"lr": 1.0e-3},
            "schedule": {"warmup_frac": 0.05}, "data": stream(), "run": neural_run()}),
        # the paper's learning rate and leaves; 64 bins and 25% of the pixels per tree keep it within the
        # laptop budget (4096 features x 255 bins took > 5 min for 400 rounds on 2 cores)
        ScalingModel("lightgbm", "lightgbm", {
            "learning_rate": 0.05, "num_leaves": 63, "n_estimators": 300, "early_stopping_rounds": 30,
            "max_bin": 63, "feature_fraction": 0.25}),
        ScalingModel("ridge", "ridge", {}),
    ]


@dataclass
class QuickstartConfig:
    """``specvit quickstart`` (YAML via ``--config`` and/or ``--set key=value``)."""

    out_dir: str = "quickstart_out"
    seed: int = 0  #: base seed: data seeds are seed+1 (train), +2 (val), +3 (test); training seeds = seed
    n_train: int = 8000  #: training spectra
    n_val: int = 500  #: validation spectra (early stopping, Ridge alpha, LightGBM rounds)
    n_test: int = 2000  #: test spectra: every model is scored on these, with the same fixed noise
    label: str = "log_g"  #: the label every model regresses (the paper's)
    noise_level: float = 1.0
    eval_noise_seed: int = 42  #: seed of the fixed per-row test/validation noise, shared by all models
    workers: int = 1  #: processes for simulate
    models: list[ScalingModel] = field(default_factory=_default_models)
    templatefit_spectra: int = 200  #: template-fit the first N test spectra (0 = skip)
    templatefit_starts: int = 2  #: Levenberg-Marquardt starts per spectrum (first: best coarse-grid node)
    templatefit_iterations: int = 15
    #: Bayes posterior (specvit.baselines.bayes) of the first N test spectra, same fixed test noise (0 = skip);
    #: ~11 spectra per CPU-second on this project's machine (one thread), so 1000 add ~90 CPU-s
    bayes_spectra: int = 1000
    bayes_samples: int = 384  #: importance draws per round and spectrum (BayesConfig.n_samples)
    fisher_points: int = 400  #: ceilings at the labels of the first N test spectra (0 = skip)
    fisher_mags: list[float] = field(default_factory=lambda: [19.0, 20.0, 20.5, 21.0, 21.25, 21.5, 21.75, 22.0, 22.25, 22.5, 23.0])
    fisher_nuisance: str = "5d"  #: labels marginalised (5d: every label is free, as in the simulation)
    bootstrap_resamples: int = 200

    def __post_init__(self):
        self.label = canonical_label(self.label)
        for k in ("n_train", "n_val", "n_test"):
            if getattr(self, k) < 10:
                raise ConfigError("needs at least 10 spectra", field=k, value=getattr(self, k))
        for k in ("bayes_spectra", "templatefit_spectra", "fisher_points"):
            if getattr(self, k) < 0:
                raise ConfigError("must be >= 0 (0 = skip)", field=k, value=getattr(self, k))
        if self.bayes_samples < 1:
            raise ConfigError("must be >= 1", field="bayes_samples", value=self.bayes_samples)
        if self.fisher_nuisance not in ("3d", "5d"):
            raise ConfigError("must be 3d or 5d", field="fisher_nuisance", value=self.fisher_nuisance)


def load_quickstart_config(path=None, overrides=()) -> QuickstartConfig:
    return load_config(QuickstartConfig, path, overrides)


class _Clock:
    def __init__(self, log):
        self.t0, self.times, self.log = time.perf_counter(), {}, log

    def step(self, name: str, fn, *args, **kw):
        self.log(f"quickstart: {name} ...")
        t = time.perf_counter()
        out = fn(*args, **kw)
        self.times[name] = round(time.perf_counter() - t, 1)
        self.log(f"quickstart: {name} done in {self.times[name]:.1f} s (total {time.perf_counter() - self.t0:.0f} s)")
        return out


def _simulate(cfg: QuickstartConfig, data_dir: Path) -> dict[str, Path]:
    from specvit.data.simulate import SimulateConfig, simulate

    paths = {}
    for i, (split, n) in enumerate((("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)), start=1):
        (paths[split],) = simulate(SimulateConfig(), data_dir / f"{split}.h5", n=n, seed=cfg.seed + i,
                                   workers=cfg.workers, progress=True)
    return paths


def _train_models(cfg: QuickstartConfig, paths: dict, out: Path, log) -> dict:
    from specvit.evaluate.scaling import ScalingConfig, ScalingData, run_scaling

    sc = ScalingConfig(
        data=ScalingData(train=str(paths["train"]), val=str(paths["val"]), test=str(paths["test"]),
                         labels=[cfg.label], noise_level=cfg.noise_level, eval_noise_seed=cfg.eval_noise_seed),
        sizes=[cfg.n_train], models=list(cfg.models), out_dir=str(out), seed=cfg.seed,
        bootstrap_resamples=cfg.bootstrap_resamples)
    run_scaling(sc, log=log)
    results = {}
    for m in cfg.models:
        rd = out / "runs" / m.name / f"n{cfg.n_train}"
        results[m.name] = {"dir": rd, "result": json.loads((rd / "result.json").read_text())}
    return results


def _templatefit(cfg: QuickstartConfig, paths: dict, out: Path):
    import pandas as pd

    from specvit.atomic import atomic_path
    from specvit.baselines.templatefit import TemplateFitConfig, run_templatefit, templatefit_table
    from specvit.scores import evaluate_predictions

    pred_path = out / "predictions.csv"
    if pred_path.exists():
        table = pd.read_csv(pred_path)
    else:
        tf = TemplateFitConfig(input=str(paths["test"]), output="", max_spectra=cfg.templatefit_spectra,
                               noise_level=cfg.noise_level, noise_seed=cfg.eval_noise_seed, seed=cfg.seed,
                               n_starts=cfg.templatefit_starts, max_iter=cfg.templatefit_iterations)
        table, _ = templatefit_table(run_templatefit(tf), None)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(pred_path) as tmp:
            table.to_csv(tmp, index=False)
    metrics = evaluate_predictions(table, [cfg.label], "snr", cfg.seed, n_resamples=cfg.bootstrap_resamples)
    return table, metrics


def _bayes(cfg: QuickstartConfig, paths: dict, out: Path):
    """Posterior of the first ``bayes_spectra`` test spectra with the shared fixed test noise.

    Returns (shared prediction table of the scored rows, metrics of ``cfg.label``, coverage of every label with
    the flag counts): :func:`specvit.baselines.bayes.score_bayes`, the one scoring of a posterior catalogue.
    """
    import pandas as pd

    from specvit.baselines.bayes import BayesConfig, run_bayes, score_bayes
    from specvit.baselines.common import write_csv

    cat_path = out / "catalogue.csv"
    if cat_path.exists():  # resume
        df = pd.read_csv(cat_path)
    else:
        bc = BayesConfig(input=str(paths["test"]), output="", noise_level=cfg.noise_level,
                         noise_seed=cfg.eval_noise_seed, seed=cfg.seed, max_spectra=cfg.bayes_spectra,
                         n_samples=cfg.bayes_samples)
        df = run_bayes(bc)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(cat_path, df)
    names = [n for n in ("T_eff", "log_g", "M_H", "a_M", "C_M") if f"true_{n}" in df.columns]
    table, doc = score_bayes(df, [cfg.label], rng=cfg.seed, n_resamples=cfg.bootstrap_resamples, coverage_labels=names)
    return table, doc["test"], {"per_label": doc["coverage"], "flags": doc["flags"], "n_spectra": doc["n_spectra"],
                                "n_scored": doc["n_scored"], "n_not_scored": doc["n_not_scored"]}


def _network_coverage(pred_path: Path) -> dict | None:
    """68/95 % coverage of a Gaussian network's sigmas per label (calibrated and raw), or None."""
    import pandas as pd

    from specvit.train.calibration import coverage

    df = pd.read_csv(pred_path)
    names = [c[: -len("_sigma")] for c in df.columns if c.endswith("_sigma")]
    if not names:
        return None
    out = {}
    for n in names:
        t, p = df[f"{n}_true"].to_numpy(float), df[f"{n}_pred"].to_numpy(float)
        ok = np.isfinite(p)
        entry = {}
        for kind, col in (("calibrated", f"{n}_sigma"), ("raw", f"{n}_sigma_raw")):
            if col in df.columns:
                c = coverage(t[ok], p[ok], df[col].to_numpy(float)[ok])
                entry[kind] = {"cov68": c["cov68"][0], "cov95": c["cov95"][0], "z_rms": c["z_rms"][0]}
        entry["n"] = int(ok.sum())
        out[n] = entry
    return out


def _fisher(cfg: QuickstartConfig, paths: dict, out: Path):
    from specvit.fisher.ceiling import ceiling_at_dataset_labels

    return ceiling_at_dataset_labels(paths["test"], label=cfg.label, n_points=cfg.fisher_points, mags=cfg.fisher_mags,
                                     nuisance=cfg.fisher_nuisance, noise_level=cfg.noise_level)


def _sigma_min_of_test(forward, iset, cfg: QuickstartConfig, test_snr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CRLB sigma_min as a function of SNR (median over points in log-SNR bins): the parity envelope."""
    from specvit.fisher.information import crlb_bound, resolve_free

    tgt, free = resolve_free(list(forward.label_names), cfg.label, cfg.fisher_nuisance)
    info = iset.info.reshape(-1, *iset.info.shape[2:])
    snr = iset.snr.reshape(-1)
    sig = crlb_bound(info, target=tgt, free=free, label_var=1.0).sigma_min
    edges = np.geomspace(max(1.0, snr.min()), snr.max(), 16)
    idx = np.digitize(snr, edges)
    centres, values = [], []
    for k in range(1, len(edges)):
        sel = (idx == k) & np.isfinite(sig)
        if sel.sum() >= 3:
            centres.append(float(np.median(snr[sel])))
            values.append(float(np.median(sig[sel])))
    return np.asarray(centres), np.asarray(values)


def _r2_title(cfg: QuickstartConfig) -> str:
    """The R²-vs-SNR title: what each trained model learned from (a training-file size or fresh simulations)."""
    from specvit.evaluate.scaling import is_streamed

    streamed = [m.name for m in cfg.models if m.kind == "neural" and is_streamed(m)]
    on_file = [m.name for m in cfg.models if m.name not in streamed]  # LightGBM, Ridge, file-fed networks
    if not streamed:
        return f"test R² of {cfg.label} per SNR bin (N_train = {cfg.n_train})"
    where = "networks: fresh simulations" if len(streamed) > 1 else f"{streamed[0]}: fresh simulations"
    if on_file:
        where += f"; others: N_train = {cfg.n_train}"
    return f"test R² of {cfg.label} per SNR bin\n({where})"


def run_quickstart(cfg: QuickstartConfig, *, log=print) -> dict:
    """Run the whole main job; returns the metrics dict also written to ``metrics.json``."""
    import pandas as pd

    from specvit.evaluate import figures as F
    from specvit.evaluate.report import to_jsonable, write_report

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, out / "config.yaml", extra={"seed": cfg.seed, "eval_noise_seed": cfg.eval_noise_seed})
    clock = _Clock(log)
    paths = clock.step("simulate train/val/test", _simulate, cfg, out / "data")
    models = clock.step("train and test every model", _train_models, cfg, paths, out, log)
    tf = None
    if cfg.templatefit_spectra > 0:
        tf = clock.step(f"template fit of {cfg.templatefit_spectra} test spectra", _templatefit, cfg, paths,
                        out / "templatefit")
    bayes = None
    if cfg.bayes_spectra > 0:
        bayes = clock.step(f"Bayes posterior of {cfg.bayes_spectra} test spectra", _bayes, cfg, paths, out / "bayes")
    fisher = None
    if cfg.fisher_points > 0:
        fisher = clock.step("Fisher ceilings", _fisher, cfg, paths, out / "fisher")

    # ---- metrics
    per_model = {name: r["result"]["test"] for name, r in models.items()}
    if tf is not None:
        per_model["templatefit"] = tf[1]
    if bayes is not None:
        per_model["bayes"] = bayes[1]
    from specvit.snr_bins import SNR_BIN_EDGES, snr_bin_labels

    metrics: dict[str, Any] = {"label": cfg.label, "n_train": cfg.n_train, "n_test": cfg.n_test,
                               "snr_bin_edges": list(SNR_BIN_EDGES), "models": {}, "ceiling_by_snr_bin": None}
    rows = []
    for name, m in per_model.items():
        entry = m["labels"][cfg.label]
        o = entry["overall"]
        metrics["models"][name] = {"r2": o["r2"], "r2_lo": o.get("r2_lo"), "r2_hi": o.get("r2_hi"), "mae": o["mae"],
                                   "rmse": o["rmse"], "bias": o["bias"], "n_test": o["n"],
                                   "per_snr_bin": entry["snr_bins"]}
        rows.append({"model": name, "R2": o["r2"], "MAE": o["mae"], "RMSE": o["rmse"], "bias": o["bias"],
                     "n_test": o["n"]})
    # interval coverage (fraction of truths inside the 68 % / 95 % intervals) per label
    metrics["coverage"] = {}
    if bayes is not None:
        metrics["coverage"]["bayes"] = bayes[2]
        metrics["models"]["bayes"]["coverage"] = bayes[2]["per_label"]
    for name, r in models.items():
        cov = _network_coverage(r["dir"] / "predictions.csv")
        if cov is not None:
            metrics["coverage"][name] = cov
            metrics["models"][name]["coverage"] = cov
    if fisher is not None:
        metrics["ceiling_by_snr_bin"] = fisher[2]
        metrics["ceiling_label_variance"] = fisher[3]
    summary_table = pd.DataFrame(rows)
    cov_rows = []
    for name, cov in metrics["coverage"].items():
        per_label = cov.get("per_label", cov)
        for lab, c in per_label.items():
            kinds = [("posterior", c)] if "cov68" in c else [(k, c[k]) for k in ("raw", "calibrated") if k in c]
            for kind, v in kinds:
                cov_rows.append({"model": name, "label": lab, "interval": kind, "coverage 68%": v["cov68"],
                                 "coverage 95%": v["cov95"], "n": c.get("n")})

    # ---- figures
    figs, captions = {}, {}
    ceilings = F.ceilings_from_fisher(fisher[2]) if fisher is not None else None
    optimal = None
    if bayes is not None:
        optimal = {f"Bayes posterior mean (first {bayes[2]['n_spectra']} test spectra)": per_model.pop("bayes")}
    figs["r2_vs_snr"] = F.plot_r2_vs_snr(per_model, ceilings=ceilings, label=cfg.label, optimal=optimal,
                                         title=_r2_title(cfg))
    if bayes is not None:
        per_model.update({"bayes": bayes[1]})
    captions["r2_vs_snr"] = ("R² per SNR bin for every model on the same noisy test spectra (bands: bootstrap "
                             "10-90%), against the Cramér-Rao ceiling (unbiased estimators; band p10-p90 over "
                             "points) and the van Trees ceiling (any estimator, with the training prior)"
                             + ("; black: the posterior mean under the simulator's own prior and likelihood "
                                "(the Bayes-optimal estimate for squared error, here on the first "
                                f"{bayes[2]['n_spectra']} test spectra), which an estimator trained on "
                                "this prior can at best reach." if bayes is not None else "."))
    spec_pred = pd.read_csv(models[cfg.models[0].name]["dir"] / "predictions.csv")
    envelope = _sigma_min_of_test(fisher[0], fisher[1], cfg, spec_pred["snr"].to_numpy()) if fisher else None
    figs["parity"] = F.plot_parity(spec_pred[f"{cfg.label}_true"], spec_pred[f"{cfg.label}_pred"],
                                   snr=spec_pred["snr"], envelope=envelope, label=cfg.label,
                                   model_name=cfg.models[0].name)
    captions["parity"] = f"{cfg.models[0].name}: predicted vs true, residuals vs SNR with the ±σ_min (CRLB) envelope."
    figs.update(_noise_and_attention(cfg, paths, models, captions))
    timings = dict(clock.times, total=round(time.perf_counter() - clock.t0, 1))
    metrics["timings_s"] = timings
    report = write_report(
        out, title="specvit quickstart", metrics=to_jsonable(metrics), figures=figs,
        tables={"test metrics": summary_table, "SNR bins": pd.DataFrame({"bin": snr_bin_labels()}),
                **({"interval coverage (targets 0.683 / 0.954)": pd.DataFrame(cov_rows)} if cov_rows else {})},
        config=config_to_dict(cfg), provenance=provenance({"seed": cfg.seed}), timings=timings, captions=captions,
        summary=_summary(cfg, metrics))
    log(f"quickstart: wrote {report} and {out / 'metrics.json'} in {timings['total']:.0f} s")
    return metrics


def _noise_and_attention(cfg, paths, models, captions) -> dict:
    import torch

    from specvit.data import open_dataset
    from specvit.evaluate import figures as F
    from specvit.evaluate.attention import cls_attention, patch_wavelengths
    from specvit.models.io import load_model
    from specvit.observe import PFSObserver
    from specvit.observe.calibrate import noise_vs_wavelength
    from specvit.spectra import default_model

    figs = {}
    model = default_model()
    flux = model.flux(np.array([[4500.0, 2.0, 0.0, 0.0, 0.0]]))
    nv = noise_vs_wavelength(PFSObserver.for_model(model), flux)
    figs["noise_vs_wavelength"] = F.plot_noise_vs_wavelength(
        nv["wave"], {float(m): e for m, e in zip(nv["mags"], nv["error"])}, flux=nv["flux"],
        snr={float(m): float(s) for m, s in zip(nv["mags"], nv["snr"])})
    captions["noise_vs_wavelength"] = ("1σ error of the normalised flux vs wavelength per HSC-i magnitude "
                                       "(calibration setup, 4 × 900 s), for T_eff 4500 K, log g 2, [M/H] 0.")
    name = cfg.models[0].name
    vit, _ = load_model(models[name]["dir"] / "model")
    if hasattr(vit, "blocks"):
        with open_dataset(paths["test"]) as ds:
            x = torch.as_tensor(np.asarray(ds.flux[:64], dtype=np.float32))
            wave = ds.wave
        att = cls_attention(vit.eval(), x)
        figs["attention"] = F.plot_attention(patch_wavelengths(vit, wave), att, wave=wave,
                                             flux=x.mean(0).numpy())
        captions["attention"] = f"{name}: CLS attention on each patch per layer (64 noiseless test spectra)."
    return figs


def _summary(cfg: QuickstartConfig, metrics: dict) -> str:
    parts = [f"{n}: R² = {m['r2']:.3f}" for n, m in metrics["models"].items()]
    return (f"Test R² of {cfg.label} on {cfg.n_test} simulated PFS MR spectra (embedded emulator, "
            f"{cfg.n_train} training spectra): " + "; ".join(parts) + ".")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="the main job: simulate, train SpecViT and baselines, ceilings, report (minutes on a laptop)",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("--out", default=None, help="output folder (default quickstart_out; same as --set out_dir=...)")
    p.add_argument("--config", default=None, help="YAML file of QuickstartConfig keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set n_train=20000 --set templatefit_spectra=0")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_quickstart_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    run_quickstart(cfg)
    return 0
