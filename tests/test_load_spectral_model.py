"""specvit.spectra.load_spectral_model: every accepted kind of spec, and clear errors naming the value."""
from __future__ import annotations

import numpy as np
import pytest

from specvit.errors import InputError
from specvit.spectra import load_spectral_model
from specvit.spectra.grid import RegularGrid

AXES = {"T_eff": np.array([4000.0, 4500, 5000, 5500]), "log_g": np.array([1.0, 2.0, 3.0])}
WAVE = np.linspace(8000.0, 8010.0, 11)


def toy_factory():
    from toymodel import ToyModel

    return ToyModel(wave_min=7050.0, wave_max=7300.0, step=1.0, n_lines=2)


@pytest.fixture
def grid_file(tmp_path):
    T, G = np.meshgrid(*AXES.values(), indexing="ij")
    flux = (1 + T[..., None] / 1000) * (2 + G[..., None]) * (WAVE / 8000)
    return RegularGrid(axes=AXES, wave=WAVE, flux=flux, resolution=5000.0).save(tmp_path / "grid.h5")


def test_default_is_the_embedded_emulator():
    from specvit.spectra import default_model

    try:
        expected = default_model()
    except (ImportError, OSError) as e:
        pytest.skip(f"default spectral model not available: {e}")
    assert load_spectral_model("default") is expected
    assert load_spectral_model() is expected


def test_default_missing_is_an_input_error(monkeypatch):
    import specvit.spectra as spectra

    def missing():
        raise FileNotFoundError("emulator_v9.npz")

    monkeypatch.setattr(spectra, "default_model", missing)
    with pytest.raises(InputError, match="default spectral model could not be loaded.*'default'") as e:
        load_spectral_model("default")
    assert isinstance(e.value.__cause__, FileNotFoundError)


def test_module_factory():
    m = load_spectral_model("test_load_spectral_model:toy_factory")
    assert type(m).__name__ == "ToyModel" and m.wave[0] >= 7050.0
    with pytest.raises(InputError, match="cannot import the model factory.*'no_such_module_xyz:f'"):
        load_spectral_model("no_such_module_xyz:f")
    with pytest.raises(InputError, match="'test_load_spectral_model:nope'"):
        load_spectral_model("test_load_spectral_model:nope")


def test_emulator_npz(tmp_path):
    from test_fisher_fast import random_emulator

    model = random_emulator(seed=3)
    path = tmp_path / "emu.npz"
    model.save(path)
    x = np.array([[4500.0, 2.0, -0.5, 0.1, 0.0]])
    for spec in (str(path), path):
        np.testing.assert_allclose(load_spectral_model(spec).flux(x), model.flux(x), rtol=1e-6)


def test_grid_h5_with_and_without_read_options(grid_file):
    g = load_spectral_model(str(grid_file))
    assert isinstance(g, RegularGrid) and g.label_names == ("T_eff", "log_g")
    lab = np.array([[4321.0, 1.7]])
    ref = RegularGrid.load(grid_file)
    np.testing.assert_allclose(g.flux(lab), ref.flux(lab))
    crop = load_spectral_model(grid_file, wave_range_A=(8002.0, 8008.0), label_bounds={"T_eff": (4100, 4400)},
                               interpolation="linear", pad_nodes=0)
    np.testing.assert_array_equal(crop.axes["T_eff"], [4000.0, 4500.0])
    assert crop.wave[0] >= 8002.0 and crop.wave[-1] <= 8008.0


def test_grid_with_another_suffix(grid_file, tmp_path):
    other = tmp_path / "grid.pfsspec"
    other.write_bytes(grid_file.read_bytes())
    assert isinstance(load_spectral_model(str(other)), RegularGrid)


def test_unknown_and_missing_specs_name_the_value(tmp_path):
    with pytest.raises(InputError, match="unknown spectral model.*value='nonsense'"):
        load_spectral_model("nonsense")
    with pytest.raises(InputError, match="missing.h5"):
        load_spectral_model(str(tmp_path / "missing.h5"))
    with pytest.raises(InputError, match="missing.npz"):
        load_spectral_model(str(tmp_path / "missing.npz"))
    with pytest.raises(InputError, match="value=42"):
        load_spectral_model(42)
