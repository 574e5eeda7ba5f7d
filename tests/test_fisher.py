"""Fisher information, Schur complement, CRLB, van Trees: against analytic results."""
import numpy as np
import pytest
import torch

from specvit.errors import InputError
from specvit.fisher.information import (SmoothBoxPrior, crlb_bound, fisher_matrices, fisher_matrix, prior_weights, r2_max,
                                        resolve_free, schur_complement, van_trees_bound)
from specvit.observe.forward import ForwardModel, jacobian, jacobian_autograd, jacobian_fd
from specvit.labels import LABEL_NAMES


@pytest.fixture(scope="module")
def small_toy():
    from toymodel import ToyModel

    return ToyModel(wave_min=8400.0, wave_max=8700.0, step=0.5, n_lines=10)


def _random_linear(rng, n=3, p=50, n_lab=5):
    jac = rng.normal(size=(n, p, n_lab)) * np.array([1e-3, 0.5, 0.3, 0.1, 0.2])[:n_lab]  # Teff-like small column
    err = rng.uniform(0.01, 0.05, size=(n, p))
    return jac, err


def test_fisher_matrix_equals_formula(rng):
    jac, err = _random_linear(rng)
    info = fisher_matrix(jac, err, noise_level=2.0)
    for i in range(len(jac)):
        sigma_inv = np.diag(1.0 / (2.0 * err[i]) ** 2)
        np.testing.assert_allclose(info[i], jac[i].T @ sigma_inv @ jac[i], rtol=1e-12)


def test_fisher_matrices_multi_equals_single(rng):
    jac, err = _random_linear(rng)
    errs = np.stack([err, 3 * err, err**0.5])
    multi = fisher_matrices(jac, errs, noise_level=1.5)
    for k in range(3):
        np.testing.assert_allclose(multi[k], fisher_matrix(jac, errs[k], noise_level=1.5), rtol=1e-12)


def test_fisher_masks_bad_pixels(rng):
    jac, err = _random_linear(rng, n=1)
    err2 = err.copy()
    err2[0, :10] = np.nan
    err2[0, 10:20] = 0.0
    np.testing.assert_allclose(fisher_matrix(jac, err2)[0], fisher_matrix(jac[:, 20:], err[:, 20:])[0], rtol=1e-12)


def test_linear_gaussian_model_crlb_is_the_gls_covariance(rng):
    """For y = A θ + noise, the CRLB is the GLS covariance (Aᵀ Σ⁻¹ A)⁻¹: MC of the GLS estimator matches it."""
    jac, err = _random_linear(rng, n=1, p=80, n_lab=3)
    a, e = jac[0], err[0]
    info = fisher_matrix(jac, err)
    cov = np.linalg.inv(info[0])
    b = crlb_bound(info, target=1, free=[0, 1, 2], label_var=1.0)
    np.testing.assert_allclose(b.crlb[0], cov[1, 1], rtol=1e-10)
    theta = np.array([0.3, -0.2, 0.1])
    w = 1 / e**2
    gls = np.linalg.solve(a.T @ (w[:, None] * a), (a * w[:, None]).T)  # (3, P)
    y = (a @ theta)[None] + e[None] * rng.standard_normal((4000, len(e)))
    est = y @ gls.T
    assert abs(np.std(est[:, 1]) / np.sqrt(cov[1, 1]) - 1) < 0.05


def test_schur_complement_is_inverse_covariance_block_and_below_igg(rng):
    jac, err = _random_linear(rng)
    info = fisher_matrix(jac, err)
    i_eff = schur_complement(info, 1, [0, 2, 3, 4])
    for i in range(len(info)):
        np.testing.assert_allclose(i_eff[i], 1.0 / np.linalg.inv(info[i])[1, 1], rtol=1e-8)
    assert np.all(i_eff <= info[:, 1, 1] * (1 + 1e-12))
    # fewer nuisances -> more information
    assert np.all(schur_complement(info, 1, [0, 2]) >= i_eff * (1 - 1e-12))


