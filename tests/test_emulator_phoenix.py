"""Independent physics checks (issue #15 item 3): the shipped emulator against PHOENIX BT-Settl
templates that no specvit code computed (Subaru-PFS/spt_etc_webapp, MIT; tests/data/README_phoenix.md).

Method, tolerances and their sources: ``specvit.spectra.phoenix_check`` and docs/emulator.md,
"Independent checks: PHOENIX BT-Settl". Two kinds of test:

* agreement tests where the two codes are expected to agree (the qualitative physics every
  model atmosphere reproduces; the SED slope of the K giant within the code-to-code tolerance);
* documented-number tests: every compared number, its tolerance and its verdict (including the
  disagreements) is pinned to the value in the docs table, so none can drift silently. If the
  emulator is retrained these fail on purpose: update the docs table and DOCUMENTED together.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specvit.spectra import default_model
from specvit.spectra import phoenix_check as pc

DATA = Path(__file__).parent / "data" / "phoenix_btsettl_pfs.npz"

# (template, measure): (PHOENIX, emulator, tolerance, verdict) -- the table in docs/emulator.md
DOCUMENTED = {
    ('G2V', 'EW_CaII_8498'): (1.302, 1.481, 0.472, 'agree'),
    ('G2V', 'EW_CaII_8542'): (2.412, 3.687, 0.264, 'DISAGREE'),
    ('G2V', 'EW_CaII_8662'): (2.468, 3.097, 0.279, 'DISAGREE'),
    ('G2V', 'EW_NaI_8183_8195'): (0.560, 0.709, 0.299, 'agree'),
    ('G2V', 'EW_MgI_8807'): (0.700, 0.598, 0.089, 'DISAGREE'),
    ('G2V', 'EW_KI_7665_7699'): (1.466, 1.259, 0.517, 'agree'),
    ('G2V', 'EW_CaT_sum'): (6.183, 8.266, 0.746, 'DISAGREE'),
    ('G2V', 'slope_F7100_F8800'): (1.557, 1.536, 0.023, 'agree'),
    ('K0V', 'EW_CaII_8498'): (1.309, 1.440, 0.582, 'agree'),
    ('K0V', 'EW_CaII_8542'): (2.485, 3.736, 0.272, 'DISAGREE'),
    ('K0V', 'EW_CaII_8662'): (2.566, 3.139, 0.258, 'DISAGREE'),
    ('K0V', 'EW_NaI_8183_8195'): (1.068, 0.978, 0.287, 'agree'),
    ('K0V', 'EW_MgI_8807'): (1.093, 0.885, 0.081, 'DISAGREE'),
    ('K0V', 'EW_KI_7665_7699'): (1.754, 1.421, 0.537, 'agree'),
    ('K0V', 'EW_CaT_sum'): (6.359, 8.315, 0.854, 'DISAGREE'),
    ('K0V', 'slope_F7100_F8800'): (1.470, 1.434, 0.026, 'DISAGREE'),
    ('K0III', 'EW_CaII_8498'): (1.601, 1.755, 0.748, 'agree'),
    ('K0III', 'EW_CaII_8542'): (2.798, 4.613, 0.317, 'DISAGREE'),
    ('K0III', 'EW_CaII_8662'): (2.971, 3.966, 0.324, 'DISAGREE'),
    ('K0III', 'EW_NaI_8183_8195'): (1.687, 0.994, 0.309, 'DISAGREE'),
    ('K0III', 'EW_MgI_8807'): (0.601, 0.855, 0.194, 'DISAGREE'),
    ('K0III', 'EW_KI_7665_7699'): (1.707, 1.356, 0.376, 'agree'),
    ('K0III', 'EW_CaT_sum'): (7.370, 10.334, 0.975, 'DISAGREE'),
    ('K0III', 'slope_F7100_F8800'): (1.332, 1.324, 0.037, 'agree'),
    ('M0V', 'EW_CaII_8498'): (1.643, 1.214, 0.543, 'agree'),
    ('M0V', 'EW_CaII_8542'): (2.444, 2.916, 0.318, 'DISAGREE'),
    ('M0V', 'EW_CaII_8662'): (2.000, 2.385, 0.352, 'DISAGREE'),
    ('M0V', 'EW_NaI_8183_8195'): (1.221, 2.178, 0.183, 'DISAGREE'),
    ('M0V', 'EW_MgI_8807'): (0.802, 0.827, 0.073, 'agree'),
    ('M0V', 'EW_KI_7665_7699'): (5.059, 6.949, 1.566, 'DISAGREE'),
    ('M0V', 'EW_CaT_sum'): (6.086, 6.516, 0.942, 'agree'),
    ('M0V', 'TiO_7054'): (0.162, 0.249, 0.088, 'agree'),
    ('M0V', 'TiO_7589'): (0.011, 0.040, 0.024, 'DISAGREE'),
    ('M0V', 'slope_F7100_F8800'): (0.840, 0.730, 0.130, 'agree'),
}


@pytest.fixture(scope="module")
def rows():
    return pc.table(default_model(), DATA)


@pytest.fixture(scope="module")
def res():
    return pc.compare(default_model(), DATA)


def test_reference_data_is_committed_and_described():
    wave, flux = pc.load_templates(DATA)
    assert set(flux) == {"G2V", "K0V", "K0III", "M0V", "M0III"}
    assert wave.size == 4041 and all(f.shape == wave.shape and np.all(f > 0) for f in flux.values())
    # air -> vacuum: +2.2 A at 8000 A (IAU/Morton); the grid covers the emulator's 7050-8900 A
    i = np.argmin(np.abs(wave - 8002.2))
    assert abs(wave[i] - 8002.2) < 0.3 and wave[0] < 7000 and wave[-1] > 8950
    readme = (DATA.parent / "README_phoenix.md").read_text()
    assert "532cc527a947c5aa6abe350b67f8a70e903d2fa4" in readme and "MIT" in readme


def test_only_templates_inside_the_box_are_compared(res):
    assert set(res) == {"G2V", "K0V", "K0III", "M0V"}  # M0III (3700 K) is below T_eff 3750 K


def test_physics_both_codes_agree_on(res):
    """What every model atmosphere reproduces, checked on both spectra with the same measure."""
    for who in ("phoenix", "emulator"):
        m = {k: v[who] for k, v in res.items()}
        # SED: redder (smaller F7100/F8800) as T_eff falls, dwarfs and giants alike
        assert m["G2V"]["slope_F7100_F8800"] > m["K0V"]["slope_F7100_F8800"] > m["K0III"][
            "slope_F7100_F8800"] > m["M0V"]["slope_F7100_F8800"], who
        # TiO: the 7054/7126 system appears in the M dwarf. The windows also catch atomic blends
        # (0.02-0.06 in the G/K templates, see the docs), so only "largest and > 0.1" is asserted.
        assert m["M0V"]["TiO_7054"] > 0.1, who
        assert m["M0V"]["TiO_7054"] > max(m[k]["TiO_7054"] for k in ("G2V", "K0V", "K0III")), who
        # K I 7665/7699 resonance doublet strongest in the M dwarf
        assert m["M0V"]["EW_KI_7665_7699"] > 2 * m["K0V"]["EW_KI_7665_7699"], who
        # Ca II triplet: 8542 and 8662 stronger than 8498 (log gf -0.36, -0.62, -1.32)
        for k in m:
            assert min(m[k]["EW_CaII_8542"], m[k]["EW_CaII_8662"]) > m[k]["EW_CaII_8498"], (who, k)


def test_k_giant_sed_slope_agrees_within_code_to_code_tolerance(rows):
    r = {(a, b): (p, e, tol, v) for a, b, p, e, d, tol, teq, v, smp in rows}
    p, e, tol, v = r[("K0III", "slope_F7100_F8800")]
    assert abs(e - p) <= tol and v == "agree"


def test_documented_numbers_and_verdicts_do_not_drift(rows):
    got = {(a, b): (p, e, tol, v) for a, b, p, e, d, tol, teq, v, smp in rows}
    assert set(got) == set(DOCUMENTED)
    for key, (p, e, tol, verdict) in DOCUMENTED.items():
        gp, ge, gtol, gv = got[key]
        assert gp == pytest.approx(p, abs=2e-3), key  # PHOENIX: fixed data, fixed procedure
        assert ge == pytest.approx(e, abs=5e-3), key  # emulator: changes only if retrained
        assert gtol == pytest.approx(tol, abs=5e-3), key
        assert gv == verdict, key


def test_template_wavelengths_are_air_and_convert_onto_the_emulator_lines():
    """The templates' line minima sit at the air wavelengths; after air -> vacuum they fall within
    one template sample (0.5 A) of the emulator's (vacuum) minima: Ca II, K I, Mg I (Na I 8183 is left
    out: in the point-sampled K0V template a neighbouring line at 8181 A air is deeper)."""
    d = np.load(DATA)
    w_air = float(d["wave_air_A_start"]) + float(d["wave_air_A_step"]) * np.arange(d["g2v"].size)
    wave, flux = pc.load_templates(DATA)
    model = default_model()
    fe = model.flux([[5200.0, 4.5, 0.0, 0.0, 0.0]])[0]
    for air in (8498.02, 8542.09, 8662.14, 7664.90, 7698.96, 8806.76):
        s = np.abs(w_air - air) < 4
        t_air = w_air[s][np.argmin(flux["K0V"][s])]
        t_vac = wave[s][np.argmin(flux["K0V"][s])]
        se = np.abs(model.wave - t_vac) < 4
        e_vac = model.wave[se][np.argmin(fe[se])]
        assert abs(t_air - air) <= 0.5, air
        assert abs(t_vac - e_vac) <= 0.5, (air, t_vac, e_vac)
