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


# ---------------------------------------------------------------- the wavelength medium (issue #15 item 4)
from specvit.physics import air_to_vacuum  # noqa: E402
from specvit.spectra.bosz import CA_II_AIR_A, bosz2024_filename, detect_medium  # noqa: E402

CA_LO, CA_HI = 8470.0, 8700.0  # covers the Ca II triplet in both media


def _ca_spectrum(w, centres, depth=0.6, sigma=0.8):
    """Continuum 1e6 (w / 8500)^-2 with Gaussian Ca II lines at ``centres``: (flux, continuum)."""
    cont = 1e6 * (w / 8500.0) ** -2
    norm = np.ones_like(w)
    for c in centres:
        norm *= 1 - depth * np.exp(-0.5 * ((w - c) / sigma) ** 2)
    return cont * norm, cont


def _centres(medium, shift=0.0):
    air = np.array(CA_II_AIR_A) + shift
    return air if medium == "air" else air_to_vacuum(air)


def write_2017(folder, lab, medium):
    """A 2017-release .asc.bz2 file on the rebuilt log-lambda grid, lines at the ``medium`` positions."""
    w = bosz_wave_grid(R)
    w = w[(w > CA_LO) & (w < CA_HI)]
    f, c = _ca_spectrum(w, _centres(medium))
    text = "".join(f"{x:.3f} {a:.6e} {b:.6e}\n" for x, a, b in zip(w, f, c))
    p = folder / bosz_filename(**lab, R=R)
    p.write_bytes(bz2.compress(text.encode()))
    return p


def _wave_2024():
    """A log-uniform grid with 2 samples per R = 5000 resolution element (the layout of bosz2024_wave_r5000)."""
    n = int(np.log(CA_HI / CA_LO) * 2 * R)
    return CA_LO * np.exp(np.arange(n) / (2 * R))


def write_2024(folder, lab, medium, *, shift=0.0, orig=False, wave_file=True):
    """A 2024-release file: gzip text, two columns (flux, continuum) + bosz2024_wave_r5000.txt, or three
    columns at the original resolution (``_rorig_``)."""
    import gzip

    w = _wave_2024()
    f, c = _ca_spectrum(w, _centres(medium, shift))
    name = bosz2024_filename(**lab, R=0 if orig else R, atmos="ms" if lab["log_g"] < 3.5 else "mp")
    with gzip.open(folder / name, "wt") as fh:
        for x, a, b in zip(w, f, c):
            fh.write(f"{x:.4f} {a:.6e} {b:.6e}\n" if orig else f"{a:.6e} {b:.6e}\n")
    if wave_file and not orig:
        (folder / f"bosz2024_wave_r{R}.txt").write_text("".join(f"{x:.4f}\n" for x in w))
    return folder / name


def _line_min(grid, lab, near):
    row = np.array([[lab[k] for k in grid.label_names]])
    n = grid.flux(row, mode="nearest")[0] / grid.continuum(row, mode="nearest")[0]
    m = np.abs(grid.wave - near) < 3.0
    return grid.wave[m][np.argmin(n[m])]


LABS = [dict(M_H=0.0, C_M=0.0, a_M=0.0, T_eff=t, log_g=g) for t in (4000.0, 4500.0) for g in (1.5, 4.5)]


def test_bosz2024_filename_roundtrip():
    name = bosz2024_filename(M_H=-1.25, C_M=0.25, a_M=-0.25, T_eff=3750, log_g=1.5, R=5000, atmos="ms")
    assert name == "bosz2024_ms_t3750_g+1.5_m-1.25_a-0.25_c+0.25_v2_r5000_resam.txt.gz"
    info = parse_bosz_filename(name)
    assert info["release"] == "2024" and info["M_H"] == -1.25 and info["C_M"] == 0.25 and info["R"] == 5000
    assert parse_bosz_filename(bosz_filename(**LABS[0], R=R))["release"] == "2017"