def test_singular_fisher_is_flagged_not_nan(rng):
    jac, err = _random_linear(rng, n=2)
    jac[:, :, 3] = 0.0  # a_M: no information at all
    info = fisher_matrix(jac, err)
    b = crlb_bound(info, target=3, free=range(5), label_var=0.05, label="a_M")
    assert b.unconstrained.all() and np.all(np.isinf(b.sigma_min)) and np.all(b.r2max == 0)
    # the other labels are unaffected by the information-less nuisance
    b1 = crlb_bound(info, target=1, free=range(5), label_var=1.0)
    b1_ref = crlb_bound(info, target=1, free=[0, 1, 2, 4], label_var=1.0)
    np.testing.assert_allclose(b1.crlb, b1_ref.crlb, rtol=1e-8)
    assert not b1.unconstrained.any() and np.all(np.isfinite(b1.r2max))
    # a label exactly degenerate with another one is unconstrained too
    jac2 = jac.copy()
    jac2[:, :, 4] = 2.0 * jac2[:, :, 1]
    b2 = crlb_bound(fisher_matrix(jac2, err), target=1, free=[0, 1, 2, 4], label_var=1.0)
    assert b2.unconstrained.all() and np.all(b2.r2max == 0)


def test_r2max_clip_and_bad_variance():
    np.testing.assert_allclose(r2_max([0.1, 2.0, np.inf], 1.0), [0.9, 0.0, 0.0])
    with pytest.raises(InputError, match="label_var"):
        r2_max([0.1], 0.0)


def test_resolve_free_and_unknown_label():
    tgt, free = resolve_free(LABEL_NAMES, "logg", "3d")
    assert tgt == 1 and free == [1, 0, 2]
    assert resolve_free(LABEL_NAMES, "C_M", "5d")[1] == [4, 0, 1, 2, 3]
    with pytest.raises(InputError, match="unknown label"):
        resolve_free(LABEL_NAMES, "gravity", "3d")
    with pytest.raises(InputError, match="nuisance"):
        resolve_free(LABEL_NAMES, "log_g", "4d")


def test_smooth_box_prior_information_and_variance():
    pr = SmoothBoxPrior(1.0, 5.0, taper_fraction=0.2)
    x = np.linspace(1.0, 5.0, 400001)[1:-1]
    p = pr.pdf(x)
    np.testing.assert_allclose(np.trapezoid(p, x), 1.0, rtol=1e-6)
    dlogp = np.gradient(np.log(p), x)
    np.testing.assert_allclose(np.trapezoid(dlogp**2 * p, x), pr.fisher_information, rtol=1e-3)
    draws = pr.sample(np.random.default_rng(0), 200_000)
    np.testing.assert_allclose(np.var(draws), pr.variance, rtol=0.02)
    # cos^2 prior of van Trees' textbook example: J = 4 pi^2 / w^2
    np.testing.assert_allclose(SmoothBoxPrior(-1, 1, 0.5).fisher_information, np.pi**2)


def test_van_trees_gaussian_limit_and_ordering(rng):
    """van Trees MSE bound <= mean CRLB (Jensen), -> CRLB at high SNR; and equals the exact
    Bayes MMSE for the linear-Gaussian model with a Gaussian prior (checked via the formula)."""
    jac, err = _random_linear(rng, n=20, p=60)
    pri = {i: SmoothBoxPrior(-1.0, 1.0, 0.5) for i in range(5)}
    for scale in (1e3, 1.0, 1e-3):  # noise scale: low SNR ... high SNR
        info = fisher_matrix(jac, err * scale)
        vt = van_trees_bound(info, target=1, free=range(5), priors=pri)
        mean_crlb = crlb_bound(info, target=1, free=range(5), label_var=1.0).crlb.mean()
        assert vt.mse_bound <= mean_crlb
        assert vt.mse_bound <= 1.0 / pri[1].fisher_information + 1e-15  # never above the prior-only bound
        assert 0 <= vt.r2max <= 1
    info = fisher_matrix(jac, err * 1e-3)
    vt = van_trees_bound(info, target=1, free=range(5), priors=pri)
    i_bar = crlb_bound(info.mean(0), target=1, free=range(5), label_var=1.0).crlb[0]
    np.testing.assert_allclose(vt.mse_bound, i_bar, rtol=1e-4)  # prior negligible at high SNR


