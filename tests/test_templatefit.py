"""Template fit: LM and grid modes recover labels; Laplace errors equal the Fisher bound; dataset runner."""
import numpy as np
import pandas as pd
import pytest

from specvit.baselines.templatefit import (TemplateFitConfig, fit_grid, fit_lm, grid_nodes, legendre_basis,
                                           run_templatefit)
from specvit.config import load_config
from specvit.errors import ConfigError, InputError
from specvit.fisher.information import crlb_bound, fisher_matrix
from specvit.observe.forward import ForwardModel, jacobian


@pytest.fixture(scope="module")
def fwd():
    from toymodel import ToyModel

    return ForwardModel(ToyModel(wave_min=8400.0, wave_max=8700.0, step=0.5, n_lines=10))


def _truth(fwd, n, rng):
    lo, hi = fwd.lower, fwd.upper
    return lo + (hi - lo) * rng.uniform(0.15, 0.85, (n, len(lo)))


def test_legendre_basis_orthogonal():
    b = legendre_basis(2001, 3).numpy()
    gram = b.T @ b / len(b)
    np.testing.assert_allclose(gram, np.diag(1 / (2 * np.arange(4) + 1)), atol=2e-3)
    assert legendre_basis(10, -1).shape == (10, 0)


def test_lm_recovers_noiseless_labels_through_a_flux_distortion(fwd):
    rng = np.random.default_rng(3)
    lab = _truth(fwd, 6, rng)
    mu = fwd.numpy(lab)
    x = np.linspace(-1, 1, mu.shape[1])
    y = mu * (1.02 + 0.04 * x - 0.03 * x**2)  # a degree-2 multiplicative distortion
    res = fit_lm(fwd, y, np.full_like(y, 0.01), degree=2, n_starts=3, rng=rng, max_iter=40)
    scale = fwd.upper - fwd.lower
    assert np.all(np.abs(res.labels - lab) / scale < 1e-5)
    assert np.all(res.chi2 < 1e-6)
    assert np.all(np.isfinite(res.sigma)) and not res.at_bound.any()


def test_lm_fixed_labels_and_laplace_sigma_is_the_crlb(fwd):
    rng = np.random.default_rng(4)
    lab = _truth(fwd, 2, rng)
    lab[:, 3:] = 0.0
    mu = fwd.numpy(lab)
    err = np.full_like(mu, 0.005)
    res = fit_lm(fwd, mu, err, free=["T_eff", "log_g", "M_H"], fixed_values={"a_M": 0.0, "C_M": 0.0}, degree=-1,
                 n_starts=2, rng=rng)
    assert np.all(np.isnan(res.sigma[:, 3:])) and np.all(res.labels[:, 3:] == 0)
    info = fisher_matrix(jacobian(fwd, lab), err)
    crlb = crlb_bound(info, target=1, free=[0, 1, 2], label_var=1.0)
    np.testing.assert_allclose(res.sigma[:, 1], crlb.sigma_min, rtol=1e-4)


def test_grid_mode_exact_on_nodes_and_refines_off_nodes(fwd):
    fixed = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    steps = {"T_eff": 250.0, "log_g": 0.5, "M_H": 0.25}
    axes, nodes = grid_nodes(fwd, ["T_eff", "log_g", "M_H"], steps, fixed)
    assert len(nodes) == 10 * 9 * 14
    on = nodes[[17, 500, 901]]
    mu = fwd.numpy(on)
    res = fit_grid(fwd, mu * 1.1, np.full_like(mu, 0.01), degree=1, steps=steps, refine=False)
    np.testing.assert_allclose(res.labels, on, atol=1e-9)
    res = fit_grid(fwd, mu * 1.1, np.full_like(mu, 0.01), degree=1, steps=steps, refine=True)
    assert np.all(np.abs(res.labels - on)[:, :3] <= 0.1 * np.array([250, 0.5, 0.25]))  # asymmetric chi2 only
    off = on + np.array([60.0, 0.12, 0.05, 0, 0])
    mu = fwd.numpy(off)
    coarse = fit_grid(fwd, mu, np.full_like(mu, 0.01), degree=1, steps=steps, refine=False)
    fine = fit_grid(fwd, mu, np.full_like(mu, 0.01), degree=1, steps=steps, refine=True)
    err_c = np.abs(coarse.labels - off)[:, :3] / np.array([250, 0.5, 0.25])
    err_f = np.abs(fine.labels - off)[:, :3] / np.array([250, 0.5, 0.25])
    assert err_f.sum() < err_c.sum()
    assert np.all(np.isfinite(fine.sigma[:, :3]))


def test_bad_input(fwd):
    y = np.ones((2, len(fwd.model.wave)))
    with pytest.raises(InputError, match="vsini"):
        fit_lm(fwd, y, y, free=["T_eff", "log_g", "vsini"], n_starts=1)
    y[0, 3] = np.nan
    with pytest.raises(InputError, match="non-finite flux"):
        fit_lm(fwd, y, np.ones_like(y), n_starts=1)
    with pytest.raises(InputError, match="Generator"):
        fit_lm(fwd, np.ones((1, y.shape[1])), np.ones((1, y.shape[1])), n_starts=3)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(TemplateFitConfig, overrides=["n_start=3"])
    with pytest.raises(InputError, match="unknown label"):
        TemplateFitConfig(free_labels=["gravity"])
    with pytest.raises(InputError, match="input"):
        run_templatefit(TemplateFitConfig(), forward=fwd)


def test_run_templatefit_on_a_dataset(fwd, tmp_path):
    from specvit.data import write_dataset

    rng = np.random.default_rng(5)
    lab = _truth(fwd, 5, rng)
    flux = fwd.numpy(lab)
    err = np.full_like(flux, 0.002)
    params = pd.DataFrame(lab, columns=list(fwd.label_names))
    params["snr"] = np.median(flux / err, 1)
    path = write_dataset(tmp_path / "d.h5", wave=fwd.model.wave, flux=flux, error=err, params=params,
                         dtype=np.float64)
    cfg = load_config(TemplateFitConfig, overrides=[f"input={path}", "n_starts=2", "batch_size=3",
                                                    "flux_correction_degree=1", "use_observer=false"])
    df = run_templatefit(cfg, forward=fwd)
    assert list(df["row"]) == [0, 1, 2, 3, 4]
    for name in ("log_g", "log_g_err", "chi2", "chi2_red", "snr", "true_log_g", "at_bound"):
        assert name in df.columns
    # noise at SNR ~250: the fitted log g is within 5 sigma of the truth
    assert np.all(np.abs(df["log_g"] - df["true_log_g"]) < 5 * df["log_g_err"])
    # a dataset on another wavelength grid is a clear error
    bad = write_dataset(tmp_path / "bad.h5", wave=fwd.model.wave[:-1], flux=flux[:, :-1], error=err[:, :-1],
                        params=params, dtype=np.float64)
    with pytest.raises(InputError, match="pixels"):
        run_templatefit(load_config(TemplateFitConfig, overrides=[f"input={bad}"]), forward=fwd)
    # reproducible: same seeds, same numbers
    df2 = run_templatefit(cfg, forward=fwd)
    np.testing.assert_array_equal(df["log_g"].to_numpy(), df2["log_g"].to_numpy())