@pytest.mark.parametrize("medium", ["air", "vacuum"])
def test_detect_medium_from_the_ca_triplet(medium):
    w = _wave_2024()
    assert detect_medium(w, *_ca_spectrum(w, _centres(medium))) == medium
    assert detect_medium(w, *_ca_spectrum(w, _centres(medium), depth=0.02)) is None  # too weak to tell
    with pytest.raises(InputError, match="cannot tell the wavelength medium"):  # half-way: ambiguous
        detect_medium(w, *_ca_spectrum(w, _centres("air", shift=1.2)))


def test_import_bosz2024_air_files_are_converted_to_vacuum(tmp_path):
    for lab in LABS:
        write_2024(tmp_path, lab, "air")
    g = import_bosz(tmp_path, wave_range_A=(8480.0, 8690.0), dtype=np.float64)
    assert g.medium == "vacuum" and g.medium_detection["file_medium"] == "air"
    assert g.medium_detection["converted"] and "Ca II" in g.medium_detection["how"]
    np.testing.assert_allclose(g.wave, air_to_vacuum(_wave_2024())[(air_to_vacuum(_wave_2024()) >= 8480.0)
                                                                    & (air_to_vacuum(_wave_2024()) <= 8690.0)])
    for air in CA_II_AIR_A:  # the line sits at its vacuum wavelength in the grid
        assert abs(_line_min(g, LABS[0], air_to_vacuum(air)) - air_to_vacuum(air)) < 0.6
    # forcing the wrong medium is refused; keeping air is possible
    with pytest.raises(InputError, match="contradicts"):
        import_bosz(tmp_path, wave_range_A=(8480.0, 8690.0), medium="vacuum")
    ga = import_bosz(tmp_path, wave_range_A=(8480.0, 8690.0), to_medium="air")
    assert ga.medium == "air" and not ga.medium_detection["converted"]


def test_import_bosz2024_original_resolution_and_release_default(tmp_path):
    (tmp_path / "orig").mkdir()
    for lab in LABS[:2]:
        write_2024(tmp_path / "orig", lab, "air", orig=True)
    g = import_bosz(tmp_path / "orig", wave_range_A=(8480.0, 8690.0))
    assert g.medium_detection["file_medium"] == "air" and g.resolution == np.inf
    # no file decisive (hot stars only): the release decides (2024: air), still converted
    (tmp_path / "hot").mkdir()
    write_2024(tmp_path / "hot", dict(LABS[0], T_eff=8000.0), "vacuum")  # Paschen-dominated: not used
    g = import_bosz(tmp_path / "hot", wave_range_A=(8480.0, 8690.0))
    assert g.medium_detection["how"].startswith("release 2024") and g.medium_detection["converted"]


def test_import_bosz2017_detects_either_medium(tmp_path):
    for medium in ("vacuum", "air"):
        d = tmp_path / medium
        d.mkdir()
        for lab in LABS:
            write_2017(d, lab, medium)
        g = import_bosz(d, wave_range_A=(8480.0, 8690.0), dtype=np.float64)
        assert g.medium == "vacuum" and g.medium_detection["file_medium"] == medium
        assert g.medium_detection["converted"] == (medium == "air")
        for air in CA_II_AIR_A:
            assert abs(_line_min(g, LABS[1], air_to_vacuum(air)) - air_to_vacuum(air)) < 0.6


def test_import_bosz_files_that_disagree_are_an_error(tmp_path):
    write_2024(tmp_path, LABS[0], "air")
    write_2024(tmp_path, LABS[1], "vacuum")
    with pytest.raises(InputError, match="disagree on the wavelength medium"):
        import_bosz(tmp_path)
    (tmp_path / "two").mkdir()
    write_2024(tmp_path / "two", LABS[0], "air")
    write_2017(tmp_path / "two", LABS[1], "air")
    with pytest.raises(InputError, match="several BOSZ releases"):
        import_bosz(tmp_path / "two")