def test_van_trees_not_beaten_by_bayes_estimator_but_crlb_is():
    """1-D y = a θ + noise, θ ~ cos² prior on [-1, 1]: the posterior mean (the best estimator,
    computed by quadrature) has MSE below the CRLB at low SNR but never below the van Trees bound."""
    rng = np.random.default_rng(7)
    pr = SmoothBoxPrior(-1.0, 1.0, 0.5)
    grid = np.linspace(-1, 1, 801)
    prior = pr.pdf(grid)
    for sigma in (3.0, 1.0, 0.3, 0.05):
        theta = pr.sample(rng, 4000)
        y = theta + sigma * rng.standard_normal(theta.size)
        like = np.exp(-0.5 * ((y[:, None] - grid[None]) / sigma) ** 2) * prior[None]
        post_mean = (like * grid).sum(1) / like.sum(1)
        mmse = np.mean((post_mean - theta) ** 2)
        info = np.array([[[1.0 / sigma**2]]])
        vt = van_trees_bound(info, target=0, free=[0], priors={0: pr})
        assert mmse >= vt.mse_bound * 0.97  # MC error on 4000 draws
        if sigma >= 1.0:
            assert mmse < sigma**2  # shrinkage "beats" the CRLB...
            assert vt.mse_bound < mmse  # ...but not van Trees


def test_prior_weights_zero_on_edges():
    pts = np.array([[1.0, 3.0], [3.0, 3.0]])
    w = prior_weights(pts, {0: SmoothBoxPrior(1.0, 5.0)})
    assert w[0] == 0 and w[1] > 0


def test_autograd_jacobian_matches_finite_differences(small_toy):
    fwd = ForwardModel(small_toy)
    lab = np.array([[4500.0, 3.0, -0.5, 0.1, 0.0], [5600.0, 1.8, -1.7, 0.3, -0.4]])
    j_ad = jacobian(fwd, lab, method="autograd")
    j_fd = jacobian_fd(fwd.numpy, lab, [0.5, 1e-4, 1e-4, 1e-4, 1e-4])
    scale = np.abs(j_ad).max(axis=(0, 1))
    assert np.all(np.abs(j_ad - j_fd).max(axis=(0, 1)) / scale < 1e-5)
    # the stacked forward-mode pass equals reverse-mode autograd row by row
    x = torch.as_tensor(lab[:1])
    j_rev = torch.autograd.functional.jacobian(lambda t: fwd.mu(t)[0], x)[:, 0, :].numpy()
    np.testing.assert_allclose(jacobian_autograd(fwd.mu, lab[:1])[0], j_rev, rtol=1e-9, atol=1e-12 * scale.max())


def test_fd_steps_stay_in_box(small_toy):
    fwd = ForwardModel(small_toy)
    lab = np.array([[3750.0, 5.0, 0.75, 0.5, -0.75]])  # a corner of the box
    j = jacobian(fwd, lab, method="fd", steps=[50.0, 0.05, 0.05, 0.05, 0.05])
    assert np.all(np.isfinite(j))
    with pytest.raises(InputError, match="steps"):
        jacobian(fwd, lab, method="fd", steps=[0.0, 0.05, 0.05, 0.05, 0.05])
    with pytest.raises(InputError, match="steps"):
        jacobian(fwd, lab, method="fd")
