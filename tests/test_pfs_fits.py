"""PFS data products (issue #16 item 3): pfsObject / pfsSingle FITS -> model grid -> catalogue + STELLARPARAM.

``write_pfs_fits`` builds files in the layout of Subaru-PFS/datamodel (``PfsSimpleSpectrum._writeImpl``,
``PfsFiberArray._writeImpl``, ``Target.toFits``, ``Observations.toFits``, ``WavelengthArray.toFitsHeader``)
with astropy: FLUX (nJy, float32), MASK (compressed, MP_ planes), TARGET, SKY, COVAR (3, N), COVAR2,
OBSERVATIONS, and the wavelength (nm, vacuum) as a WAVELENGTH HDU or a WCS in the FLUX header.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from specvit.data.pfsfits import (C_KM_S, NJY_CGS, doppler_factor, list_pfs_files, prepare_pfs_spectrum,
                                  read_pfs_spectrum, resample_flux_conserving)
from specvit.errors import InputError
from specvit.observe.pfs import pfs_mr_wave
from specvit.physics import C_LIGHT_A_S

MASK_PLANES = {"BAD": 0, "SAT": 1, "CR": 3, "NO_DATA": 8, "INTRP": 2}


def flam_to_njy(flam, wave_A):
    return flam * wave_A**2 / C_LIGHT_A_S / NJY_CGS


def write_pfs_fits(path, wave_nm, flux_njy, variance, *, mask=None, arm="bmn", wcs=False, bunit=None, drop=(),
                   obj_id=None, visit=4321):
    """A pfsObject/pfsSingle file in the datamodel's layout (astropy only)."""
    from pathlib import Path

    import astropy.units as u
    import astropy.wcs

    name = Path(path).name
    if obj_id is None:
        obj_id = int(name.split("-")[4], 16) if name.startswith(("pfsObject-", "pfsSingle-")) else 0x1234

    n = len(wave_nm)
    mask = np.zeros(n, np.int32) if mask is None else mask.astype(np.int32)
    if wcs:  # WavelengthArray(min, max, n).toFitsHeader()
        w = astropy.wcs.WCS(naxis=1)
        w.wcs.ctype = ["WAVE"]
        w.wcs.cname = ["Wavelength"]
        w.wcs.crval = [0.5 * (wave_nm[0] + wave_nm[-1])]
        w.wcs.crpix = [0.5 * n + 1.5]
        w.wcs.cunit = [u.nm]
        w.wcs.cdelt = [(wave_nm[-1] - wave_nm[0]) / (n - 1)]
        header = w.to_header()
    else:
        header = fits.Header()
    header["DAMD_VER"] = (2, "PfsFiberArray datamodel version")
    hdus = [fits.PrimaryHDU()]
    flux_hdr = header.copy()
    if bunit is not None:
        flux_hdr["BUNIT"] = bunit
    hdus.append(fits.ImageHDU(np.asarray(flux_njy, np.float32), header=flux_hdr, name="FLUX"))
    mask_hdr = fits.Header()
    for k, v in MASK_PLANES.items():
        key = f"MP_{k}"
        mask_hdr["HIERARCH " + key if len(key) > 8 else key] = v  # MaskHelper.toFitsHeader
    mask_hdr.extend(header)
    hdus.append(fits.CompImageHDU(mask, header=mask_hdr, name="MASK"))
    if not wcs:
        hdus.append(fits.ImageHDU(np.asarray(wave_nm, np.float64), header=header, name="WAVELENGTH"))
    t_hdr = fits.Header()
    for k, v in {"CATID": 10088, "TRACT": 0, "PATCH": "0,0", "OBJID": obj_id, "RA": 10.0, "DEC": -5.0}.items():
        t_hdr[k] = v
    t_hdr["HIERARCH TARGETTYPE"] = 1
    t_hdr["DAMD_VER"] = (1, "Target datamodel version")
    hdus.append(fits.BinTableHDU.from_columns([fits.Column("filterName", "5A", array=["i2_hsc"]),
                                               fits.Column("fiberFlux", "E", array=[1000.0])],
                                              header=t_hdr, name="TARGET"))
    hdus.append(fits.ImageHDU(np.zeros(n, np.float32), header=header, name="SKY"))
    covar = np.zeros((3, n), np.float32)
    covar[0] = variance
    hdus.append(fits.ImageHDU(covar, header=header, name="COVAR"))
    hdus.append(fits.ImageHDU(np.zeros((10, 10), np.float32), name="COVAR2"))
    hdus.append(fits.BinTableHDU.from_columns([
        fits.Column("visit", "J", array=[visit]), fits.Column("arm", f"{len(arm)}A", array=[arm]),
        fits.Column("spectrograph", "J", array=[1]), fits.Column("fiberId", "J", array=[101]),
        fits.Column("pfsDesignId", "K", array=[7]), fits.Column("pfiNominal", "2E", array=[[0.0, 0.0]]),
        fits.Column("pfiCenter", "2E", array=[[0.0, 0.0]]),
        fits.Column("obsTime", "19A", array=["2026-01-01T00:00:00"]),
        fits.Column("expTime", "E", array=[900.0])], name="OBSERVATIONS"))
    fits.HDUList([h for h in hdus if h.name not in drop]).writeto(path, overwrite=True)
    return path


