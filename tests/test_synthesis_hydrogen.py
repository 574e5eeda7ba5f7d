"""Hydrogen Paschen lines: atomic physics (no PySME), cache file, line-list versions, PySME syntheses."""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from specvit.errors import InputError
from specvit.labels import LABEL_NAMES
from specvit.spectra.synthesis import hydrogen as hyd
from specvit.spectra.synthesis.backend import SynthesisSetup
from specvit.spectra.synthesis.prepare import HYDROGEN_FILE, air_to_vacuum, prepare, write_hydrogen_lines
from specvit.spectra.synthesis.runner import check_linelist_version
from specvit.spectra.synthesis.store import write_spectrum

TEST_CACHE = Path(__file__).parent / "data" / "synthesis" / "cache"


# ---------------------------------------------------------------- oscillator strengths
def test_radial_integral_1s_2p_exact():
    # <1s|r|2p> = 128 sqrt(6) / 243 Bohr radii (Bethe & Salpeter 1957, table 13)
    assert hyd.radial_dipole_sq(1, 0, 2, 1) == Fraction(128 ** 2 * 6, 243 ** 2)
    assert hyd.radial_dipole_sq(2, 1, 1, 0) == hyd.radial_dipole_sq(1, 0, 2, 1)


@pytest.mark.parametrize("n,m,f_ref", [
    (1, 2, 0.4162), (2, 3, 0.6407), (3, 4, 0.8421), (2, 4, 0.1193),  # Wiese & Fuhr 2009, table
    (1, 3, 0.07910), (3, 5, 0.1506),
])
def test_oscillator_strengths_standard_values(n, m, f_ref):
    assert hyd.oscillator_strength(n, m) == pytest.approx(f_ref, abs=6e-5)


def test_lyman_closed_form_and_discrete_sum_rule():
    """f(1->m) = 2^8 m^5 (m-1)^(2m-4) / (3 (m+1)^(2m+4)) (Bethe & Salpeter eq. 63.5), and the
    discrete Lyman lines carry 0.5650 of the total oscillator strength 1 (the rest is continuum)."""
    for m in range(2, 12):
        exact = 2 ** 8 * m ** 5 * (m - 1) ** (2 * m - 4) / (3 * (m + 1) ** (2 * m + 4))
        assert hyd.oscillator_strength(1, m) == pytest.approx(exact, rel=1e-12)
    m_max = 40
    s = sum(hyd.oscillator_strength(1, m) for m in range(2, m_max + 1))
    tail = m_max ** 3 * hyd.oscillator_strength(1, m_max) * sum(k ** -3.0 for k in range(m_max + 1, 20000))
    assert s + tail == pytest.approx(0.5650, abs=2e-4)


def test_paschen_f_scales_as_m_cubed():
    """m^3 f(3->m) tends to a constant (the f-density at the Paschen limit); its ratio to
    Kramers' semi-classical value is the bound-free Gaunt factor of n = 3 at threshold (~0.9)."""
    c = {m: m ** 3 * hyd.oscillator_strength(3, m) for m in (15, 30, 60)}
    assert c[15] > c[30] > c[60] and abs(c[30] / c[60] - 1) < 0.03

    def kramers(m):  # Kramers (1923) semi-classical f(3 -> m)
        return 32 / (3 * math.pi * math.sqrt(3)) / (3 ** 5 * m ** 3) / (1 / 9 - 1 / m ** 2) ** 3

    gaunt = [hyd.oscillator_strength(3, m) / kramers(m) for m in (15, 30, 60)]
    assert all(0.88 < g < 0.93 for g in gaunt) and max(gaunt) - min(gaunt) < 0.01


def test_oscillator_strength_rejects_bad_levels():
    with pytest.raises(ValueError):
        hyd.oscillator_strength(3, 3)
    with pytest.raises(ValueError):
        hyd.radial_dipole_sq(2, 2, 3, 1)


# ---------------------------------------------------------------- wavelengths, energies
def test_wigner_6j_values_and_orthogonality():
    h = Fraction(1, 2)
    # squares of {l j 1/2; j' l' 1}, reference values from sympy.physics.wigner.wigner_6j
    assert hyd.wigner_6j_sq(1, h, h, h, 0, 1) == Fraction(1, 6)
    assert hyd.wigner_6j_sq(2, Fraction(5, 2), h, Fraction(7, 2), 3, 1) == Fraction(1, 42)
    assert hyd.wigner_6j_sq(2, Fraction(3, 2), h, Fraction(5, 2), 3, 1) == Fraction(1, 30)
    assert hyd.wigner_6j_sq(2, Fraction(5, 2), h, Fraction(5, 2), 3, 1) == Fraction(1, 630)
    assert hyd.wigner_6j_sq(1, h, h, Fraction(5, 2), 0, 1) == 0  # not triangular
    # orthogonality: sum_x (2x+1)(2c+1) {a b x; d e c}^2 = 1 (Edmonds 1957, eq. 6.2.9)
    for a, b, d, e, c in [(2, h, 1, Fraction(3, 2), Fraction(3, 2)), (3, h, 2, Fraction(5, 2), Fraction(5, 2)),
                          (2, Fraction(3, 2), 1, Fraction(5, 2), h)]:
        xs = [abs(a - b) + k for k in range(int(a + b - abs(a - b)) + 1)]
        assert sum((2 * x + 1) * (2 * c + 1) * hyd.wigner_6j_sq(a, b, x, d, e, c) for x in xs) == 1


