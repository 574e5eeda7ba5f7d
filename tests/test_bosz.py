"""BOSZ importer on tiny files written in the archive's formats (.asc.bz2 and .fits)."""
from __future__ import annotations

import bz2

import numpy as np
import pytest

from specvit.errors import InputError, MissingNodeError
from specvit.spectra.bosz import bosz_filename, bosz_wave_grid, import_bosz, parse_bosz_filename

R = 5000
LO, HI = 7999.0, 8003.0  # a tiny wavelength range


def _true_wave():
    w = bosz_wave_grid(R)
    return w[(w > LO) & (w < HI)]


def _flux(lab, w):
    return lab["T_eff"] * (1 + lab["log_g"]) * (w / 8000.0) + 10 * lab["M_H"] + 3 * lab["a_M"] + 7 * lab["C_M"]


def write_asc(folder, lab, wave=None):
    w = _true_wave() if wave is None else wave
    text = "".join(f"{x:.3f} {f:.6e} {c:.6e}\n" for x, f, c in zip(w, _flux(lab, w), _flux(lab, w) * 1.5))
    p = folder / bosz_filename(**lab, R=R)
    p.write_bytes(bz2.compress(text.encode()))
    return p


def write_fits(folder, lab):
    from astropy.io import fits

    w = _true_wave()
    cols = [fits.Column(name="Wavelength", format="D", array=np.round(w, 3)),
            fits.Column(name="SpecificIntensity", format="D", array=_flux(lab, w)),
            fits.Column(name="Continuum", format="D", array=_flux(lab, w) * 1.5)]
    p = folder / bosz_filename(**lab, R=R, ext="fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(p)
    return p


def test_filename_codes():
    info = parse_bosz_filename("amm03cm03om03t3500g25v20modrt0b5000rs.asc.bz2")
    assert (info["M_H"], info["C_M"], info["a_M"], info["T_eff"], info["log_g"], info["R"]) == \
        (-0.25, -0.25, -0.25, 3500.0, 2.5, 5000)
    assert parse_bosz_filename("amm13cp00op05t12500g45v20modrt0b50000rs.fits")["M_H"] == -1.25
    assert parse_bosz_filename("amp08cm08op00t4000g10v20modrt0b5000rs.fits")["C_M"] == -0.75
    for mh in (-2.5, -1.75, -0.25, 0.0, 0.25, 0.75):
        name = bosz_filename(M_H=mh, C_M=0.0, a_M=0.25, T_eff=4750, log_g=1.5, R=R)
        assert parse_bosz_filename(name)["M_H"] == mh
    assert bosz_filename(M_H=-0.25, C_M=-0.25, a_M=-0.25, T_eff=3500, log_g=2.5, R=5000) == \
        "amm03cm03om03t3500g25v20modrt0b5000rs.asc.bz2"
    with pytest.raises(InputError):
        parse_bosz_filename("something_else.asc.bz2")


def test_wave_grid_is_log_uniform_at_R300000_subsampled():
    w = bosz_wave_grid(R)
    d = 300000 // R // 2
    ratio = w[1:] / w[:-1]
    np.testing.assert_allclose(ratio, (1 + 1 / 300000) ** d, rtol=1e-10)
    assert 1000.0 <= w[0] < 1000.0 * (1 + 1 / 300000) ** d and w[-1] < 320000.0


def test_import_folder_mixed_formats_with_missing_node(tmp_path):
    labs = []
    for teff in (4000.0, 4250.0):
        for logg in (1.0, 1.5):
            for mh in (-0.25, 0.0):
                labs.append(dict(M_H=mh, C_M=0.0, a_M=0.25, T_eff=teff, log_g=logg))
    missing = labs.pop(5)
    for k, lab in enumerate(labs):
        (write_fits if k % 3 == 0 else write_asc)(tmp_path, lab)
    g = import_bosz(tmp_path, wave_range_A=(8000.0, 8002.5), dtype=np.float64)
    g2 = import_bosz(tmp_path, wave_range_A=(8000.0, 8002.5), dtype=np.float64, workers=2)
    np.testing.assert_array_equal(g2.flux_cube, g.flux_cube)
    assert g.label_names == ("M_H", "T_eff", "log_g", "C_M", "a_M")
    assert g.shape == (2, 2, 2, 1, 1) and g.n_valid == 7 and g.resolution == R and g.medium == "vacuum"
    tw = _true_wave()
    np.testing.assert_allclose(g.wave, tw[(tw >= 8000.0) & (tw <= 8002.5)], rtol=0, atol=1e-9)
    for lab in labs:
        row = np.array([[lab[k] for k in g.label_names]])
        np.testing.assert_allclose(g.flux(row, mode="nearest")[0], _flux(lab, g.wave), rtol=1e-6)
        np.testing.assert_allclose(g.continuum(row, mode="nearest")[0], 1.5 * _flux(lab, g.wave), rtol=1e-6)
    node = np.array([[missing[k] for k in g.label_names]])
    assert not g.interpolate(node, on_missing="mask").ok[0]
    # the flux model is linear in every label, so multilinear interpolation is exact where the missing
    # node has zero weight (T_eff on the 4000 K node) ...
    mid = np.array([[-0.1, 4000.0, 1.2, 0.0, 0.25]])
    np.testing.assert_allclose(g.flux(mid)[0], _flux(dict(zip(g.label_names, mid[0])), g.wave), rtol=1e-6)
    # ... and an error naming the node where it is needed
    with pytest.raises(MissingNodeError, match="'T_eff': 4250.0"):
        g.flux(np.array([[-0.1, 4100.0, 1.2, 0.0, 0.25]]))


def test_bad_files(tmp_path):
    lab = dict(M_H=0.0, C_M=0.0, a_M=0.0, T_eff=4000.0, log_g=1.0)
    # wavelengths off the BOSZ grid
    write_asc(tmp_path, lab, wave=np.linspace(LO, HI, 20))
    with pytest.raises(InputError, match="BOSZ grid"):
        import_bosz(tmp_path)
    # truncated bz2
    p = next(tmp_path.iterdir())
    p.write_bytes(bz2.compress(b"8000.0 1 2\n")[:-10])
    with pytest.raises(InputError, match=p.name):
        import_bosz(tmp_path)
    with pytest.raises(InputError, match="no BOSZ files"):
        import_bosz(tmp_path / "..", pattern="nothing*")


def test_import_bosz_command_writes_a_grid_simulate_can_read(tmp_path):
    from specvit.cli import main
    from specvit.spectra.grid import RegularGrid

    src = tmp_path / "bosz"
    src.mkdir()
    for teff in (4000.0, 4250.0):
        write_asc(src, dict(M_H=0.0, C_M=0.0, a_M=0.0, T_eff=teff, log_g=2.0))
    out = tmp_path / "grid.h5"
    assert main(["import-bosz", str(src), "--out", str(out), "--wave-min", "8000", "--wave-max", "8002.5"]) == 0
    g = RegularGrid.load(out)
    assert g.n_valid == 2 and g.wave[0] >= 8000.0 and g.wave[-1] <= 8002.5
    assert main(["import-bosz", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.h5")]) == 2
    assert not (tmp_path / "x.h5").exists()