def _name(kind, obj_id, visit=4321):
    if kind == "pfsObject":
        return f"pfsObject-10088-00000-0,0-{obj_id:016x}-001-0x{0xabc:016x}.fits"
    return f"pfsSingle-10088-00000-0,0-{obj_id:016x}-{visit:06d}.fits"


def _smooth_flam(wave_A):
    """A smooth F_lambda with a few absorption lines (erg/s/cm^2/A)."""
    x = (wave_A - 8000.0) / 1000.0
    lines = sum(0.3 * np.exp(-0.5 * ((wave_A - c) / 1.5) ** 2) for c in (7500.0, 8000.0, 8542.0))
    return 1e-17 * (1.0 + 0.3 * x) * (1.0 - lines)


def _observed(wave_nm, flam, rel_err=0.01):
    wave_A = wave_nm * 10
    f = flam_to_njy(flam, wave_A)
    return f, (rel_err * f) ** 2


@pytest.fixture
def grid_nm():
    return np.arange(6500.0, 9500.0, 0.8) / 10.0  # the 0.8 A sampling of pfsObject, nm


# --------------------------------------------------------------------------- reading and resampling
@pytest.mark.parametrize("wcs", [False, True])
def test_units_resampling_and_normalisation(tmp_path, grid_nm, wcs):
    flam = _smooth_flam(grid_nm * 10)
    fnu, var = _observed(grid_nm, flam)
    p = write_pfs_fits(tmp_path / _name("pfsObject", 1), grid_nm, fnu, var, wcs=wcs)
    spec = read_pfs_spectrum(p)
    np.testing.assert_allclose(spec.wave_nm, grid_nm, rtol=0, atol=1e-6)
    assert spec.identity["objId"] == 1 and spec.identity["catId"] == 10088 and spec.kind == "pfsObject"
    wave = pfs_mr_wave()
    prep = prepare_pfs_spectrum(spec, wave)
    assert not prep.masked.any()
    expect = _smooth_flam(wave)  # F_lambda on the model pixels (the input is sampled 2x coarser: small smoothing)
    np.testing.assert_allclose(prep.flux / prep.norm, expect, rtol=0.03)  # line cores: the 0.8 A input sampling
    far = np.min(np.abs(wave[:, None] - np.array([7500.0, 8000.0, 8542.0])[None, :]), axis=1) > 10
    np.testing.assert_allclose((prep.flux / prep.norm)[far], expect[far], rtol=1e-3)
    assert abs(np.median(prep.flux) - 0.5) < 1e-9
    # error: 1 % of the input flux, the input pixel is wider than the model pixel: same relative error or less
    rel = prep.error / prep.flux
    assert np.all(rel <= 0.0101) and np.median(rel) > 0.007