@pytest.mark.parametrize("m,air_A", [(12, 8750.47), (13, 8665.02), (14, 8598.39), (15, 8545.38), (16, 8502.48)])
def test_paschen_wavelengths_against_standard_air_values(m, air_A):
    vac = air_to_vacuum(air_A)
    assert abs(hyd.vacuum_wavelength_A(3, m) - vac) < 0.01
    # the Rydberg formula alone is ~0.05 A redward: the fine-structure shift of n = 3
    assert 0.03 < hyd.vacuum_wavelength_A(3, m, fine_structure=False) - vac < 0.07


def test_balmer_alpha_and_series_limit():
    assert abs(hyd.vacuum_wavelength_A(2, 3) - air_to_vacuum(6562.80)) < 0.02
    assert hyd.vacuum_wavelength_A(3, 2000, fine_structure=False) == pytest.approx(9e8 / hyd.RYDBERG_H_CM, abs=0.02)
    assert 1e8 * 9 / hyd.RYDBERG_H_CM == pytest.approx(8205.8, abs=0.1)  # Paschen limit, vacuum


def test_excitation_energy_of_n3():
    # NIST: H I n = 3 levels at 97492.2-97492.4 cm^-1 = 12.0875 eV
    assert hyd.excitation_eV(3) == pytest.approx(12.0875, abs=2e-4)
    assert hyd.excitation_eV(2) == pytest.approx(10.1988, abs=2e-4)


def test_paschen_line_list_columns():
    d = hyd.paschen_lines()
    m = d["gamvw"].astype(int)
    assert sorted(m) == list(range(hyd.PASCHEN_M_MIN, hyd.PASCHEN_M_MAX + 1)) == list(range(9, 31))
    assert np.all(np.diff(d["wlcent"]) > 0) and np.all(d["species"] == "H 1")
    assert np.all(d["gamqst"] == 3.0) and np.all(d["gamrad"] == 0.0)
    for k in range(len(m)):
        assert d["gflog"][k] == pytest.approx(math.log10(18 * hyd.oscillator_strength(3, int(m[k]))), abs=1e-12)
        assert d["wlcent"][k] == pytest.approx(hyd.vacuum_wavelength_A(3, int(m[k])), abs=1e-9)
    assert d["wlcent"][0] == pytest.approx(8288.71, abs=0.01) and d["wlcent"][-1] == pytest.approx(9231.55, abs=0.01)
    with pytest.raises(ValueError):
        hyd.paschen_lines(3, 10)


# ---------------------------------------------------------------- cache file
def test_write_hydrogen_lines_only_touches_its_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "lines_atoms.npz").write_bytes(b"do not touch")
    prepare(tmp_path)  # existing cache: adds the hydrogen file only
    path = tmp_path / HYDROGEN_FILE
    ref = hyd.paschen_lines()
    with np.load(path) as d:
        assert set(d.files) == set(ref)
        for k, v in ref.items():
            np.testing.assert_array_equal(d[k], v)
    assert (tmp_path / "manifest.json").read_text() == "{}"
    assert (tmp_path / "lines_atoms.npz").read_bytes() == b"do not touch"
    mtime = path.stat().st_mtime_ns
    write_hydrogen_lines(tmp_path)
    assert path.stat().st_mtime_ns == mtime  # up to date: not rewritten
    stale = dict(ref, gflog=ref["gflog"] + 0.1)
    np.savez(path, **stale)
    write_hydrogen_lines(tmp_path)
    with np.load(path) as d:
        np.testing.assert_array_equal(d["gflog"], ref["gflog"])


# ---------------------------------------------------------------- line-list versions
def test_setup_versions_and_legacy_records():
    assert SynthesisSetup().hydrogen and SynthesisSetup().linelist_version == 2
    assert SynthesisSetup(hydrogen=False).linelist_version == 1
    legacy = {k: v for k, v in SynthesisSetup().__dict__.items() if not k.startswith("hydrogen")}
    assert SynthesisSetup.from_dict(legacy).linelist_version == 1  # written before hydrogen existed
    from dataclasses import asdict

    assert SynthesisSetup.from_dict(json.loads(json.dumps(asdict(SynthesisSetup())))) == SynthesisSetup()
    with pytest.raises(InputError, match="bogus"):
        SynthesisSetup.from_dict({**legacy, "bogus": 1})
    with pytest.raises(InputError, match="linelist_version"):
        SynthesisSetup.from_dict({**legacy, "hydrogen": True, "linelist_version": 1})


def _spectrum(path, version):
    n = 16
    meta = {"id": path.stem} if version is None else {"id": path.stem, "linelist_version": version}
    write_spectrum(path, flux=np.full(n, 0.9), cont=np.ones(n), labels=[5000, 4, 0, 0, 0], label_names=LABEL_NAMES,
                   wave_min_A=8000.0, dlnlam=1e-5, meta=meta)


