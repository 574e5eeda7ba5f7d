"""The ceiling through the PFS observer: per-magnitude errors, summaries, SNR bins, CLI JSON."""
import argparse
import json

import numpy as np
import pytest

from specvit.errors import InputError
from specvit.fisher.ceiling import ceiling_by_magnitude, ceiling_by_snr_bin, compute_information
from specvit.observe.forward import default_forward
from specvit.fisher.points import make_points
from specvit.observe.noise import magnitude_errors

MAGS = [18.0, 20.0, 22.5]


def small_model():
    """A cheap ToyModel covering the PFS MR arm (used by the CLI test as MODULE:FACTORY)."""
    from toymodel import ToyModel

    return ToyModel(wave_min=7050.0, wave_max=8900.0, step=0.5, n_lines=20)


@pytest.fixture(scope="module")
def fwd():
    return default_forward(small_model())[0]


@pytest.fixture(scope="module")
def iset(fwd):
    pts = make_points(fwd, "grid", free=["T_eff", "log_g", "M_H"], n_points=12, rng=np.random.default_rng(0))
    return compute_information(fwd, pts, MAGS)


def test_magnitude_errors_equal_the_observer(fwd):
    from specvit.observe import calibration_conditions

    pts = np.array([[4000.0, 1.5, -1.0, 0.0, 0.0], [5800.0, 4.5, 0.2, 0.0, 0.0]])
    flux = fwd.model_flux(pts)
    mu, err = magnitude_errors(fwd.observer, flux, [18.0, 21.0, 23.0])
    for k, m in enumerate([18.0, 21.0, 23.0]):
        o = fwd.observer.observe(flux, calibration_conditions([m], 2))
        np.testing.assert_allclose(err[k], o.error, rtol=1e-10)
        np.testing.assert_allclose(mu, o.flux, rtol=1e-12)
    np.testing.assert_allclose(fwd.numpy(pts), mu, rtol=1e-10)  # torch path == observe path


def test_grid_points_are_the_bosz_nodes(fwd):
    assert len(make_points(fwd, "grid", free=["T_eff", "log_g", "M_H"])) == 10 * 9 * 14
    pts5 = make_points(fwd, "grid", free=["T_eff", "log_g", "M_H", "a_M", "C_M"])
    assert len(pts5) == 30240
    assert np.var(make_points(fwd, "grid", free=["T_eff", "log_g", "M_H"])[:, 1]) == pytest.approx(1.6667, abs=1e-4)


def test_ceiling_per_magnitude(iset):
    table = ceiling_by_magnitude(iset, label="log_g", nuisance="3d", bound="both")
    assert list(table) == ["18", "20", "22.5"]
    snr = [table[k]["snr"] for k in table]
    sig = [table[k]["sigma_min_median"] for k in table]
    assert snr[0] > snr[1] > snr[2] and sig[0] < sig[1] < sig[2]
    for v in table.values():
        assert 0 <= v["r2max_p10"] <= v["r2max_median"] <= v["r2max_p90"] <= 1
        assert 0 < v["schur_decay_median"] <= 1
        assert v["mse_bayes"] <= v["mse_crlb_prior"]  # van Trees below the prior-averaged CRLB
        assert v["r2max_bayes"] >= v["r2max_crlb_prior"]
    # the high-SNR limit: van Trees approaches the prior-averaged CRLB when the data dominate
    hi = table["18"]
    assert hi["mse_bayes"] / hi["mse_crlb_prior"] > 0.5
    # 5d marginalises more: less information
    t5 = ceiling_by_magnitude(iset, label="log_g", nuisance="5d", bound="crlb")
    assert t5["18"]["sigma_min_median"] >= table["18"]["sigma_min_median"]


def test_any_label_and_unknown_label(iset):
    t = ceiling_by_magnitude(iset, label="teff", nuisance="3d", bound="crlb")
    assert t["18"]["label"] == "T_eff" and t["18"]["sigma_min_median"] > 0
    with pytest.raises(InputError, match="unknown label"):
        ceiling_by_magnitude(iset, label="vsini", nuisance="3d")


def test_snr_bins_and_empty_bin_error(iset):
    table = ceiling_by_snr_bin(iset, label="log_g", nuisance="3d", bound="crlb")
    assert "empty_bins" in table  # 12 points at 3 magnitudes cannot fill all 8 bins
    filled = [k for k in table if k != "empty_bins"]
    assert filled and all(table[k]["n_points"] > 0 for k in filled)
    with pytest.raises(InputError, match="empty SNR bin"):
        ceiling_by_snr_bin(iset, label="log_g", nuisance="3d", require_all=True)


def test_cli_json(capsys):
    from specvit import cli as top
    from specvit.fisher import cli

    assert "specvit.fisher.cli" in top.COMMAND_MODULES
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["fisher", "--mags", "18", "22.5", "--nuisance", "5d", "--n-points", "6", "--model",
                              "test_fisher_ceiling:small_model", "--bound", "both", "--seed", "3", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out) == ["18", "22.5"]
    for key in ("snr", "r2max_median", "r2max_p10", "r2max_p90", "sigma_min_median", "schur_decay_median",
                "r2max_bayes", "sigma_bayes"):
        assert isinstance(out["18"][key], float)
    assert out["18"]["n_points"] == 6 and out["18"]["seed"] == 3
    bad = parser.parse_args(["fisher", "--label", "vsini", "--model", "test_fisher_ceiling:small_model"])
    with pytest.raises(InputError, match="vsini"):
        bad.func(bad)


def test_fast_observer_jacobian_equals_autograd_through_the_observer(fwd):
    """value_and_jacobian (sparse R + analytic median derivative) == forward-mode AD through normalised_torch."""
    from specvit.observe.forward import jacobian_autograd

    pts = np.array([[4100.0, 1.5, -1.0, 0.1, -0.3], [5700.0, 4.5, 0.2, 0.4, 0.2]])
    mu, jac = fwd.value_and_jacobian(pts)
    ref = jacobian_autograd(fwd.mu, pts)
    scale = np.abs(ref).max(axis=(0, 1))
    assert np.all(np.abs(jac - ref).max(axis=(0, 1)) / scale < 1e-8)
    np.testing.assert_allclose(mu, fwd.numpy(pts), rtol=1e-12)
    mu_fd, jac_fd = fwd.value_and_jacobian(pts, method="fd", steps=[1.0, 1e-3, 1e-3, 1e-3, 1e-3])
    assert np.all(np.abs(jac_fd - ref).max(axis=(0, 1)) / scale < 1e-4)


def test_points_with_invalid_model_flux_are_dropped_and_counted(fwd):
    from toymodel import HoleyModel

    from specvit.observe.forward import ForwardModel

    holey = ForwardModel(HoleyModel(fwd.model), fwd.observer)
    pts = np.array([[4500.0, 2.0, 0.0, 0.0, 0.0], [4500.0, 4.8, 0.0, 0.0, 0.0], [5000.0, 3.0, -1.0, 0.0, 0.0]])
    with pytest.warns(UserWarning, match="1 of 3 points dropped"):
        iset = compute_information(holey, pts, [20.0])
    assert iset.n_dropped == 1 and len(iset.points) == 2
    assert ceiling_by_magnitude(iset, label_var=1.0, bound="crlb")["20"]["n_dropped_invalid"] == 1
