"""The fast ceiling route against the session-1 (reference) route, term by term.

Each fast piece — the emulator's analytic Jacobian, the pixel-major float32 sparse
product and median normalisation, the magnitude error model, the blocked Fisher
contraction, the float32 medians — is compared with the exact path it replaces;
any wrong index, sign or factor shows as a difference far above the tolerances.
No number depends on the shipped emulator weights (random weights of the same
architecture, or the analytic ToyModel).
"""
import warnings

import numpy as np
import pytest
import torch

from specvit.fisher.ceiling import compute_information
from specvit.observe.forward import default_forward
from specvit.observe.noise import MagnitudeNoise, magnitude_errors
from specvit.fisher.information import crlb_bound, fisher_from_weights, fisher_matrices, resolve_free
from specvit.observe.forward import ForwardModel
from specvit.observe.forward import autograd_flux_and_jacobian, model_flux_and_jacobian
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES, outside_domain

MAGS = [18.0, 21.0, 22.5]


def random_emulator(seed=0, step=0.5, n_comp=8, n_cont=4, clip=False):
    """A SpectralEmulator with random weights on a coarse grid covering the PFS MR arm."""
    from specvit.spectra.emulator import EmulatorNet, SpectralEmulator

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    wave = np.arange(7000.0, 8950.0, step)
    net = EmulatorNet(n_labels=5, n_out=n_comp + n_cont, width=32, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(max(p.shape[-1], 1)))
    lo = np.array([DEFAULT_LABEL_BOUNDS[n][0] for n in LABEL_NAMES])
    hi = np.array([DEFAULT_LABEL_BOUNDS[n][1] for n in LABEL_NAMES])
    basis = rng.normal(0, 0.3 if clip else 0.01, (n_comp, len(wave)))  # clip=True: some pixels below 0
    return SpectralEmulator(wave=wave, resolution=20000.0, label_names=LABEL_NAMES,
                            bounds=dict(DEFAULT_LABEL_BOUNDS), train_lo=lo, train_hi=hi, net=net,
                            norm_mean=np.full(len(wave), 0.8), norm_basis=basis, lncont_mean=np.zeros(len(wave)),
                            lncont_basis=rng.normal(0, 0.05, (n_cont, len(wave))))


def toy_model():
    from toymodel import ToyModel

    return ToyModel(wave_min=7050.0, wave_max=8900.0, step=0.5, n_lines=20)


def _points(n, seed=0):
    rng = np.random.default_rng(seed)
    lo = np.array([DEFAULT_LABEL_BOUNDS[k][0] for k in LABEL_NAMES])
    hi = np.array([DEFAULT_LABEL_BOUNDS[k][1] for k in LABEL_NAMES])
    out = np.empty((0, 5))
    while len(out) < n:  # uniform in the box, label sets outside the domain (C/O >= 1) redrawn
        p = lo + (hi - lo) * rng.random((n, 5))
        out = np.vstack([out, p[~outside_domain(p)]])
    return out[:n]


@pytest.fixture(scope="module")
def emu():
    return random_emulator()


@pytest.fixture(scope="module")
def emu_fwd(emu):
    return default_forward(emu)[0]


@pytest.fixture(scope="module")
def toy_fwd():
    return default_forward(toy_model())[0]


@pytest.mark.parametrize("clip", [False, True])
def test_emulator_analytic_jacobian_equals_autograd(clip):
    model = random_emulator(seed=3, clip=clip)
    x = torch.as_tensor(_points(16, seed=1))
    f, df = model.flux_and_jacobian(x)  # (n_model, N), (n_model, N, L)
    f_ad, df_ad = autograd_flux_and_jacobian(model, x)
    if clip:
        assert (f == 0).any()  # the clipped branch is exercised
    np.testing.assert_allclose(f.numpy(), f_ad.numpy(), rtol=1e-6, atol=0)
    scale = df_ad.abs().amax(dim=(0, 1))  # per label
    assert torch.all((df - df_ad.to(df.dtype)).abs().amax(dim=(0, 1)) / scale < 1e-5)


