"""The forward model (specvit.observe.forward): torch vs numpy, gradients, dtype/device, noise, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from specvit.errors import InputError, LabelRangeError
from specvit.observe import calibration_conditions, draw_conditions
from specvit.observe.config import ObservingConfig
from specvit.observe.forward import ForwardModel, TorchObservation


@pytest.fixture(scope="module")
def emu_fwd():
    from specvit.spectra import default_model

    return ForwardModel.for_model(default_model())


@pytest.fixture(scope="module")
def toy_fwd(toy_model):
    return ForwardModel.for_model(toy_model)


def _labels(fwd, n, seed=0, margin=1e-3):
    """Uniform in the model's box and domain (C/O < 1 for the emulator)."""
    from specvit.labels import uniform_in_domain

    return uniform_in_domain(np.random.default_rng(seed), n, fwd.bounds, fwd.label_names, margin=margin,
                             max_c_to_o=getattr(fwd.model, "max_c_to_o", None))


def _conditions(n, seed=1, **fixed):
    """Drawn observing conditions with Doppler shifts, reddening and the Moon up (every term of the chain)."""
    rng = np.random.default_rng(seed)
    c = draw_conditions(ObservingConfig(), n, rng)
    c["redshift"] = rng.uniform(-1e-3, 1e-3, n)
    c["ext"] = rng.uniform(0.0, 0.3, n)
    c["moon_zenith_angle"] = 40.0
    c["moon_phase"] = rng.uniform(0.2, 1.0, n)
    for k, v in fixed.items():
        c[k] = v
    return c


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 2e-6), (torch.float32, 2e-5)])
def test_torch_route_equals_numpy_route(emu_fwd, dtype, rtol):
    lab = _labels(emu_fwd, 64)
    cond = _conditions(64)
    ref = emu_fwd.observe(lab, cond, dtype=np.float64)
    obs = emu_fwd.observe_torch(torch.as_tensor(lab, dtype=dtype), cond)
    assert isinstance(obs, TorchObservation)
    assert obs.flux.dtype == dtype and obs.error.dtype == dtype and obs.flux.shape == ref.flux.shape
    for name in ("flux", "error"):
        a, b = getattr(obs, name).numpy(), getattr(ref, name)
        assert np.abs(a - b).max() / np.abs(b).max() < rtol, name
    np.testing.assert_allclose(obs.snr.numpy(), ref.snr, rtol=rtol)
    np.testing.assert_allclose(obs.norm_factor.numpy(), ref.norm_factor, rtol=10 * rtol)
    np.testing.assert_allclose(obs.mag_model.numpy(), ref.mag_model, rtol=1e-6)


def test_torch_route_equals_numpy_route_for_a_non_emulator_model(toy_fwd):
    lab = _labels(toy_fwd, 8, seed=3)
    cond = _conditions(8, seed=4)
    ref = toy_fwd.observe(lab, cond, dtype=np.float64)
    obs = toy_fwd.observe_torch(torch.as_tensor(lab), cond)
    np.testing.assert_allclose(obs.flux.numpy(), ref.flux, rtol=1e-9)
    np.testing.assert_allclose(obs.error.numpy(), ref.error, rtol=1e-9)


def test_snr_follows_the_magnitude(emu_fwd):
    """Physics: 1 mag fainter -> less signal; at the bright end (object-dominated) SNR ~ 10^(-0.2 dm)."""
    lab = np.repeat(_labels(emu_fwd, 1, seed=5), 3, 0)
    cond = calibration_conditions([16.0, 17.0, 22.0], 1)
    snr = emu_fwd.observe_torch(torch.as_tensor(lab), cond).snr.numpy()
    assert snr[0] > snr[1] > snr[2]
    assert abs(snr[1] / snr[0] - 10 ** -0.2) < 0.03


