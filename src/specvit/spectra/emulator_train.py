"""Train and validate the :class:`~specvit.spectra.emulator.SpectralEmulator` on synthesised spectra.

Training (deterministic for a given seed, data and machine):

1. read every finished ``<id>.npz`` of the design; rows with ``split == "val"`` are held out;
2. PCA (SVD) of the training normalised flux and of ln(continuum); K is the smallest number of
   components whose reconstruction rms on the training set is below ``pca_tol_norm`` (capped);
3. an MLP maps labels scaled to [-0.5, 0.5] to the PCA coefficients; loss = mean squared
   error in PIXEL space (the bases are orthonormal, so it is the coefficient error) of the
   normalised flux plus that of ln C (after removing a Planck baseline); Adam with cosine decay
   to ``lr_min``, full batch; the final weights are kept (the validation set is never used).
   With ``domain_penalty`` > 0 the loss also penalises raw normalised flux below ``norm_floor`` or
   above ``norm_ceiling`` at label sets drawn afresh every epoch from the physical domain (no spectra).

Validation: rms and max |emulator - synthesis| of the normalised flux per held-out spectrum,
overall and per region of label space, and of the relative continuum.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from specvit.errors import InputError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES, outside_domain, uniform_in_domain
from specvit.physics import ln_pi_planck
from specvit.spectra.emulator import EmulatorNet, SpectralEmulator
from specvit.spectra.synthesis.design import read_design, training_box
from specvit.spectra.synthesis.store import read_spectrum


@dataclass
class EmulatorTrainConfig:
    seed: int = 42
    width: int = 256
    depth: int = 3
    epochs: int = 6000
    lr: float = 3e-3
    lr_min: float = 1e-5
    weight_decay: float = 0.0
    pca_tol_norm: float = 3e-4
    max_components: int = 192
    n_cont_components: int = 12
    lncont_weight: float = 1.0
    #: weight of the domain-constraint penalty (0: off, the recipe of v0-v2). The penalty is the mean over
    #: pixels and over ``penalty_draws`` label sets drawn afresh every epoch from the physical domain
    #: (:func:`domain_penalty_pool`) of relu(norm_floor - n)^2 + relu(n - norm_ceiling)^2, n = the raw
    #: normalised flux (before the clip at 0); it needs no spectra. In the loss's units (pixel MSE).
    domain_penalty: float = 0.0
    penalty_draws: int = 128
    norm_floor: float = 0.01
    norm_ceiling: float = 1.015


def _designs(design_path) -> list:
    return list(design_path) if isinstance(design_path, (list, tuple)) else [design_path]


def load_spectra(spectra_dir, design_path):
    """Labels, normalised flux, ln continuum, wave, split and ids of every finished design row.

    ``design_path``: one design CSV or a list of them (e.g. the Sobol design and a refinement
    design of :mod:`specvit.spectra.synthesis.refine`); ids must be unique across them.
    """
    import pandas as pd

    spectra_dir = Path(spectra_dir)
    frames = [read_design(p) for p in _designs(design_path)]
    df = pd.concat(frames, ignore_index=True)
    if df["id"].duplicated().any():
        raise InputError("the same id appears in two designs", field="id",
                         value=str(df["id"][df["id"].duplicated()].iloc[0]))
    ids, labels, norm, lnc, split, wave, resolution = [], [], [], [], [], None, None
    split_of = dict(zip(df["id"], df["split"]))
    for sid in df["id"]:
        p = spectra_dir / f"{sid}.npz"
        if not p.exists():
            continue
        s = read_spectrum(p)
        if wave is None:
            wave = s["wave"]
            resolution = s["meta"].get("resolution")
        elif len(s["wave"]) != len(wave) or not np.allclose(s["wave"], wave):
            raise InputError("spectra on different wavelength grids", file=p, field="wave")
        ids.append(sid)
        labels.append(s["labels"])
        norm.append(s["norm"].astype(np.float32))
        lnc.append(np.log(s["cont"]).astype(np.float32))
        split.append(split_of[sid])
    if not ids:
        raise InputError("no finished spectra for this design", file=spectra_dir, field="design", value=str(design_path))
    return {"ids": np.array(ids), "labels": np.array(labels), "norm": np.stack(norm), "lncont": np.stack(lnc),
            "split": np.array(split), "wave": wave, "resolution": float(resolution or 10000.0)}


def _pca(x: np.ndarray, tol: float | None, k_max: int, k_fixed: int | None = None):
    mean = x.mean(0)
    u, s, vt = np.linalg.svd((x - mean).astype(np.float64), full_matrices=False)
    n, p = x.shape
    if k_fixed is None:
        # residual rms with k components = sqrt(sum_{j>=k} s_j^2 / (n p))
        resid = np.sqrt(np.maximum(np.cumsum((s ** 2)[::-1])[::-1], 0) / (n * p))
        resid = np.append(resid, 0.0)
        ok = np.flatnonzero(resid <= tol)
        k = int(min(ok[0] if len(ok) else len(s), k_max, len(s)))
    else:
        k = int(min(k_fixed, len(s)))
    k = max(k, 1)
    return mean.astype(np.float32), vt[:k].astype(np.float32)


def domain_penalty_pool(rng: np.random.Generator, n: int, *, corner_fraction: float = 0.5,
                        snap_probability: float = 0.5) -> np.ndarray:
    """(n, 5) label sets in the physical domain (label box, C/O < ``MAX_C_TO_O``) for the constraint penalty.

    ``1 - corner_fraction`` of them uniform (:func:`specvit.labels.uniform_in_domain`); the rest uniform
    with every label independently snapped to its lower or upper box edge with ``snap_probability``, so the
    faces, edges and corners of the box (where an emulator is worst) are drawn often; draws that land at
    C/O >= 1 have their [C/M] moved onto the C/O = 1 line (minus 1e-6 dex), so that edge is drawn too.
    Deterministic for ``rng``."""
    from specvit.labels import MAX_C_TO_O, SOLAR_C_TO_O

    n_corner = int(round(n * corner_fraction))
    uni = uniform_in_domain(rng, n - n_corner)
    lo = np.array([DEFAULT_LABEL_BOUNDS[k][0] for k in LABEL_NAMES])
    hi = np.array([DEFAULT_LABEL_BOUNDS[k][1] for k in LABEL_NAMES])
    lab = lo + (hi - lo) * rng.uniform(size=(n_corner, len(LABEL_NAMES)))
    snap = rng.uniform(size=lab.shape) < snap_probability
    edge = np.where(rng.uniform(size=lab.shape) < 0.5, lo, hi)
    lab = np.where(snap, edge, lab)
    ia, ic = LABEL_NAMES.index("a_M"), LABEL_NAMES.index("C_M")
    d = np.log10(MAX_C_TO_O / SOLAR_C_TO_O) - 1e-6
    lab[:, ic] = np.minimum(lab[:, ic], lab[:, ia] + d)
    lab = np.vstack([uni, lab])
    assert not outside_domain(lab, LABEL_NAMES).any()
    return lab


def train_emulator(data: dict, config: EmulatorTrainConfig | None = None, *, n_components: int | None = None,
                   log=print) -> SpectralEmulator:
    cfg = config or EmulatorTrainConfig()
    tr = data["split"] != "val"
    x, yn, yc = data["labels"][tr], data["norm"][tr], data["lncont"][tr]
    if len(x) < 2:
        raise InputError("need at least 2 training spectra", field="n_train", value=int(len(x)))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    yc = yc - ln_pi_planck(data["wave"][None, :], x[:, :1]).astype(np.float32)  # Planck baseline
    n_mean, n_basis = _pca(yn, cfg.pca_tol_norm, cfg.max_components, n_components)
    c_mean, c_basis = _pca(yc, None, cfg.n_cont_components, cfg.n_cont_components)
    an = (yn - n_mean) @ n_basis.T
    ac = (yc - c_mean) @ c_basis.T
    bounds = dict(DEFAULT_LABEL_BOUNDS)
    box = training_box()
    lo = np.array([box[n][0] for n in LABEL_NAMES])
    hi = np.array([box[n][1] for n in LABEL_NAMES])
    k, kc = n_basis.shape[0], c_basis.shape[0]
    net = EmulatorNet(n_labels=len(LABEL_NAMES), n_out=k + kc, width=cfg.width, depth=cfg.depth)
    # initialise deterministically from the seeded generator
    with torch.no_grad():
        for m in net.mlp:
            if isinstance(m, torch.nn.Linear):
                bound = 1.0 / np.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
    xs = torch.as_tensor((x - lo) / (hi - lo) - 0.5, dtype=torch.float32)
    # target scale per block so both losses are in pixel-rms units
    t = torch.as_tensor(np.concatenate([an, ac], axis=1), dtype=torch.float32)
    w = torch.ones(k + kc)
    w[k:] = cfg.lncont_weight
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    p = yn.shape[1]
    pen = None
    if cfg.domain_penalty > 0:
        draw_rng = np.random.default_rng(cfg.seed)  # fresh label sets every epoch, seeded
        nm_t, nb_t = torch.as_tensor(n_mean), torch.as_tensor(n_basis)

        def pen(net_):
            lab = domain_penalty_pool(draw_rng, cfg.penalty_draws)
            raw = nm_t + net_(torch.as_tensor((lab - lo) / (hi - lo) - 0.5, dtype=torch.float32))[:, :k] @ nb_t
            return (torch.relu(cfg.norm_floor - raw) ** 2 + torch.relu(raw - cfg.norm_ceiling) ** 2).mean()
    t0 = time.time()
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch problem: threads only add overhead
    try:
        for ep in range(cfg.epochs):
            opt.zero_grad()
            loss = (((net(xs) - t) ** 2) * w).sum(1).mean() / p
            total = loss + cfg.domain_penalty * pen(net) if pen is not None else loss
            total.backward()
            opt.step()
            sched.step()
            if log and (ep % 1000 == 0 or ep == cfg.epochs - 1):
                extra = f", penalty {(total - loss).item():.2e}" if pen is not None else ""
                log(f"epoch {ep}: train pixel-rms {np.sqrt(loss.item()):.2e}{extra} ({time.time() - t0:.0f}s)")
    finally:
        torch.set_num_threads(n_threads)
    with torch.no_grad():
        final = float((((net(xs) - t) ** 2) * w).sum(1).mean() / p)
    meta = {
        "n_train": int(tr.sum()), "n_val": int((~tr).sum()), "train_config": asdict(cfg),
        "n_components": int(k), "n_cont_components": int(kc), "train_pixel_rms": float(np.sqrt(final)),
        "trained": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
    }
    return SpectralEmulator(
        wave=data["wave"], resolution=data.get("resolution", 10000.0), label_names=LABEL_NAMES,
        bounds=bounds, train_lo=lo, train_hi=hi, net=net, norm_mean=n_mean, norm_basis=n_basis,
        lncont_mean=c_mean, lncont_basis=c_basis, lncont_baseline="planck", meta=meta,
    )


def fold_models(data: dict, config: EmulatorTrainConfig, *, folds: int, seed: int, vary_seed: bool = False):
    """Yield ``(left_out_rows, model)`` per fold: the training rows are permuted with ``seed`` and split
    into ``folds`` parts; each model is trained on the training rows outside its part (held-out rows never
    enter). ``vary_seed``: fold k trains with seed ``config.seed + k`` (a committee), else with ``config``."""
    tr = np.flatnonzero(data["split"] != "val")
    order = np.random.default_rng(seed).permutation(tr)
    for k, part in enumerate(np.array_split(order, min(folds, len(order)))):
        split = np.array(["val"] * len(data["split"]), dtype=object)
        split[np.setdiff1d(tr, part)] = "train"
        cfg = replace(config, seed=config.seed + k) if vary_seed else config
        yield part, train_emulator(dict(data, split=split), cfg, log=None)


CV_ROWS = ("all", "inside")


def inside_label_box(labels: np.ndarray) -> np.ndarray:
    """Rows of ``labels`` (N, 5) inside the label box (``DEFAULT_LABEL_BOUNDS``, edges included)."""
    lo = np.array([DEFAULT_LABEL_BOUNDS[n][0] for n in LABEL_NAMES])
    hi = np.array([DEFAULT_LABEL_BOUNDS[n][1] for n in LABEL_NAMES])
    return np.all((labels >= lo) & (labels <= hi), axis=1)


def cross_validate(data: dict, config: EmulatorTrainConfig, *, folds: int = 5, seed: int = 0,
                   rows: str = "all") -> float:
    """K-fold cross-validated pixel rms of the normalised flux on the TRAINING rows only.

    ``rows="inside"`` scores only the left-out rows inside the label box (they are still left out of
    training all the same); the pooled rms over ``"all"`` rows is dominated by the margin rows outside
    the box, where an emulator extrapolates and nobody fits.
    """
    if rows not in CV_ROWS:
        raise InputError(f"unknown cross-validation rows (known: {', '.join(CV_ROWS)})", field="cv_rows", value=rows)
    keep = inside_label_box(data["labels"]) if rows == "inside" else np.ones(len(data["labels"]), bool)
    sq, n = 0.0, 0
    for part, model in fold_models(data, config, folds=folds, seed=seed):
        part = part[keep[part]]
        if len(part) == 0:
            continue
        sub_eval = dict(data, split=np.where(np.isin(np.arange(len(data["split"])), part), "cv", "x"))
        rep = validate(model, sub_eval, which="cv")
        r = np.asarray(rep["rms_per_spectrum"])
        sq += float(np.sum(r ** 2))
        n += len(r)
    if n == 0:
        raise InputError("no training row to score in cross-validation", field="cv_rows", value=rows)
    return float(np.sqrt(sq / n))


def select_config(data: dict, candidates: list[EmulatorTrainConfig], *, folds: int = 5, rows: str = "all",
                  log=print):
    """Pick the candidate with the lowest cross-validated rms (training rows only; held-out rows untouched)."""
    scores = []
    for c in candidates:
        scores.append(cross_validate(data, c, folds=folds, seed=c.seed, rows=rows))
        if log:
            log(f"cv ({rows} rows): width={c.width} depth={c.depth} wd={c.weight_decay} epochs={c.epochs}: "
                f"rms {scores[-1]:.4f}")
    i = int(np.argmin(scores))
    return candidates[i], scores


#: Regions of label space reported separately.
REGIONS = {
    "all": lambda L: np.ones(len(L), bool),
    "Teff<4250 (TiO)": lambda L: L[:, 0] < 4250,
    "4250<=Teff<5000": lambda L: (L[:, 0] >= 4250) & (L[:, 0] < 5000),
    "Teff>=5000": lambda L: L[:, 0] >= 5000,
    "giants logg<3": lambda L: L[:, 1] < 3,
    "dwarfs logg>=3": lambda L: L[:, 1] >= 3,
    "[M/H]<-1": lambda L: L[:, 2] < -1,
    "[M/H]>=-1": lambda L: L[:, 2] >= -1,
    # the physical domain of the embedded model (specvit.labels.MAX_C_TO_O; docs/emulator.md "Physical domain")
    "C/O<1 (domain)": lambda L: ~outside_domain(L, LABEL_NAMES),
    "C/O>=1 (outside domain)": lambda L: outside_domain(L, LABEL_NAMES),
}


def validate(model: SpectralEmulator, data: dict, *, which: str = "val") -> dict:
    sel = data["split"] == which if which else np.ones(len(data["ids"]), bool)
    if not sel.any():
        raise InputError("no held-out spectra finished yet", field="split", value=which)
    L = data["labels"][sel]
    inside = np.all([(L[:, j] >= model.bounds[n][0]) & (L[:, j] <= model.bounds[n][1])
                     for j, n in enumerate(model.label_names)], axis=0)
    with warnings.catch_warnings():  # margin rows are evaluated on purpose
        warnings.simplefilter("ignore", UserWarning)
        pred_n = model.normalized_flux(L, extrapolate=True)
        pred_c = model.continuum(L, extrapolate=True)
    dn = pred_n - data["norm"][sel]
    dc = pred_c / np.exp(data["lncont"][sel].astype(np.float64)) - 1.0
    rms = np.sqrt(np.mean(dn ** 2, axis=1))
    mx = np.max(np.abs(dn), axis=1)
    crms = np.sqrt(np.mean(dc ** 2, axis=1))
    report = {"n": int(sel.sum()), "n_inside_box": int(inside.sum()), "per_region": {}}
    if which == "cv":
        inside = np.ones(len(L), bool)
    for name, f in REGIONS.items():
        m = f(L) & inside
        if m.any():
            report["per_region"][name] = {
                "n": int(m.sum()), "rms_norm_flux_median": float(np.median(rms[m])),
                "rms_norm_flux_mean": float(np.sqrt(np.mean(rms[m] ** 2))), "max_abs_norm_flux": float(mx[m].max()),
                "rms_rel_continuum": float(np.sqrt(np.mean(crms[m] ** 2))),
            }
    report["overall"] = report["per_region"].get("all", {})
    report["ids"] = data["ids"][sel].tolist()
    report["rms_per_spectrum"] = rms.tolist()
    report["max_per_spectrum"] = mx.tolist()
    report["_residual"] = dn  # for figures; dropped before JSON
    report["_labels"] = L
    return report


def _jsonable(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def validate_on_directory(model, spectra_dir, design_path, *, figures_dir=None, max_c_to_o=None) -> dict:
    """Validation on the held-out rows of ``spectra_dir``; ``max_c_to_o``: only those at C/O < it
    (:func:`restrict_to_domain`; None: all)."""
    data = restrict_to_domain(load_spectra(spectra_dir, design_path), max_c_to_o, log=None)
    rep = validate(model, data)
    if figures_dir is not None:
        from specvit.spectra.plots import save_validation_figures

        save_validation_figures(model, data, rep, Path(figures_dir))
    return _jsonable(rep)


#: Network sizes ``--select`` chooses among by cross-validation (all at the run's epochs). The first
#: four were the whole list up to emulator v2 (which chose 256 x 3); the deeper and wider ones were
#: added for v3's larger training set, where 256 x 3 underfits (training pixel-rms 2.0e-3).
CANDIDATES = (dict(width=64, depth=2, weight_decay=1e-4), dict(width=64, depth=2, weight_decay=1e-2),
              dict(width=128, depth=3, weight_decay=0.0), dict(width=256, depth=3, weight_decay=0.0),
              dict(width=256, depth=4, weight_decay=0.0), dict(width=512, depth=3, weight_decay=0.0),
              dict(width=512, depth=4, weight_decay=0.0))


def load_training_set(spectra_dir, design_path, *, transfer_from=None, log=print):
    """``(data, held_out, transfer)``: :func:`load_spectra` of ``spectra_dir``; with ``transfer_from`` (the
    same design(s) synthesised with an older line list) the older-only label sets join it through
    :func:`specvit.spectra.linelist_transfer.transfer_dataset`, else ``held_out`` and ``transfer`` are None."""
    data = load_spectra(spectra_dir, design_path)
    if transfer_from is None:
        return data, None, None
    from specvit.spectra.linelist_transfer import transfer_dataset

    return transfer_dataset(data, load_spectra(transfer_from, design_path), log=log)


def restrict_to_domain(data: dict, max_c_to_o: float | None, *, log=print) -> dict:
    """``data`` without the rows outside the physical domain, as a design draws them
    (:func:`specvit.spectra.synthesis.design.make_design`): training rows at C/O >= ``max_c_to_o`` times
    10**DEFAULT_MARGIN["C_M"] (1.12 for 1: the design's [C/M] margin, so the edge is trained) and
    validation rows at C/O >= ``max_c_to_o``. ``None``: unchanged. ``data["excluded_outside_domain"]``
    lists the ids dropped."""
    if max_c_to_o is None:
        return data
    from specvit.spectra.synthesis.design import DEFAULT_MARGIN

    wide = max_c_to_o * 10.0 ** DEFAULT_MARGIN["C_M"]
    val = data["split"] == "val"
    drop = np.where(val, outside_domain(data["labels"], LABEL_NAMES, max_c_to_o=max_c_to_o),
                    outside_domain(data["labels"], LABEL_NAMES, max_c_to_o=wide))
    if log:
        log(f"physical domain: leaving out {int((drop & ~val).sum())} training rows at C/O >= {wide:.3g} and "
            f"{int((drop & val).sum())} held-out rows at C/O >= {max_c_to_o:g}")
    out = {k: (v[~drop] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == len(drop) else v)
           for k, v in data.items()}
    out["excluded_outside_domain"] = data["ids"][drop].tolist()
    return out


def train_from_directory(spectra_dir, design_path, out_path, *, seed: int = 42, n_components=None, epochs=None,
                         version: str | None = None, select: bool = False, folds: int = 5,
                         cv_rows: str = "all", transfer_from=None, max_c_to_o: float | None = None,
                         domain_penalty: float = 0.0, penalty_ceiling: float = 1.015, penalty_draws: int = 128,
                         candidates=None) -> dict:
    """Train on ``spectra_dir`` (and, with ``transfer_from``, on older-line-list spectra carried over).

    ``transfer_from``: a directory of the same design synthesised with an older line list; label sets
    found only there are added to the training set through
    :func:`specvit.spectra.linelist_transfer.transfer_dataset` (a model of ln(new/old) learned from the
    label sets in both). Validation is always against exact spectra of ``spectra_dir``; the transferred
    validation-split rows are reported separately (``validation_transferred``).
    ``domain_penalty`` / ``penalty_ceiling`` / ``penalty_draws``: :class:`EmulatorTrainConfig`'s
    ``domain_penalty`` / ``norm_ceiling`` / ``penalty_draws`` (v3: 100 / 1.015 / 128; v4: 100 / 1.01 / 128).
    """
    if not 1.0 < float(penalty_ceiling) < 1.1:
        raise InputError("penalty ceiling must lie in (1, 1.1) of the continuum", field="penalty_ceiling",
                         value=penalty_ceiling)
    if int(penalty_draws) < 1:
        raise InputError("penalty draws must be >= 1", field="penalty_draws", value=penalty_draws)
    data, held_out, transfer = load_training_set(spectra_dir, design_path, transfer_from=transfer_from)
    data = restrict_to_domain(data, max_c_to_o)
    if held_out is not None:
        held_out = restrict_to_domain(held_out, max_c_to_o, log=None)
    cfg = EmulatorTrainConfig(seed=seed, domain_penalty=float(domain_penalty), norm_ceiling=float(penalty_ceiling),
                              penalty_draws=int(penalty_draws))
    if epochs is not None:
        cfg.epochs = int(epochs)
    cv = None
    if select:
        cand_list = CANDIDATES if candidates is None else tuple(candidates)
        cands = [EmulatorTrainConfig(**{**asdict(cfg), **c}) for c in cand_list]
        cfg, scores = select_config(data, cands, folds=folds, rows=cv_rows)
        cv = {"folds": folds, "rows": cv_rows, "candidates": [dict(c) for c in cand_list], "cv_rms": scores}
    model = train_emulator(data, cfg, n_components=n_components)
    if cv:
        model.meta["config_selection"] = cv
    model.meta["version"] = version or Path(out_path).stem
    model.meta["design"] = ", ".join(Path(p).name for p in _designs(design_path))
    if max_c_to_o is not None:
        model.meta["max_c_to_o"] = float(max_c_to_o)  # also the model's domain limit (SpectralEmulator.max_c_to_o)
    model.meta["training_ids"] = data["ids"][data["split"] != "val"].tolist()
    model.meta["held_out_ids"] = data["ids"][data["split"] == "val"].tolist()
    if "excluded_outside_domain" in data:
        model.meta["excluded_outside_domain"] = data["excluded_outside_domain"]
    model.version = model.meta["version"]
    if transfer is not None:
        src = data["source"][data["split"] != "val"]
        model.meta["training_set"] = {"synthesised": int((src == "synthesised").sum()),
                                      "transferred": int((src == "transferred").sum()),
                                      "transferred_from": Path(transfer_from).name}
        model.meta["linelist_transfer"] = transfer.report
    report = {"train": model.meta}
    if (data["split"] == "val").any():
        rep = validate(model, data)
        model.meta["validation"] = {"n": rep["n"], "overall": rep["overall"], "per_region": rep["per_region"]}
        report["validation"] = _jsonable(rep)
    if held_out is not None:
        rep = validate(model, held_out)
        model.meta["validation_transferred"] = {"n": rep["n"], "overall": rep["overall"]}
        report["validation_transferred"] = _jsonable(rep)
    model.save(out_path)
    return report