def test_flux_conserving_resampling_and_error_propagation():
    rng = np.random.default_rng(0)
    e_in = np.cumsum(rng.uniform(0.5, 1.1, 400)) + 7000.0
    e_in = np.concatenate([[7000.0], e_in])
    f = rng.uniform(1.0, 2.0, 400)
    v = rng.uniform(0.01, 0.02, 400)
    good = np.ones(400, bool)
    e_out = np.linspace(7050.0, 7200.0, 301)
    fo, vo, m = resample_flux_conserving(e_in, f, v, good, e_out)
    assert not m.any()
    # the integral over the output range equals the input's integral over the same range
    lo, hi = e_in[:-1], e_in[1:]
    ov = np.clip(np.minimum(hi, e_out[-1]) - np.maximum(lo, e_out[0]), 0, None)
    np.testing.assert_allclose((fo * np.diff(e_out)).sum(), (f * ov).sum(), rtol=1e-12)
    # an output pixel inside one input pixel keeps its flux and variance
    j = np.searchsorted(e_in, e_out[10], side="right") - 1
    if e_out[11] <= e_in[j + 1]:
        assert fo[10] == pytest.approx(f[j]) and vo[10] == pytest.approx(v[j])
    # masked input pixels carry no weight; an output pixel mostly over them is masked
    good[100:110] = False
    fo2, vo2, m2 = resample_flux_conserving(e_in, f, v, good, e_out)
    inside = (e_out[:-1] >= e_in[101]) & (e_out[1:] <= e_in[109])
    assert inside.any() and m2[inside].all() and np.isnan(fo2[inside]).all()


def test_radial_velocity_is_removed_when_given(tmp_path, grid_nm):
    v = 150.0
    flam = _smooth_flam(grid_nm * 10 / doppler_factor(v))  # the rest-frame spectrum seen redshifted
    fnu, var = _observed(grid_nm, flam)
    spec = read_pfs_spectrum(write_pfs_fits(tmp_path / _name("pfsObject", 2), grid_nm, fnu, var))
    wave = pfs_mr_wave()
    rest = prepare_pfs_spectrum(spec, wave, v_los_km_s=v)
    as_is = prepare_pfs_spectrum(spec, wave)
    expect = _smooth_flam(wave)
    expect = 0.5 * expect / np.median(expect)
    line = np.abs(wave - 8542.0) < 3
    assert np.abs(rest.flux - expect)[line].max() < 0.02 < np.abs(as_is.flux - expect)[line].max()
    assert doppler_factor(0.0) == 1.0 and doppler_factor(C_KM_S * 0.001) == pytest.approx(1.0010005, rel=1e-6)


def test_bad_mask_planes_and_bad_variance_mask_pixels(tmp_path, grid_nm):
    fnu, var = _observed(grid_nm, _smooth_flam(grid_nm * 10))
    mask = np.zeros(grid_nm.size, np.int32)
    lam = grid_nm * 10
    mask[(lam > 7500) & (lam < 7510)] = 1 << MASK_PLANES["CR"]
    mask[(lam > 7600) & (lam < 7610)] = 1 << MASK_PLANES["INTRP"]  # informational: not masked
    var[(lam > 7700) & (lam < 7705)] = np.nan
    spec = read_pfs_spectrum(write_pfs_fits(tmp_path / _name("pfsObject", 3), grid_nm, fnu, var, mask=mask))
    wave = pfs_mr_wave()
    prep = prepare_pfs_spectrum(spec, wave)
    assert prep.masked[(wave > 7501) & (wave < 7509)].all()
    assert not prep.masked[(wave > 7601) & (wave < 7609)].any()
    assert prep.masked[(wave > 7701) & (wave < 7704)].all()
    assert np.isfinite(prep.flux).all() and (prep.error > 0).all()  # filled / patched for the network