def test_mu_and_jacobian_equal_central_differences(toy_fwd):
    lab = _labels(toy_fwd, 3, seed=6, margin=0.2)
    x = torch.as_tensor(lab)
    mu, jac = toy_fwd.mu_and_jacobian(x)
    assert mu.shape == (3, 4096) and jac.shape == (3, 5, 4096) and jac.dtype == torch.float64
    steps = np.array([1e-2, 1e-5, 1e-5, 1e-5, 1e-5])  # small: the median pixel must not change within a step
    for j, h in enumerate(steps):
        dp, dm = lab.copy(), lab.copy()
        dp[:, j] += h
        dm[:, j] -= h
        with torch.no_grad():
            fd = (toy_fwd.mu(torch.as_tensor(dp)) - toy_fwd.mu(torch.as_tensor(dm))) / (2 * h)
        scale = fd.abs().max()
        assert (jac[:, j] - fd).abs().max() / scale < 1e-4, toy_fwd.label_names[j]


def test_mu_and_jacobian_free_subset(toy_fwd):
    x = torch.as_tensor(_labels(toy_fwd, 2, seed=7))
    _, full = toy_fwd.mu_and_jacobian(x)
    _, sub = toy_fwd.mu_and_jacobian(x, free=["log_g", "T_eff"])
    assert torch.equal(sub[:, 0], full[:, 1]) and torch.equal(sub[:, 1], full[:, 0])
    with pytest.raises(InputError, match="free"):
        toy_fwd.mu_and_jacobian(x, free=["gravity"])


def test_emulator_jacobian_through_the_observer_equals_autograd(emu_fwd):
    """The fast numpy route of the ceiling (chain rule + sparse product) against torch autograd of mu."""
    lab = _labels(emu_fwd, 3, seed=8)
    oj = emu_fwd.observed_jacobian(lab)
    mu, jac = emu_fwd.mu_and_jacobian(torch.as_tensor(lab))
    np.testing.assert_allclose(oj.mu, mu.numpy(), rtol=1e-5)
    scale = np.abs(oj.jac).max(axis=(0, 2), keepdims=True)
    assert np.all(np.abs(oj.jac - jac.numpy()) / scale < 1e-4)


def test_dtype_and_device_follow_the_inputs(toy_fwd):
    lab = _labels(toy_fwd, 2, seed=9)
    cond = _conditions(2)
    for dt in (torch.float32, torch.float64):
        o = toy_fwd.observe_torch(torch.as_tensor(lab, dtype=dt), cond)
        assert all(t.dtype == dt and t.device.type == "cpu" for t in (o.flux, o.error, o.snr))
    with pytest.raises(InputError, match="float32 or float64"):
        toy_fwd.observe_torch(torch.as_tensor(lab, dtype=torch.float16), cond)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_route_runs_on_the_gpu(emu_fwd):  # pragma: no cover - runs where a GPU is
    lab = torch.as_tensor(_labels(emu_fwd, 16), device="cuda", dtype=torch.float32)
    o = emu_fwd.observe_torch(lab, _conditions(16))
    assert o.flux.device.type == "cuda"
    ref = emu_fwd.observe_torch(lab.cpu(), _conditions(16))
    assert (o.flux.cpu() - ref.flux).abs().max() < 1e-4