def test_runner_refuses_to_mix_linelist_versions(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    check_linelist_version(out, 2)  # empty directory: anything goes
    _spectrum(out / "old.npz", None)  # written before versions existed -> 1
    check_linelist_version(out, 1)
    with pytest.raises(InputError, match="old.npz") as e:
        check_linelist_version(out, 2)
    assert "linelist_version" in str(e.value)
    legacy = {k: v for k, v in SynthesisSetup().__dict__.items() if not k.startswith("hydrogen")}
    (out / "setup.json").write_text(json.dumps(legacy))
    with pytest.raises(InputError, match="setup.json"):
        check_linelist_version(out, 2)
    out2 = tmp_path / "out2"
    out2.mkdir()
    _spectrum(out2 / "a.npz", 2)
    check_linelist_version(out2, 2)
    with pytest.raises(InputError, match="a.npz"):
        check_linelist_version(out2, 1)


def test_cli_run_has_linelist_version_option():
    import argparse

    from specvit.spectra import cli as spectra_cli

    parser = argparse.ArgumentParser()
    spectra_cli.register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["synthesis", "run", "--design", "d.csv", "--out", "o", "--linelist-version", "1"])
    assert args.linelist_version == 1
    assert parser.parse_args(["synthesis", "run", "--design", "d.csv", "--out", "o"]).linelist_version == 2


# ---------------------------------------------------------------- PySME syntheses
def _depression(res, wave, centre, inner=2.0, outer=(6.0, 10.0)):
    """Mean 1 - F/C within +-inner A of ``centre`` and in the ring outer[0] < |dl| < outer[1]."""
    n = res["flux"] / res["cont"]
    d = np.abs(wave - centre)
    return float(np.mean(1 - n[d < inner])), float(np.mean(1 - n[(d > outer[0]) & (d < outer[1])]))


def _ew(res, wave):
    n = res["flux"] / res["cont"]
    return float(np.sum(1 - n) * np.mean(np.diff(wave)))


def test_pysme_paschen_line_in_test_cache_window():
    """With the committed test inputs (MARCS 4500/4750 K, lines 8525-8565 A): P15 (8547.73 A)
    is added by default, is centred where computed, and grows from 4500 K to 4750 K."""
    pytest.importorskip("pysme")
    from specvit.spectra.synthesis.backend import PysmeSynthesizer

    s = PysmeSynthesizer(TEST_CACHE, SynthesisSetup(wave_min_A=8530.0, wave_max_A=8565.0, line_margin_A=2.0))
    assert s.hydrogen_source == "computed" and s.default_kinds() == ("atoms", "cn", "hydrogen")
    p15 = hyd.vacuum_wavelength_A(3, 15)
    w = s.wave
    cool = s.synthesize(4500, 4.5, 0.0, 0.0, 0.0, kinds=("hydrogen",))
    warm = s.synthesize(4750, 4.5, 0.0, 0.0, 0.0, kinds=("hydrogen",))
    assert warm["info"]["linelist_version"] == 2 and warm["info"]["n_lines"] == len(s._lines["hydrogen"]["wlcent"])
    inner, ring = _depression(warm, w, p15)
    assert inner > ring > 0
    assert _ew(warm, w) > 2 * _ew(cool, w) > 0


@pytest.fixture(scope="module")
def user_synth():
    pytest.importorskip("pysme")
    from specvit.spectra.synthesis.backend import PysmeSynthesizer
    from specvit.spectra.synthesis.prepare import default_cache_dir

    cache = default_cache_dir()
    if not (cache / "manifest.json").exists():
        pytest.skip(f"synthesis cache {cache} not prepared (`specvit synthesis prepare`)")
    return PysmeSynthesizer(cache, SynthesisSetup(wave_min_A=8650.0, wave_max_A=8685.0))


def test_pysme_paschen_p13_in_a_6000K_dwarf(user_synth):
    """P13 (8667.40 A vacuum) is a ~2 % line at 6000 K, log g 4.5 and nearly absent at 4500 K."""
    s, w = user_synth, user_synth.wave
    p13 = hyd.vacuum_wavelength_A(3, 13)
    hot = s.synthesize(6000, 4.5, 0.0, 0.0, 0.0, kinds=("hydrogen",))
    cool = s.synthesize(4500, 4.5, 0.0, 0.0, 0.0, kinds=("hydrogen",))
    inner, ring = _depression(hot, w, p13)
    assert inner > 0.01 and inner > 1.5 * ring
    assert _ew(hot, w) > 10 * _ew(cool, w)
    # with the metal lines: hydrogen only ever adds absorption
    full = s.synthesize(6000, 4.5, 0.0, 0.0, 0.0, kinds=("atoms", "hydrogen"))
    bare = s.synthesize(6000, 4.5, 0.0, 0.0, 0.0, kinds=("atoms",))
    d = bare["flux"] / bare["cont"] - full["flux"] / full["cont"]
    assert d.min() > -1e-3 and d[np.abs(w - p13) < 2].mean() > 0.005