# --------------------------------------------------------------------------- bad files: clear errors
def _bad_files(d, grid_nm):
    fnu, var = _observed(grid_nm, _smooth_flam(grid_nm * 10))
    out = {}
    out["arm"] = write_pfs_fits(d / _name("pfsObject", 0x10), grid_nm, fnu, var, arm="brn")
    out["masked"] = write_pfs_fits(d / _name("pfsObject", 0x11), grid_nm, fnu, var,
                                   mask=np.full(grid_nm.size, 1 << MASK_PLANES["NO_DATA"]))
    out["hdu"] = write_pfs_fits(d / _name("pfsObject", 0x12), grid_nm, fnu, var, drop=("COVAR",))
    out["unit"] = write_pfs_fits(d / _name("pfsObject", 0x13), grid_nm, fnu, var, bunit="furlong")
    blue = np.arange(3800.0, 6500.0, 0.8) / 10.0
    fb, vb = _observed(blue, _smooth_flam(blue * 10))
    out["range"] = write_pfs_fits(d / _name("pfsObject", 0x14), blue, fb, vb, arm="bmn")
    return out


@pytest.mark.parametrize("what,match,field", [
    ("arm", "wrong arm", "OBSERVATIONS/arm"), ("masked", "all pixels .* masked", "MASK"),
    ("hdu", "missing HDU COVAR", "COVAR"), ("unit", "flux unit it cannot read", "FLUX/BUNIT"),
    ("range", "misses the model's", "WAVELENGTH")])
def test_bad_files_give_clear_errors(tmp_path, grid_nm, what, match, field):
    p = _bad_files(tmp_path, grid_nm)[what]
    with pytest.raises(InputError, match=match) as e:
        prepare_pfs_spectrum(read_pfs_spectrum(p), pfs_mr_wave())
    assert p.name in str(e.value) and f"field={field!r}" in str(e.value)


def test_other_flux_units_are_converted(tmp_path, grid_nm):
    flam = _smooth_flam(grid_nm * 10)
    fnu, var = _observed(grid_nm, flam)
    a = prepare_pfs_spectrum(read_pfs_spectrum(write_pfs_fits(tmp_path / "a.fits", grid_nm, fnu, var)), pfs_mr_wave())
    b = prepare_pfs_spectrum(read_pfs_spectrum(write_pfs_fits(tmp_path / "b.fits", grid_nm, fnu * 1e-3, var * 1e-6,
                                                              bunit="uJy")), pfs_mr_wave())
    c = prepare_pfs_spectrum(read_pfs_spectrum(write_pfs_fits(tmp_path / "c.fits", grid_nm, flam, (0.01 * flam) ** 2,
                                                              bunit="erg / (s cm2 Angstrom)")), pfs_mr_wave())
    np.testing.assert_allclose(b.flux, a.flux, rtol=1e-5)
    np.testing.assert_allclose(c.flux, a.flux, rtol=1e-5)
    assert a.norm == pytest.approx(b.norm, rel=1e-5)


# --------------------------------------------------------------------------- predict: folder -> catalogue, STELLARPARAM
@pytest.fixture
def model_dir(tmp_path):
    import torch

    from specvit.models import create_model
    from specvit.models.io import save_model

    torch.manual_seed(0)
    wave = pfs_mr_wave()[1000:1256]
    model = create_model("mlp_small", n_pixels=len(wave), n_labels=2, gaussian=True)
    save_model(tmp_path / "model", model, label_names=["T_eff", "log_g"], label_mean=[5000.0, 3.0],
               label_std=[600.0, 1.0], wave_A=wave)
    return tmp_path / "model", wave