def test_noisy_draws_are_seeded_and_have_the_model_error(toy_fwd):
    lab = np.repeat(_labels(toy_fwd, 1, seed=10), 200, 0)
    obs = toy_fwd.observe_torch(torch.as_tensor(lab), calibration_conditions([21.0], 200))
    a = toy_fwd.sample(obs, 2.0, torch.Generator().manual_seed(5))
    b = toy_fwd.sample(obs, 2.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    z = ((a - obs.flux) / (2.0 * obs.error)).numpy()
    assert abs(z.std() - 1.0) < 0.01 and abs(z.mean()) < 0.01
    with pytest.raises(InputError, match="Generator"):
        toy_fwd.sample(obs, 1.0, np.random.default_rng(0))


def test_bad_labels_get_clear_errors(emu_fwd):
    cond = _conditions(2)
    with pytest.raises(InputError, match=r"shape \(N, 5\)"):
        emu_fwd.observe_torch(torch.zeros(2, 4, dtype=torch.float64), cond)
    lab = _labels(emu_fwd, 2)
    lab[1, 1] = np.nan
    with pytest.raises(InputError, match="non-finite label in row 1") as e:
        emu_fwd.observe_torch(torch.as_tensor(lab), cond)
    assert "log_g" in str(e.value)
    lab = _labels(emu_fwd, 2)
    lab[0, 0] = 99.0
    with pytest.raises(LabelRangeError, match="outside the model's box") as e:
        emu_fwd.observe(lab, cond)
    assert "T_eff" in str(e.value) and "99" in str(e.value)
    with pytest.raises(LabelRangeError):
        emu_fwd.mu_and_jacobian(torch.as_tensor(lab))


def test_bad_conditions_get_clear_errors(emu_fwd):
    lab = torch.as_tensor(_labels(emu_fwd, 2))
    with pytest.raises(InputError):
        emu_fwd.observe_torch(lab, _conditions(3))  # 3 rows of conditions for 2 spectra
    cond = _conditions(2)
    cond.loc[0, "seeing"] = np.nan
    with pytest.raises(InputError, match="seeing"):
        emu_fwd.observe_torch(lab, cond)
    with pytest.raises(InputError):
        emu_fwd.observe_torch(lab, pd.DataFrame({"mag": [20.0, 21.0]}))


def test_simulate_goes_through_the_forward_model(tmp_path):
    """A simulate chunk equals ForwardModel.observe of the same labels and conditions, bit for bit."""
    from specvit.data.simulate import ChunkSimulator, SimulateConfig

    sim = ChunkSimulator(SimulateConfig())
    out = sim.run(seed=3, shard=0, chunk=0, start=0, n=16, id_offset=0)
    p = out["params"]
    lab = p[list(sim.forward.label_names)].to_numpy()
    cond = p[[c for c in calibration_conditions([20.0], 1).columns]].copy()
    cond["mag"] = p["mag"].to_numpy()
    ref = sim.forward.observe(lab, cond, dtype=np.float32)
    np.testing.assert_array_equal(out["flux"], ref.flux)
    np.testing.assert_array_equal(out["error"], ref.error)


def test_fd_stencils_may_cross_the_domain_edge(emu_fwd):
    """A point just inside C/O < 1 with paper-sized FD steps: the stencil uses the model's continuation."""
    from specvit.labels import c_to_o

    lab = np.array([[4500.0, 2.5, 0.0, 0.0, 0.265]])
    assert c_to_o(lab, emu_fwd.label_names)[0] < 1.0
    plus = lab.copy()
    plus[0, 4] += 0.25
    with pytest.raises(LabelRangeError):
        emu_fwd.model_flux(plus)
    oj = emu_fwd.observed_jacobian(lab, method="fd", steps=[250.0, 0.5, 0.25, 0.25, 0.25])
    assert oj.valid.all() and np.isfinite(oj.jac).all()


@pytest.mark.parametrize("n", [4096, 4095, 2])
def test_median_is_numpys_on_both_paths(n):
    """The forward model's median (CPU: numpy partition; other devices: torch selection, exercised here on a
    3-D input) equals np.median bit for bit, ties included."""
    from specvit.observe.forward import _median_torch

    g = torch.Generator().manual_seed(n)
    x = torch.rand(6, n, generator=g)
    x[0] = 0.25  # all equal
    x[1, : n // 2 + 1] = 0.5  # the lower middle value fills both middle ranks
    ref = torch.from_numpy(np.median(x.numpy(), axis=1))
    assert torch.equal(_median_torch(x), ref)  # the CPU path
    assert torch.equal(_median_torch(x[None])[0], ref)  # the torch path (used on GPUs)