def test_model_flux_and_jacobian_uses_the_closed_form_or_autograd():
    model = random_emulator(seed=4)
    x = torch.as_tensor(_points(4, seed=2))
    f, df = model_flux_and_jacobian(model, x)  # the emulator's own chain rule
    f_cf, df_cf = model.flux_and_jacobian(x)
    assert torch.equal(df, df_cf)

    class NoClosedForm:  # any other differentiable model: forward-mode autograd through its flux
        label_names, bounds = model.label_names, model.bounds

        def flux(self, labels):
            return model.flux(labels)

    f2, df2 = model_flux_and_jacobian(NoClosedForm(), x)
    f_ad, df_ad = autograd_flux_and_jacobian(model, x)
    np.testing.assert_allclose(df2.numpy(), df_ad.numpy(), rtol=0, atol=0)
    assert np.abs(df2.numpy() - df_cf.numpy()).max() <= 1e-5 * np.abs(df_ad.numpy()).max()


@pytest.mark.parametrize("which", ["toy", "emu"])
def test_observed_jacobian_equals_value_and_jacobian(which, toy_fwd, emu_fwd):
    fwd = toy_fwd if which == "toy" else emu_fwd
    pts = _points(6, seed=5)
    oj = fwd.observed_jacobian(pts)
    mu, jac = fwd.value_and_jacobian(pts)
    assert oj.valid.all()
    np.testing.assert_allclose(oj.mu, mu, rtol=1e-6 if which == "emu" else 1e-12)
    ref = jac.transpose(0, 2, 1)
    scale = np.abs(ref).max(axis=(0, 2), keepdims=True)
    tol = 1e-5 if which == "emu" else 1e-10  # the emulator is float32 (sparse product in float32)
    assert np.all(np.abs(oj.jac - ref) / scale < tol)


def test_observed_jacobian_fd_route_equals_reference(toy_fwd):
    pts = _points(3, seed=6)
    steps = [5.0, 0.01, 0.01, 0.01, 0.01]
    oj = toy_fwd.observed_jacobian(pts, method="fd", steps=steps)
    mu, jac = toy_fwd.value_and_jacobian(pts, method="fd", steps=steps)
    np.testing.assert_allclose(oj.jac, jac.transpose(0, 2, 1), rtol=1e-9, atol=1e-12 * np.abs(jac).max())


def test_magnitude_noise_equals_the_observer(toy_fwd):
    pts = _points(4, seed=7)
    oj = toy_fwd.observed_jacobian(pts)
    var = MagnitudeNoise(toy_fwd.observer, MAGS).variance(oj.model_flux, oj.mu, oj.median)
    mu, err = magnitude_errors(toy_fwd.observer, toy_fwd.model_flux(pts), MAGS)
    np.testing.assert_allclose(np.sqrt(var), err, rtol=1e-10)
    np.testing.assert_allclose(oj.mu, mu, rtol=1e-10)


def test_fisher_from_weights_equals_fisher_matrices(rng):
    jac = rng.normal(size=(37, 50, 5)) * np.array([1e-3, 0.5, 0.3, 0.1, 0.2])
    err = rng.uniform(0.01, 0.05, size=(3, 37, 50))
    ref = fisher_matrices(jac, err)
    fast = fisher_from_weights(np.ascontiguousarray(jac.transpose(0, 2, 1)), 1.0 / err**2, block=8)
    np.testing.assert_allclose(fast, ref, rtol=1e-12)


@pytest.mark.parametrize("which", ["toy", "emu"])
@pytest.mark.parametrize("noise_level", [1.0, 1.7])
def test_compute_information_fast_equals_reference(which, noise_level, toy_fwd, emu_fwd):
    fwd = toy_fwd if which == "toy" else emu_fwd
    pts = _points(10, seed=8)
    fast = compute_information(fwd, pts, MAGS, noise_level=noise_level, chunk_size=4)
    ref = compute_information(fwd, pts, MAGS, noise_level=noise_level, chunk_size=4, reference=True)
    np.testing.assert_array_equal(fast.points, ref.points)
    # medians selected in float32 from spectra evaluated in float32 (a sum over ~70 PCA components):
    # relative rounding of a few 1e-7 per pixel, up to ~1e-6 in the median (1.04e-6 seen with emulator v2)
    np.testing.assert_allclose(fast.snr, ref.snr, rtol=3e-6)
    np.testing.assert_allclose(fast.median_error, ref.median_error, rtol=3e-6)
    rtol = 1e-4 if which == "emu" else 1e-8
    for nuisance in ("3d", "5d"):
        for label in ("log_g", "T_eff", "M_H"):
            t, free = resolve_free(fwd.label_names, label, nuisance)
            a = crlb_bound(fast.info.reshape(-1, 5, 5), target=t, free=free, label_var=1.0).crlb
            b = crlb_bound(ref.info.reshape(-1, 5, 5), target=t, free=free, label_var=1.0).crlb
            np.testing.assert_allclose(a, b, rtol=rtol)