def test_predict_folder_catalogue_and_stellarparam(tmp_path, grid_nm, model_dir, monkeypatch, capsys):
    import torch

    import specvit.cli
    from specvit.cli import main
    from specvit.models.io import load_model

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.train.cli"])
    d = tmp_path / "spectra"
    d.mkdir()
    good = []
    for k, kind in enumerate(["pfsObject", "pfsObject", "pfsSingle"]):
        flam = _smooth_flam(grid_nm * 10) * (1 + 0.1 * k)
        fnu, var = _observed(grid_nm, flam)
        good.append(write_pfs_fits(d / _name(kind, 0x100 + k), grid_nm, fnu, var, wcs=(k == 1)))
    bad = _bad_files(d, grid_nm)
    (d / "notes.txt").write_text("not a spectrum")  # ignored: not pfsObject-/pfsSingle-*.fits
    broken = d / _name("pfsObject", 0x15)
    broken.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)  # a truncated FITS file
    bad["broken"] = broken
    assert len(list_pfs_files(d)) == 3 + len(bad)
    assert list_pfs_files(str(d / "pfsSingle-*.fits")) == [good[2]]
    with pytest.raises(InputError, match="glob matches no files"):
        list_pfs_files(str(d / "pfsNothing-*.fits"))
    out, sp = tmp_path / "cat.csv", tmp_path / "params.fits"
    import specvit.train.predict_pfs as pp

    monkeypatch.setattr(pp, "FILES_PER_BLOCK", 2)  # files are read 2 at a time: blocks, bad files among them
    rc = main(["predict", "--model", str(model_dir[0]), "--input", str(d), "--out", str(out), "--stellarparam", str(sp),
               "--batch-size", "1"])
    assert rc == 0
    assert "9 spectra" in capsys.readouterr().out
    cat = pd.read_csv(out)
    assert len(cat) == 9
    by_file = cat.set_index("file")
    for p in good:
        r = by_file.loc[p.name]
        assert r["flags"] & 8 == 0 and np.isfinite(r["T_eff"]) and np.isfinite(r["log_g_err"])
        assert r["v_los_applied"] == 0
    assert by_file.loc[good[2].name, "kind"] == "pfsSingle" and by_file.loc[good[2].name, "visit"] == 4321
    for what, p in bad.items():
        r = by_file.loc[p.name]
        assert r["flag_input"] and r["flags"] & 8 and np.isnan(r["T_eff"]) and p.name in r["status"]
    assert "wrong arm" in by_file.loc[bad["arm"].name, "status"]
    # the network saw exactly the prepared spectrum
    model, meta = load_model(model_dir[0])
    prep = prepare_pfs_spectrum(read_pfs_spectrum(good[0]), model_dir[1])
    with torch.no_grad():
        y = model(torch.from_numpy(prep.flux[None].astype(np.float32)))
    mean = meta.unscale((y[0] if isinstance(y, tuple) else y[:, :2]).double().numpy())
    assert by_file.loc[good[0].name, "T_eff"] == pytest.approx(float(mean[0, 0]), rel=1e-5)
    # STELLARPARAM: the GA schema, one row per spectrum and label
    with fits.open(sp) as h:
        t = h["STELLARPARAM"]
        assert t.columns.names[:9] == ["method", "frame", "param", "covarId", "unit", "value", "valueErr", "flag",
                                       "status"]
        assert len(t.data) == 18 and t.header["DAMD_VER"] == 2
        assert set(t.data["param"]) == {"T_eff", "log_g"} and set(t.data["unit"]) == {"K", "dex"}
        assert all(m.startswith("specvit-") for m in t.data["method"])
        rows = t.data[t.data["file"] == bad["masked"].name]
        assert rows["flag"].all() and all(s.startswith("INPUT") for s in rows["status"])
        ok = t.data[t.data["file"] == good[0].name]
        assert not ok["flag"].any() and np.isfinite(ok["valueErr"]).all()
        assert h["STELLARCOVAR"].data.shape == (9, 2, 2)
        # what the datamodel's PfsTable.readHdu does with each schema column (StellarParams dtypes)
        schema = {"method": str, "frame": str, "param": str, "covarId": np.uint8, "unit": str, "value": np.float32,
                  "valueErr": np.float32, "flag": bool, "status": str}
        read = {k: (np.array(["".join(a.astype(str)) for a in t.data[k]]) if t.data[k].dtype == np.object_
                    else t.data[k].astype(dt)) for k, dt in schema.items()}
        assert read["covarId"].tolist()[:2] == [0, 1] and read["param"].tolist()[:2] == ["T_eff", "log_g"]


def test_predict_rv_table_is_applied(tmp_path, grid_nm, model_dir, monkeypatch):
    import specvit.cli
    from specvit.cli import main

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.train.cli"])
    fnu, var = _observed(grid_nm, _smooth_flam(grid_nm * 10))
    p = write_pfs_fits(tmp_path / _name("pfsObject", 0x77), grid_nm, fnu, var)
    pd.DataFrame({"objId": [0x77], "v_los": [-80.0]}).to_csv(tmp_path / "rv.csv", index=False)
    assert main(["predict", "--model", str(model_dir[0]), "--input", str(p), "--out", str(tmp_path / "c.csv"),
                 "--rv-table", str(tmp_path / "rv.csv")]) == 0
    assert pd.read_csv(tmp_path / "c.csv").loc[0, "v_los_applied"] == -80.0


