"""The shipped default emulator: loads offline, is cached, has the right grid, and its physics is right.

The physics checks are the ones of issue 3 (SPEC section 8), measured on the normalised flux
(vacuum wavelengths): Ca II triplet weakens and Na I strengthens from log g 1 to 5 at 4500 K;
TiO bands appear below ~4000 K; CN (7870-8300 A) deepens with [C/M]; metal lines weaken
at lower [M/H].
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from specvit.errors import InputError, LabelRangeError
from specvit.spectra import default_model
from specvit.spectra.emulator import SpectralEmulator

CA_TRIPLET_VAC = (8500.36, 8544.44, 8664.52)
NA_VAC = (8185.50, 8197.08)


@pytest.fixture(scope="module")
def model():
    return default_model()


def _ew(model, norm, centers, half=2.0):
    w = model.wave
    out = 0.0
    for c in centers:
        m = np.abs(w - c) < half
        out = out + np.sum(1 - norm[..., m], axis=-1) * np.mean(np.diff(w[m]))
    return out


def _depression(model, norm, lo, hi):
    m = (model.wave >= lo) & (model.wave <= hi)
    return np.mean(1 - norm[..., m], axis=-1)


def test_default_model_loads_offline_and_is_cached(model):
    assert isinstance(model, SpectralEmulator)
    assert default_model() is model
    assert model.medium == "vacuum" and model.resolution >= 10000
    assert model.wave[0] <= 7100 - 20 and model.wave[-1] >= 8850 + 20  # PFS MR range plus LSF margin
    assert np.diff(model.wave).max() <= 0.42724609375 / 2
    assert model.meta.get("n_train", 0) > 0
    with pytest.raises(LabelRangeError):
        model.flux([[3000.0, 2.0, 0.0, 0.0, 0.0]])


def test_ca_triplet_weakens_and_na_strengthens_with_logg(model):
    lab = np.array([[4500.0, 1.0, 0.0, 0.0, 0.0], [4500.0, 5.0, 0.0, 0.0, 0.0]])
    n = model.normalized_flux(lab)
    ca = _ew(model, n, CA_TRIPLET_VAC)
    na = _ew(model, n, NA_VAC, half=1.2)
    assert ca[0] > ca[1], ca
    assert na[1] > na[0], na


def test_tio_bands_below_4000K(model):
    lab = np.array([[3800.0, 2.0, 0.0, 0.0, 0.0], [5000.0, 2.0, 0.0, 0.0, 0.0]])
    n = model.normalized_flux(lab)
    tio = _depression(model, n, 7060.0, 7250.0)
    assert tio[0] > 2 * tio[1] and tio[0] > 0.15, tio


def test_cn_deepens_with_carbon(model):
    # [a/M] = +0.25 keeps [C/M] = +0.5 inside the physical domain (C/O = 0.95 < 1)
    lab = np.array([[4500.0, 1.5, 0.0, 0.25, -0.5], [4500.0, 1.5, 0.0, 0.25, 0.5]])
    n = model.normalized_flux(lab)
    cn = _depression(model, n, 7870.0, 8300.0)
    assert cn[1] > cn[0], cn


def test_metal_lines_weaken_at_lower_metallicity(model):
    lab = np.array([[5000.0, 3.0, 0.0, 0.0, 0.0], [5000.0, 3.0, -2.0, 0.0, 0.0]])
    n = model.normalized_flux(lab)
    assert _depression(model, n, 7300.0, 8800.0)[0] > 2 * _depression(model, n, 7300.0, 8800.0)[1]


def test_cli_spectrum_writes_csv_and_plot(tmp_path, capsys):
    from specvit.cli import main

    out, png = tmp_path / "x.csv", tmp_path / "x.png"
    rc = main(["spectrum", "--teff", "4500", "--logg", "2", "--mh", "0", "--alpha", "0", "--carbon", "0",
               "--out", str(out), "--plot", str(png)])
    assert rc == 0
    df = pd.read_csv(out, comment=None, skiprows=1)
    assert list(df.columns) == ["wave_A", "flux", "continuum", "norm"]
    assert len(df) == default_model().n_wave
    np.testing.assert_allclose(df["flux"] / df["continuum"], df["norm"], rtol=1e-4)
    assert png.stat().st_size > 10000
    rc = main(["spectrum", "--teff", "9000", "--logg", "2", "--out", str(tmp_path / "y.csv")])
    assert rc == 2 and "T_eff" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="extrapolating"):
        assert main(["spectrum", "--teff", "6100", "--logg", "2", "--out", str(tmp_path / "z.csv"),
                     "--extrapolate"]) == 0


def test_paschen_lines_strengthen_with_teff_and_are_deepest_in_giants(model):
    """Hydrogen Paschen lines (line-list version 2): P12 and P14 cores deepen from 4500 K to 6000 K
    (n = 3 population ~ exp(-12.09 eV / kT)) and are deeper in a giant than in a dwarf at 6000 K
    (less Stark broadening at low electron density). Emulator v1 (no hydrogen) fails this."""
    from specvit.spectra.synthesis.hydrogen import vacuum_wavelength_A

    lab = np.array([[6000.0, 2.0, -1.0, 0.0, 0.0], [4500.0, 2.0, -1.0, 0.0, 0.0], [6000.0, 4.5, -1.0, 0.0, 0.0]])
    n = model.normalized_flux(lab)
    for m in (12, 14):
        core = np.abs(model.wave - vacuum_wavelength_A(3, m)) < 1.0
        depth = 1.0 - np.median(n[:, core], axis=1)
        assert depth[0] > 0.08 and depth[0] > 3 * depth[1], (m, depth)
        assert depth[0] > 2 * depth[2], (m, depth)


def test_shipped_versions_load_by_name_and_v4_is_the_default(model):
    from specvit.spectra import load_spectral_model
    from specvit.spectra.emulator import load_emulator

    assert model.version == "v4" and model.max_c_to_o == 1.0
    assert load_emulator("v3").version == "v3" and load_emulator("emulator_v3.npz").max_c_to_o == 1.0
    v2 = load_emulator("v2")
    assert v2.version == "v2" and load_emulator("emulator_v2.npz").version == "v2"
    assert load_spectral_model("v2").version == "v2"
    x = [[4500.0, 2.0, 0.0, 0.0, 0.0]]
    assert not np.array_equal(v2.flux(x), model.flux(x))
    with pytest.raises(InputError, match="not found"):
        load_emulator("v99")
