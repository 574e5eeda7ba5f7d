"""The emulator's fast numpy path (`SpectralEmulator.evaluate`) against exact evaluations of the same weights.

The truth is a float64 numpy evaluation written out here from the module docstring's formulas
(MLP with SiLU, PCA bases, exact Planck function) -- independent of both code paths. The fast
path must be as close to it as the reference torch path (float32 rounding), on the shipped
weights and on small random emulators with and without the Planck baseline; its Planck
interpolation is checked far outside the training box; its result must not depend on the
number of threads or the block size; and autograd through the torch path must still agree
with finite differences of the fast path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specvit.errors import InputError
from specvit.spectra import default_model
from specvit.physics import HC_OVER_K_A_K
from specvit.spectra.emulator import EmulatorNet, SpectralEmulator

PI_2HC2_PER_A = np.pi * 2 * 6.62607015e-27 * 2.99792458e10 ** 2 * 1e-8


def exact_f64(model: SpectralEmulator, labels: np.ndarray) -> dict:
    """float64 evaluation of the emulator's weights (the formulas of the module docstring)."""
    sd = {k: v.double().numpy() for k, v in model.net.state_dict().items()}
    lo, hi = model._lo.double().numpy(), model._hi.double().numpy()
    x = (labels - lo) / (hi - lo) - 0.5
    n_lin = len(model.net.mlp) // 2 + 1
    for i in range(n_lin):
        x = x @ sd[f"mlp.{2 * i}.weight"].T + sd[f"mlp.{2 * i}.bias"]
        if i < n_lin - 1:
            x = x / (1 + np.exp(-x))  # SiLU
    k = model.n_components
    norm = np.clip(model._norm_mean.double().numpy() + x[:, :k] @ model._norm_basis.double().numpy(), 0, None)
    lnc = model._lnc_mean.double().numpy() + x[:, k:] @ model._lnc_basis.double().numpy()
    if model.lncont_baseline == "planck":
        w = model.wave
        lnc = lnc + np.log(PI_2HC2_PER_A / (w * 1e-8) ** 5) - np.log(np.expm1(HC_OVER_K_A_K / (w * labels[:, :1])))
    cont = np.exp(lnc)
    return {"flux": norm * cont, "norm": norm, "continuum": cont}