def test_predict_pfs_options_need_fits_input(tmp_path, model_dir, monkeypatch, capsys):
    import specvit.cli
    from specvit.cli import main

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.train.cli"])
    rc = main(["predict", "--model", str(model_dir[0]), "--input", str(tmp_path / "x.h5"), "--out",
               str(tmp_path / "c.csv"), "--stellarparam", str(tmp_path / "s.fits")])
    assert rc == 2 and "--stellarparam needs PFS FITS input" in capsys.readouterr().err


def test_templatefit_on_pfs_fits(tmp_path):
    """``--model templatefit``: a spectrum made from the model itself gives back its labels."""
    from toymodel import ToyModel

    from specvit.baselines.templatefit import TemplateFitConfig
    from specvit.observe.forward import ForwardModel
    from specvit.train.predict_pfs import predict_pfs

    fwd = ForwardModel(ToyModel(wave_min=8400.0, wave_max=8700.0, step=0.5, n_lines=10))
    names = list(fwd.label_names)
    truth = np.array([[5200.0 if n == "T_eff" else 2.5 if n == "log_g" else -0.5 if n == "M_H" else 0.0
                       for n in names]])
    mu = fwd.numpy(truth)[0]
    wave_A = np.asarray(fwd.model.wave, dtype=float)
    flam = mu * 3e-17
    fnu = flam_to_njy(flam, wave_A)
    write_pfs_fits(tmp_path / _name("pfsObject", 5), wave_A / 10, fnu, (1e-3 * fnu) ** 2)
    cfg = TemplateFitConfig(free_labels=["T_eff", "log_g", "M_H"], n_starts=2, max_iter=40)
    cat, info = predict_pfs("templatefit", tmp_path, templatefit_config=cfg, forward=fwd)
    assert info["method"] == "specvit-templatefit" and info["labels"] == ["T_eff", "log_g", "M_H"]
    assert cat.loc[0, "flags"] == 0, cat.loc[0, "status"]
    assert cat.loc[0, "T_eff"] == pytest.approx(5200.0, abs=20.0)
    assert cat.loc[0, "log_g"] == pytest.approx(2.5, abs=0.05)
    assert cat.loc[0, "M_H"] == pytest.approx(-0.5, abs=0.05)
    assert np.isfinite(cat.loc[0, "T_eff_err"])


def test_predict_pfs_applies_the_sigma_calibration(tmp_path, grid_nm, model_dir):
    """A Gaussian model with calibration.json: <label>_err = scale x raw (the dataset route's rule)."""
    import shutil

    from specvit.train.calibration import CALIBRATION_FILE, SigmaCalibration, weights_digest
    from specvit.train.predict_pfs import predict_pfs

    model = tmp_path / "model_copy"
    shutil.copytree(model_dir[0], model)
    fnu, var = _observed(grid_nm, _smooth_flam(grid_nm * 10))
    f = write_pfs_fits(tmp_path / _name("pfsObject", 0x200), grid_nm, fnu, var)
    raw, info_raw = predict_pfs(model, f)
    assert info_raw["sigma"] == "raw (no calibration.json)"
    SigmaCalibration(labels=["log_g", "T_eff"], scale=[3.0, 2.0],
                     weights_sha256=weights_digest(model)).save(model / CALIBRATION_FILE)
    cal, info = predict_pfs(model, f)
    assert info["sigma"] == "calibrated"
    assert cal["T_eff_err"].iloc[0] == pytest.approx(2.0 * raw["T_eff_err"].iloc[0], rel=1e-9)
    assert cal["log_g_err"].iloc[0] == pytest.approx(3.0 * raw["log_g_err"].iloc[0], rel=1e-9)
    off, info_off = predict_pfs(model, f, calibrate=False)
    assert off["log_g_err"].iloc[0] == raw["log_g_err"].iloc[0] and info_off["sigma"] == "raw (calibration disabled)"