def test_fast_route_drops_invalid_points_like_the_reference(toy_fwd):
    from toymodel import HoleyModel

    holey = ForwardModel(HoleyModel(toy_fwd.model), toy_fwd.observer)
    pts = np.array([[4500.0, 4.8, 0.0, 0.0, 0.0], [4500.0, 2.0, 0.0, 0.0, 0.0], [4500.0, 4.9, 0.0, 0.0, 0.0],
                    [5000.0, 3.0, -1.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = compute_information(holey, pts, [20.0], chunk_size=2)
        ref = compute_information(holey, pts, [20.0], reference=True)
    assert fast.n_dropped == ref.n_dropped == 2
    np.testing.assert_array_equal(fast.points, ref.points)
    np.testing.assert_allclose(fast.info, ref.info, rtol=1e-8)


def test_setup_with_redshift_uses_the_reference_route(toy_fwd):
    pts = _points(2, seed=9)
    a = compute_information(toy_fwd, pts, [20.0], setup={"redshift": 1e-4})
    b = compute_information(toy_fwd, pts, [20.0], setup={"redshift": 1e-4}, reference=True)
    np.testing.assert_array_equal(a.info, b.info)
    assert not MagnitudeNoise.applies({"redshift": 1e-4}) and MagnitudeNoise.applies({"seeing": 0.8})


def test_schur_decay_by_nuisance_finds_the_absorbing_label(rng):
    """Target column 0; nuisance 1 has disjoint pixel support (orthogonal), nuisance 2 overlaps the target."""
    from specvit.fisher.ceiling import summarise
    from specvit.fisher.information import fisher_matrix

    n, p = 6, 60
    jac = np.zeros((n, p, 5))
    jac[:, :30, 1] = rng.normal(size=(n, 30))  # log g (target)
    jac[:, 30:, 0] = rng.normal(size=(n, 30))  # T_eff: orthogonal to log g
    jac[:, :30, 2] = 0.6 * jac[:, :30, 1] + rng.normal(size=(n, 30))  # M_H: correlated with log g
    jac[:, :, 3] = rng.normal(size=(n, p))
    jac[:, :, 4] = rng.normal(size=(n, p))
    info = fisher_matrix(jac, np.full((n, p), 0.1))
    pts = np.tile([4500.0, 2.5, -1.0, 0.0, 0.0], (n, 1))
    out = summarise(info, pts, np.ones(n), label_names=LABEL_NAMES, bounds=DEFAULT_LABEL_BOUNDS, label="log_g",
                    nuisance="3d", label_var=1.0, bound="crlb")
    single, all_but = out["schur_decay_single_median"], out["schur_decay_all_but_median"]
    assert single["T_eff"] == pytest.approx(1.0, abs=1e-12)  # orthogonal: costs nothing
    assert single["M_H"] < 0.9
    assert all_but["M_H"] == pytest.approx(1.0, abs=1e-12)  # without M_H only the orthogonal T_eff is left
    assert all_but["T_eff"] == pytest.approx(out["schur_decay_median"], rel=1e-12)


def test_load_spectral_model_reads_an_emulator_npz(tmp_path):
    from specvit.spectra import load_spectral_model

    model = random_emulator(seed=5)
    path = tmp_path / "emu.npz"
    model.save(path)
    loaded = load_spectral_model(str(path))
    x = _points(3, seed=10)
    np.testing.assert_allclose(loaded.flux(x), model.flux(x), rtol=1e-6)
