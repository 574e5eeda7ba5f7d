"""Noise draws: fixed noise is a function of (seed, row) only; fresh noise follows the generator."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from specvit.observe.noise import fixed_noisy_flux, fixed_normal, noisy_flux
from specvit.errors import InputError


def test_fixed_normal_is_standard_normal():
    z = fixed_normal(np.arange(200), 1000, seed=3, dtype=np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # KS against N(0, 1) on 200k values: a biased/correlated generator fails this
    assert stats.kstest(z.ravel()[::2], "norm").pvalue > 1e-3
    assert stats.kstest(z.ravel()[1::2], "norm").pvalue > 1e-3
    # neighbouring pixels (the two Box-Muller outputs) and neighbouring rows are uncorrelated
    assert abs(np.corrcoef(z[:, 0::2].ravel(), z[:, 1::2].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 0.01


def test_fixed_normal_depends_only_on_seed_and_row():
    a = fixed_normal(np.arange(50), 33, seed=11)
    b = fixed_normal([40, 3, 3, 7], 33, seed=11)
    np.testing.assert_array_equal(b, a[[40, 3, 3, 7]])
    c = fixed_normal(np.arange(50), 33, seed=12)
    assert abs(np.corrcoef(a.ravel(), c.ravel())[0, 1]) < 0.05
    # prefix of a longer spectrum: pixel j is pixel j whatever n_pix is (pairs of pixels share a draw)
    np.testing.assert_array_equal(fixed_normal([5], 34, seed=11)[:, :33], a[[5]])


def test_fixed_noisy_flux_batch_invariant_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    flux = rng.uniform(0.2, 1, (20, 40)).astype(np.float32)
    err = rng.uniform(0.01, 0.1, (20, 40)).astype(np.float32)
    full = fixed_noisy_flux(flux, err, 2.0, np.arange(20), seed=5)
    part = fixed_noisy_flux(flux[[9, 2]], err[[9, 2]], 2.0, [9, 2], seed=5)
    np.testing.assert_allclose(part, full[[9, 2]], rtol=0, atol=1e-6)
    np.testing.assert_allclose((full - flux) / err, 2.0 * fixed_normal(np.arange(20), 40, 5), atol=1e-4)
    t = fixed_noisy_flux(torch.from_numpy(flux), torch.from_numpy(err), 2.0, np.arange(20), seed=5)
    np.testing.assert_allclose(t.numpy(), full, atol=1e-6)


def test_noisy_flux_fresh_and_reproducible():
    torch = pytest.importorskip("torch")
    flux = np.full((500, 100), 0.5)
    err = np.full((500, 100), 0.1)
    a = noisy_flux(flux, err, 1.5, np.random.default_rng(1))
    b = noisy_flux(flux, err, 1.5, np.random.default_rng(1))
    c = noisy_flux(flux, err, 1.5, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert abs((a - flux).std() - 0.15) < 0.003
    per_row = noisy_flux(flux, err, np.r_[np.zeros(250), np.ones(250)], np.random.default_rng(1))
    assert np.all(per_row[:250] == 0.5) and abs((per_row[250:] - 0.5).std() - 0.1) < 0.003
    g = torch.Generator().manual_seed(0)
    t = noisy_flux(torch.full((500, 100), 0.5), torch.full((500, 100), 0.1), 1.0, g)
    assert abs(float((t - 0.5).std()) - 0.1) < 0.003
    with pytest.raises(InputError, match="Generator"):
        noisy_flux(flux, err, 1.0, None)
    with pytest.raises(InputError, match="noise_level"):
        noisy_flux(flux, err, -1.0, np.random.default_rng(0))
    with pytest.raises(InputError, match="shape"):
        noisy_flux(flux, err[:, :5], 1.0, np.random.default_rng(0))
