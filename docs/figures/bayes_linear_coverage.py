"""The linear-Gaussian (Fisher) prediction of each spectrum's label error from its fixed noise vector, and the
coverage of the posterior intervals next to it (docs/bayes.md, "T_eff 68 % coverage at high SNR").

    PYTHONPATH=src python docs/figures/bayes_linear_coverage.py --data test.h5 --catalogue hi.csv \
        [--noise-seed 42] [--label T_eff]
    PYTHONPATH=src python docs/figures/bayes_linear_coverage.py --data test.h5 --rows 0:2000   # linear only

For every catalogue row: J = ∂μ/∂θ of the exact forward model at the true labels (finite differences; one-sided
in [α/M] and [C/M] so that C/O stays < 1), F = Jᵀ diag(e⁻²) J, and s = [F⁻¹ Jᵀ diag(e⁻²) (e ⊙ z)]_label /
√(F⁻¹)_label,label with z the fixed test noise of the row (``fixed_normal(row, noise_seed)``). Under the model s ~
N(0, 1) for every spectrum; |s| ≤ 1 is the truth inside the linear-Gaussian 68 % interval. Printed per SNR bin:
posterior 68 % coverage (q16–q84), the linear one on the same noise, the discordant rows (posterior out / linear
in, posterior in / linear out), the correlation of z_post = (true − mean)/sd with −s, and the median posterior
sd / Cramér–Rao sd.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def linear_errors(fwd, theta, err, rows, noise_seed):
    """s (n, L): the linear-Gaussian label errors in Cramér–Rao units, and the Cramér–Rao sds (n, L)."""
    import torch

    from specvit.baselines.templatefit_fast import exact_mu
    from specvit.observe.noise import fixed_normal

    names = list(fwd.label_names)
    steps = np.array([{"T_eff": 5.0}.get(n, 0.01 if n in ("log_g", "M_H") else 0.005) for n in names])
    lo, hi = fwd.lower, fwd.upper
    jac = []
    for j, n in enumerate(names):
        tp, tm = theta.copy(), theta.copy()
        tp[:, j] = np.minimum(theta[:, j] + steps[j], hi[j])
        tm[:, j] = np.maximum(theta[:, j] - steps[j], lo[j])
        if n == "a_M":
            tm[:, j] = theta[:, j]
        if n == "C_M":
            tp[:, j] = theta[:, j]
        d = exact_mu(fwd, torch.as_tensor(tp)).numpy() - exact_mu(fwd, torch.as_tensor(tm)).numpy()
        jac.append(d / (tp[:, j] - tm[:, j])[:, None])
    jac = np.stack(jac, -1)
    w = 1.0 / err ** 2
    cov = np.linalg.inv(np.einsum("npi,np,npj->nij", jac, w, jac))
    sd = np.sqrt(np.einsum("nii->ni", cov))
    z = fixed_normal(rows, err.shape[1], noise_seed, dtype=np.float64)
    g = np.einsum("npi,np,np->ni", jac, w, err * z)
    return np.einsum("nij,nj->ni", cov, g) / sd, sd


def main(argv=None):
    import torch

    from specvit.baselines.bayes import BayesConfig, bayes_forward
    from specvit.data import open_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--catalogue", help="bayes_rows.py / run_bayes CSV (row, true_*, *_q16, ...)")
    ap.add_argument("--rows", help="A:B: without a catalogue, the linear coverage of these rows only")
    ap.add_argument("--noise-seed", type=int, default=42)
    ap.add_argument("--label", default="T_eff")
    ap.add_argument("--snr-edges", default="0,6,9,13,20,1e9")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    fwd = bayes_forward(BayesConfig())
    names = list(fwd.label_names)
    from specvit.errors import InputError

    if (a.catalogue is None) == (a.rows is None):
        raise InputError("give exactly one of --catalogue and --rows", field="--catalogue/--rows",
                         value=[a.catalogue, a.rows])
    with open_dataset(a.data) as ds:
        if a.catalogue:
            cat = pd.read_csv(a.catalogue).sort_values("row").reset_index(drop=True)
            rows = cat["row"].to_numpy(int)
        else:
            r0, r1 = (int(v) for v in a.rows.split(":"))
            rows = np.arange(r0, r1)
        theta, err = ds.labels(names)[rows], np.asarray(ds.error[rows], float)
        flux = np.asarray(ds.flux[rows], float)
    s_all, sd_all = linear_errors(fwd, theta, err, rows, a.noise_seed)
    from specvit.baselines.templatefit_fast import exact_mu
    from specvit.observe.noise import fixed_normal

    # the simulator's data against the likelihood's model: stored flux vs the exact model at the truth, and the noise
    chi2_model = (((flux - exact_mu(fwd, torch.as_tensor(theta)).numpy()) / err) ** 2).sum(1)
    z = fixed_normal(rows, err.shape[1], a.noise_seed, dtype=np.float64)
    print(f"stored flux vs exact model at the truth: chi2 median {np.median(chi2_model):.2g}, max {chi2_model.max():.2g}; "
          f"fixed noise z: mean {z.mean():.4f}, variance {z.var():.4f} ({z.size} values)")
    j = names.index(a.label)
    s, crb = s_all[:, j], sd_all[:, j]
    edges = [float(v) for v in a.snr_edges.split(",")]
    if not a.catalogue:
        snr = np.nanmedian(flux / err, axis=1)
        print(f"{a.label}, noise seed {a.noise_seed}: SNR bin [lo, hi), n, linear 68 % coverage")
        for lo, hi in list(zip(edges[:-1], edges[1:])) + [(edges[0], edges[-1])]:
            k = (snr >= lo) & (snr < hi)
            if k.any():
                print(f"  [{lo:g}, {hi:g})  {k.sum():5d}  {100 * np.mean(np.abs(s[k]) <= 1):5.1f}")
        return
    t = cat[f"true_{a.label}"].to_numpy()
    post = (t >= cat[f"{a.label}_q16"].to_numpy()) & (t <= cat[f"{a.label}_q84"].to_numpy())
    lin = np.abs(s) <= 1
    zp = (t - cat[f"{a.label}_mean"].to_numpy()) / cat[f"{a.label}_sd"].to_numpy()
    ratio = cat[f"{a.label}_sd"].to_numpy() / crb
    snr = cat["snr"].to_numpy()
    sdp, med = cat[f"{a.label}_sd"].to_numpy(), cat[f"{a.label}_q50"].to_numpy()
    pit = cat[f"{a.label}_pit"].to_numpy() if f"{a.label}_pit" in cat else np.full(len(cat), np.nan)
    print(f"68 % coverage by definition: q16-q84 {100 * post.mean():.1f}, |true - mean| <= sd "
          f"{100 * np.mean(np.abs(zp) <= 1):.1f}, |true - median| <= sd {100 * np.mean(np.abs(t - med) <= sdp):.1f}, "
          f"PIT in (0.16, 0.84) {100 * np.mean((pit > 0.16) & (pit < 0.84)):.1f}; PIT 10-bin counts "
          f"{np.histogram(pit[np.isfinite(pit)], 10, (0, 1))[0].tolist()}")
    if "chi2_red_mode" in cat:
        print("mean chi2_red at the mode per SNR bin: " + ", ".join(
            f"({lo:g}, {hi:g}] {cat['chi2_red_mode'][(snr > lo) & (snr <= hi)].mean():.4f}"
            for lo, hi in zip(edges[:-1], edges[1:]) if ((snr > lo) & (snr <= hi)).any()))
    print(f"{a.label}, noise seed {a.noise_seed}: SNR bin, n, posterior 68 %, linear 68 %, discordant (post out & lin in "
          f"/ post in & lin out), corr(z_post, -s), median sd_post / sd_CR")
    for lo, hi in list(zip(edges[:-1], edges[1:])) + [(edges[0], edges[-1])]:
        k = (snr > lo) & (snr <= hi)
        if k.sum() < 3:
            continue
        print(f"  ({lo:g}, {hi:g}]  {k.sum():5d}  {100 * post[k].mean():5.1f}  {100 * lin[k].mean():5.1f}  "
              f"{int((~post & lin)[k].sum()):3d} / {int((post & ~lin)[k].sum()):3d}  "
              f"{np.corrcoef(zp[k], -s[k])[0, 1]:.3f}  {np.median(ratio[k]):.3f}")


if __name__ == "__main__":
    main()
