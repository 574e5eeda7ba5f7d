"""RegularGrid: interpolation modes against functions they must reproduce exactly, errors, pfsspec IO."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from specvit.errors import InputError, LabelRangeError, MissingNodeError
from specvit.spectra.grid import RegularGrid

AXES = {"T_eff": np.array([4000.0, 4250, 4500, 4750, 5000, 5250]), "log_g": np.array([1.0, 1.5, 2.0, 2.5, 3.0]),
        "M_H": np.array([-1.0, -0.5, 0.0, 0.5])}
WAVE = np.linspace(8000, 8010, 7)


def _cube(fn):
    T, G, M = np.meshgrid(*AXES.values(), indexing="ij")
    return fn(T[..., None], G[..., None], M[..., None], WAVE)


def multilinear(T, G, M, w):
    return (1 + T / 1000) * (2 + G) * (3 + M) * (w / 8000) + 0 * T


def cubic_in_teff(T, G, M, w):
    t = (T - 4500) / 1000
    return 5 + t ** 3 - 2 * t ** 2 + G + M * (w / 8000)


@pytest.fixture
def grid():
    return RegularGrid(axes=AXES, wave=WAVE, flux=_cube(multilinear), resolution=5000.0)


def test_linear_is_exact_for_multilinear(grid, rng):
    lab = np.column_stack([rng.uniform(4000, 5250, 50), rng.uniform(1, 3, 50), rng.uniform(-1, 0.5, 50)])
    out = grid.flux(lab)
    np.testing.assert_allclose(out, multilinear(lab[:, :1], lab[:, 1:2], lab[:, 2:3], WAVE[None]), rtol=1e-12)
    # on the upper edge of the box and exactly on nodes
    edge = np.array([[5250.0, 3.0, 0.5], [4250.0, 1.5, -0.5]])
    np.testing.assert_allclose(grid.flux(edge), multilinear(edge[:, :1], edge[:, 1:2], edge[:, 2:3], WAVE[None]))


def test_nearest_snaps(grid):
    out = grid.interpolate(np.array([[4120.0, 1.76, 0.2]]), mode="nearest")
    np.testing.assert_array_equal(out.labels, [[4000.0, 2.0, 0.0]])
    np.testing.assert_allclose(out.flux, multilinear(4000.0, 2.0, 0.0, WAVE)[None])


def test_spline_reproduces_cubic_along_free_axis_and_snaps_others(rng):
    g = RegularGrid(axes=AXES, wave=WAVE, flux=_cube(cubic_in_teff))
    lab = np.column_stack([rng.uniform(4000, 5250, 3000), rng.uniform(1, 3, 3000), rng.uniform(-1, 0.5, 3000)])
    out = g.interpolate(lab, mode="spline", rng=np.random.default_rng(0))
    # every axis is chosen about equally often (3 free axes)
    counts = np.bincount(out.interp_param, minlength=3)
    assert counts.min() > 900
    # non-chosen labels sit on nodes, the chosen one keeps its value
    for d, v in enumerate(AXES.values()):
        other = out.interp_param != d
        assert np.isin(out.labels[other, d], v).all()
        np.testing.assert_array_equal(out.labels[~other, d], lab[~other, d])
    # not-a-knot cubic spline through >= 4 nodes reproduces a cubic in T_eff exactly; the function is
    # linear in log_g and M_H, and spline of a linear function is exact too
    expect = cubic_in_teff(out.labels[:, :1], out.labels[:, 1:2], out.labels[:, 2:3], WAVE[None])
    np.testing.assert_allclose(out.flux, expect, rtol=1e-10)
    # reproducible with the same seed, different with another
    again = g.interpolate(lab, mode="spline", rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again.interp_param, out.interp_param)
    with pytest.raises(InputError, match="rng"):
        g.interpolate(lab[:2], mode="spline")


def test_missing_node_named_and_masked():
    flux = _cube(multilinear)
    flux[2, 3, 1] = np.nan  # T_eff 4500, log_g 2.5, M_H -0.5
    flux[0, 0, 0] = 0.0  # all zero -> invalid
    g = RegularGrid(axes=AXES, wave=WAVE, flux=flux)
    assert g.n_valid == g.n_nodes - 2
    with pytest.raises(MissingNodeError) as e:
        g.flux(np.array([[4600.0, 2.2, -0.7]]))
    msg = str(e.value)
    assert "'T_eff': 4500.0" in msg and "'log_g': 2.5" in msg and "'M_H': -0.5" in msg
    # a query on a node next to the hole does not need it
    np.testing.assert_allclose(g.flux(np.array([[4500.0, 2.0, -0.5]])), multilinear(4500.0, 2.0, -0.5, WAVE)[None])
    out = g.interpolate(np.array([[4600.0, 2.2, -0.7], [4100.0, 1.2, -0.9], [4900.0, 1.2, 0.1]]), on_missing="mask")
    np.testing.assert_array_equal(out.ok, [False, False, True])
    assert np.isnan(out.flux[:2]).all() and np.isfinite(out.flux[2]).all()
    with pytest.raises(MissingNodeError):
        g.flux(np.array([[4000.0, 1.0, -1.0]]), mode="nearest")


def test_bad_labels(grid):
    with pytest.raises(LabelRangeError, match="log_g"):
        grid.flux(np.array([[4500.0, 3.5, 0.0]]))
    with pytest.raises(InputError, match="M_H"):
        grid.flux(np.array([[4500.0, 2.0, np.nan]]))
    with pytest.raises(InputError, match="shape"):
        grid.flux(np.ones((2, 5)))
    with pytest.raises(InputError, match="strictly increasing"):
        RegularGrid(axes={"T_eff": [5000.0, 4000.0]}, wave=WAVE, flux=np.ones((2, 7)))


def test_pfsspec_layout_roundtrip_and_crop(grid, tmp_path):
    path = grid.save(tmp_path / "grid.h5")
    with h5py.File(path, "r") as f:
        assert f["grid/arrays/flux/value"].shape == (6, 5, 4, 7)
        assert f["grid/arrays/flux/index"].dtype == bool
        assert list(f["grid/axes/1"].keys()) == ["log_g"]
        np.testing.assert_array_equal(f["modelgrid/wave"][()], WAVE)
    back = RegularGrid.load(path, dtype=np.float64)
    assert back.label_names == grid.label_names and back.resolution == 5000.0 and back.medium == "vacuum"
    lab = np.array([[4321.0, 1.7, -0.3]])
    np.testing.assert_allclose(back.flux(lab), grid.flux(lab))
    crop = RegularGrid.load(path, wave_range_A=(8002, 8008), label_bounds={"T_eff": (4300, 4700)}, pad_nodes=0)
    np.testing.assert_array_equal(crop.axes["T_eff"], [4250.0, 4500, 4750])
    on_nodes = RegularGrid.load(path, label_bounds={"T_eff": (4250, 4750), "log_g": (1.0, 1.5)}, pad_nodes=1)
    np.testing.assert_array_equal(on_nodes.axes["T_eff"], [4000.0, 4250, 4500, 4750, 5000])
    np.testing.assert_array_equal(on_nodes.axes["log_g"], [1.0, 1.5, 2.0])
    assert crop.wave[0] >= 8002 and crop.wave[-1] <= 8008
    np.testing.assert_allclose(crop.flux(lab), grid.flux(lab)[:, (WAVE >= 8002) & (WAVE <= 8008)], rtol=1e-6)


def test_reads_old_scheme_axes_and_aliases(tmp_path):
    """pfsspec's older files store grid/axes/<name> without the order slot, and BOSZ alpha may be O_M."""
    p = tmp_path / "old.h5"
    axes = {"M_H": np.array([-0.5, 0.0]), "T_eff": np.array([4000.0, 4500.0]), "O_M": np.array([0.0, 0.25])}
    flux = np.random.default_rng(0).uniform(1, 2, (2, 2, 2, 5))
    with h5py.File(p, "w") as f:
        for k, v in axes.items():
            f[f"grid/axes/{k}"] = v
        f["grid/arrays/flux/value"] = flux
        f["modelgrid/wave"] = np.arange(5.0) + 7000
        f["modelgrid/is_wave_vacuum"] = False
    g = RegularGrid.load(p, dtype=np.float64)
    assert g.label_names == ("M_H", "T_eff", "a_M") and g.medium == "air"
    np.testing.assert_allclose(g.flux(np.array([[0.0, 4500.0, 0.25]])), flux[1, 1, 1][None])


def test_minimal_file_defaults_to_vacuum(tmp_path):
    p = tmp_path / "min.h5"
    with h5py.File(p, "w") as f:
        f["grid/axes/0/T_eff"] = np.array([4000.0, 5000.0])
        f["grid/arrays/flux/value"] = np.ones((2, 3))
        f["modelgrid/wave"] = np.arange(3.0)
    g = RegularGrid.load(p)
    assert g.medium == "vacuum" and g.n_valid == 2 and g.resolution == np.inf


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        RegularGrid.load(tmp_path / "none.h5")
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        f["grid/axes/0/T_eff"] = np.array([1.0, 2.0])
        f["modelgrid/wave"] = np.arange(3.0)
    with pytest.raises(InputError, match="grid/arrays/flux/value"):
        RegularGrid.load(p)