def random_emulator(baseline: str, seed: int = 0, n_wave: int = 3000, k: int = 20, kc: int = 5) -> SpectralEmulator:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = EmulatorNet(n_labels=5, n_out=k + kc, width=32, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    wave = np.geomspace(7050.0, 8900.0, n_wave)
    bounds = {"T_eff": (3750.0, 6000.0), "log_g": (1.0, 5.0), "M_H": (-2.5, 0.75), "a_M": (-0.25, 0.5),
              "C_M": (-0.75, 0.5)}
    lo, hi = np.array([v[0] for v in bounds.values()]), np.array([v[1] for v in bounds.values()])
    # lines: a mean spectrum with absorption dips, components that move them (some pixels clip at 0)
    norm_mean = 1 - 0.8 * np.exp(-0.5 * ((wave[:, None] - rng.uniform(7050, 8900, 60)) / 0.5) ** 2).max(1)
    # a continuum level far from 0 in ln (like the real ln C - ln pi B_lambda) to exercise float32 range
    lnc_mean = -3.0 + 0.1 * np.sin(wave / 300.0) if baseline == "planck" else 35.0 + 0.1 * np.sin(wave / 300.0)
    return SpectralEmulator(
        wave=wave, resolution=10000.0, label_names=tuple(bounds), bounds=bounds, train_lo=lo - 0.05 * (hi - lo),
        train_hi=hi + 0.05 * (hi - lo), net=net, norm_mean=norm_mean, norm_basis=rng.normal(0, 0.05, (k, n_wave)),
        lncont_mean=lnc_mean, lncont_basis=rng.normal(0, 0.02, (kc, n_wave)), lncont_baseline=baseline)


def draw_labels(model, n, seed):
    rng = np.random.default_rng(seed)
    lo = np.array([model.bounds[k][0] for k in model.label_names])
    hi = np.array([model.bounds[k][1] for k in model.label_names])
    out = np.empty((0, len(lo)))
    while len(out) < n:  # uniform in the box; label sets outside the model's domain (C/O >= 1) redrawn
        x = lo + rng.random((n, len(lo))) * (hi - lo)
        out = np.vstack([out, x[~model.outside_domain(x)]])
    return out[:n]


def rel_err(a, truth):
    """max |a - truth| relative to each spectrum's maximum."""
    return float(np.max(np.abs(a - truth) / np.abs(truth).max(axis=1, keepdims=True)))


@pytest.fixture(scope="module")
def shipped():
    return default_model()


@pytest.mark.parametrize("which", ["shipped", "planck", "none"])
def test_fast_path_matches_float64_truth_as_well_as_the_reference_path(which, shipped):
    model = shipped if which == "shipped" else random_emulator(which, seed=3)
    lab = draw_labels(model, 150, seed=1)
    truth = exact_f64(model, lab)
    for what, method in (("flux", model.flux), ("norm", model.normalized_flux), ("continuum", model.continuum)):
        fast = method(lab)
        ref = method(lab, method="reference")
        assert fast.dtype == np.float64 and fast.shape == (len(lab), model.n_wave)
        e_fast, e_ref = rel_err(fast, truth[what]), rel_err(ref, truth[what])
        # float32 rounding: a few 1e-7 of the spectrum's maximum; never much worse than the old path
        assert e_fast < 3e-6 and e_fast < 3 * e_ref + 1e-6, (what, e_fast, e_ref)
    if which != "shipped":  # random emulators clip some pixels: the clip must be applied
        assert (truth["norm"] == 0).any()
        assert np.all(model.normalized_flux(lab)[truth["norm"] == 0] == 0)


def test_planck_interpolation_far_outside_the_box(shipped):
    """The Chebyshev part of ln pi B_lambda (fast path) against the exact Planck law, 2,000-15,000 K."""
    teff = np.linspace(2000.0, 15000.0, 27)
    lab = np.column_stack([teff, np.full((27, 4), 0.0)])
    lab[:, 1] = 3.0
    tab = shipped._fast_tables()
    with torch.inference_mode():
        _, c, _ = shipped._fast_coeffs(lab, "flux")
    nb = shipped._lnc_basis.shape[0]
    # float64 product of the Planck rows only (the offset row minus mean_c holds ln num - c0)
    ln2 = np.log(2.0)
    rows = tab["ln_basis"].astype(np.float64) * ln2
    offset_num = rows[0] - shipped._lnc_mean.double().numpy()  # ln num(lambda) - c0, float32-stored
    planck_rows = rows[1 + nb:]
    got = offset_num + tab["c0"] - tab["hc_k_u_mid"] / teff[:, None] + c[:, 1 + nb:].astype(np.float64) @ planck_rows
    w = shipped.wave
    exact = np.log(PI_2HC2_PER_A / (w * 1e-8) ** 5) - np.log(np.expm1(HC_OVER_K_A_K / (w * teff[:, None])))
    err = np.abs(got - exact).max()
    assert err < 2e-6, err  # float32 storage of the tables (values up to ~10) and of 1/T; interpolation < 3e-8
    # the interpolation alone, in float64, is far better
    u = 1.0 / w
    nodes = tab["hc_k_nodes"] / HC_OVER_K_A_K
    lag = np.ones((len(nodes), len(w)))
    for j in range(len(nodes)):
        for i in range(len(nodes)):
            if i != j:
                lag[j] *= (u - nodes[i]) / (nodes[j] - nodes[i])
    h = lambda uu: -np.log1p(-np.exp(-HC_OVER_K_A_K * uu / teff[:, None]))  # noqa: E731
    assert np.abs(h(nodes[None, :]) @ lag - h(u[None, :])).max() < 1e-8


def test_output_independent_of_threads_and_dtype(shipped):
    lab = draw_labels(shipped, 700, seed=2)
    base = shipped.evaluate(lab, threads=1)
    for threads in (2, 3):
        np.testing.assert_array_equal(shipped.evaluate(lab, threads=threads), base)
    np.testing.assert_array_equal(shipped.evaluate(lab, dtype=np.float32, threads=2).astype(np.float64), base)
    # a different block size changes only float32 rounding (relative to each spectrum's maximum:
    # single pixels in saturated lines, where norm ~ 0, have large relative rounding errors);
    # both are within 3e-6 of the float64 truth (test above), so within 6e-6 of each other
    assert rel_err(shipped.evaluate(lab, chunk_rows=7), base) < 6e-6
    out = np.empty((len(lab), shipped.n_wave), dtype=np.float32)
    assert shipped.evaluate(lab, dtype="float32", out=out) is out
    # the torch thread setting of the caller is left as it was
    before = torch.get_num_threads()
    shipped.evaluate(lab[:50], threads=2)
    assert torch.get_num_threads() == before


def test_flux_is_norm_times_continuum_and_api_options(shipped):
    lab = draw_labels(shipped, 40, seed=4)
    f, n, c = shipped.flux(lab), shipped.normalized_flux(lab), shipped.continuum(lab)
    np.testing.assert_allclose(f, n * c, rtol=3e-6)
    assert shipped.flux(lab, dtype=np.float32).dtype == np.float32
    assert shipped.flux(lab, method="reference", dtype=np.float32).dtype == np.float32
    assert shipped.evaluate(np.zeros((0, 5))).shape == (0, shipped.n_wave)
    with pytest.raises(InputError, match="method"):
        shipped.flux(lab, method="quick")
    with pytest.raises(InputError, match="what"):
        shipped.evaluate(lab, what="ln")
    with pytest.raises(InputError, match="dtype"):
        shipped.evaluate(lab, dtype=np.float16)
    with pytest.raises(InputError, match="threads"):
        shipped.evaluate(lab, threads=0)
    with pytest.raises(InputError, match="out"):
        shipped.evaluate(lab, out=np.empty((len(lab), shipped.n_wave), dtype=np.float32))


def test_autograd_jacobian_matches_finite_differences_of_the_fast_path(shipped):
    """Exact Jacobian (torch path, autograd) vs central differences of the fast numpy path."""
    x0 = np.array([[4600.0, 2.5, -0.5, 0.1, -0.1]])
    jac = torch.func.jacfwd(lambda t: shipped.flux_torch(t[None])[0])(torch.tensor(x0[0])).double().numpy()
    # the public torch API (reverse mode) gives the same Jacobian
    xt = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(shipped.flux(xt)[0, 5000], xt)[0][0].numpy()
    np.testing.assert_allclose(g, jac[5000], rtol=1e-4, atol=1e-6 * np.abs(jac[5000]).max())
    steps = np.array([2.0, 0.02, 0.02, 0.02, 0.02])
    f0 = shipped.flux(x0)[0]
    for j in range(5):
        xp, xm = x0.copy(), x0.copy()
        xp[0, j] += steps[j]
        xm[0, j] -= steps[j]
        fd = (shipped.flux(xp)[0] - shipped.flux(xm)[0]) / (2 * steps[j])
        col = jac[:, j]
        # O(step^2) truncation + float32 rounding of the flux (~1e-7 f0 / step)
        tol = 0.02 * np.linalg.norm(col) + 3e-6 * np.linalg.norm(f0) / steps[j]
        assert np.linalg.norm(fd - col) < tol, (j, np.linalg.norm(fd - col), np.linalg.norm(col))


# --------------------------------------------------------------------------- the simulate path
def test_banded_resampling_equals_the_sparse_matrix_product(shipped):
    """PFSObserver._resample (dense bands) against scipy's product with the same sparse matrix."""
    from specvit.observe import PFSObserver

    obs = PFSObserver.for_model(shipped)
    rng = np.random.default_rng(7)
    f64 = rng.random((37, shipped.n_wave)) + 0.5
    ref = (obs.resample_matrix @ f64.T).T
    assert rel_err(obs.convolve_resample(f64), ref) < 1e-13
    assert rel_err(obs.convolve_resample(f64.astype(np.float32)).astype(np.float64), ref) < 1e-6
    # every non-zero of the sparse matrix sits inside its band (a dropped column would bias the flux)
    total = sum(band.sum() for *_, band in obs._bands(np.float64))
    assert total == pytest.approx(obs.resample_matrix.sum(), rel=1e-12)
    # a model on another grid (e.g. a BOSZ-like R = 5000 linear grid) goes through the same code
    toy = PFSObserver(model_wave=np.arange(6900.0, 9100.0, 0.5), model_resolution=5000.0 * 1.2)
    g = rng.random((5, len(toy.model_wave)))
    assert rel_err(toy.convolve_resample(g), (toy.resample_matrix @ g.T).T) < 1e-13


def test_median_rows_is_numpy_median_bit_for_bit():
    from specvit.observe.observer import median_rows

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for n in (4096, 4095, 2, 1):
            x = rng.normal(size=(20, n)).astype(dt)
            x[:5] = np.round(x[:5])  # ties
            a, b = np.median(x, axis=1), median_rows(x)
            assert a.dtype == b.dtype and np.array_equal(a, b), (dt, n)


class _Reference:
    """The shipped emulator as the old simulate path saw it: reference evaluation, float64 out."""

    def __init__(self, model):
        self._m = model
        for k in ("wave", "medium", "resolution", "label_names", "bounds", "describe"):
            setattr(self, k, getattr(model, k))

    def flux(self, labels):
        return self._m.flux(labels, method="reference")


def test_simulate_chunk_matches_the_reference_path(shipped):
    """One simulate chunk: fast emulator + banded observer vs reference emulator, within float32 rounding."""
    from specvit.data.simulate import ChunkSimulator, SimulateConfig

    cfg = SimulateConfig(chunk_size=64)
    new = ChunkSimulator(cfg, shipped).run(seed=5, shard=0, chunk=3, start=0, n=64, id_offset=0)
    old = ChunkSimulator(cfg, _Reference(shipped)).run(seed=5, shard=0, chunk=3, start=0, n=64, id_offset=0)
    assert new["flux"].dtype == np.float32
    pd_new, pd_old = new["params"], old["params"]
    np.testing.assert_array_equal(pd_new[["T_eff", "log_g", "mag", "seeing"]], pd_old[["T_eff", "log_g", "mag", "seeing"]])
    for k in ("flux", "error"):
        assert rel_err(new[k].astype(float), old[k].astype(float)) < 5e-6, k
    np.testing.assert_allclose(pd_new["snr"], pd_old["snr"], rtol=5e-6)
    np.testing.assert_allclose(pd_new["norm_factor"], pd_old["norm_factor"], rtol=5e-6)


def test_simulate_default_model_same_file_for_any_workers(tmp_path):
    from specvit.data import open_dataset
    from specvit.data.simulate import SimulateConfig, simulate

    cfg = SimulateConfig(chunk_size=24)
    a = simulate(cfg, tmp_path / "a.h5", n=60, seed=4, workers=1, progress=False)[0]
    b = simulate(cfg, tmp_path / "b.h5", n=60, seed=4, workers=2, progress=False)[0]
    with open_dataset(a) as da, open_dataset(b) as db:
        np.testing.assert_array_equal(da.flux[:], db.flux[:])
        np.testing.assert_array_equal(da.error[:], db.error[:])
        cols = ["T_eff", "snr", "norm_factor"]
        np.testing.assert_array_equal(da.params[cols].to_numpy(), db.params[cols].to_numpy())
