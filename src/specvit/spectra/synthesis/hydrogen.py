"""Hydrogen Paschen lines (n = 3 -> m) for the PySME synthesis, computed from first principles.

Nothing is downloaded or typed in: wavelengths, lower-level energies and oscillator
strengths all follow from the non-relativistic hydrogen atom plus its fine structure.

* **Oscillator strengths.** Exact radial dipole integrals of hydrogen wave functions,
  ``<n l | r | n' l'>``: every radial function is a polynomial times ``exp(-r/n)``
  (associated Laguerre polynomial, Bethe & Salpeter 1957, eq. 3.17), so the integral is a
  finite sum of ``k! / a^(k+1)`` terms, evaluated in exact rational arithmetic (the same
  numbers as Gordon's 1929 closed form, without its cancellation problems). The absorption
  oscillator strength summed over the l-sublevels with their statistical weights is
  ``f(n->n') = 2/3 * dE * sum_{l,l'} max(l,l') |<nl|r|n'l'>|^2 / n^2`` (dE in Hartree,
  r in Bohr radii; Bethe & Salpeter 1957, eqs. 59.10, 63.2). It is independent of the
  nuclear mass. Checks (tests): f(1->2) = 0.4162, f(2->3) = 0.6407, f(3->4) = 0.8421,
  f(2->4) = 0.1193 as in Wiese & Fuhr (2009, J. Phys. Chem. Ref. Data 38, 565), and
  ``m^3 f(3->m)`` tends to a constant (the oscillator-strength density at the Paschen limit).
* **Wavelengths (vacuum).** Bohr levels with the reduced-mass Rydberg constant of hydrogen,
  ``R_H = R_inf / (1 + m_e/m_p) = 109677.583 cm^-1`` (CODATA 2018), plus the Dirac
  fine-structure correction to order alpha^2,
  ``E_nj = -R_H/n^2 [1 + alpha^2/n^2 (n/(j+1/2) - 3/4)]`` (Bethe & Salpeter 1957, eq. 17.2);
  each Paschen line is the line-strength-weighted centroid of its fine-structure components
  (relative strengths ``(2j+1)(2j'+1){l j 1/2; j' l' 1}^2`` within each l -> l', Condon &
  Shortley 1935). The fine structure moves the Paschen lines by -0.05 A; with it the
  wavelengths agree with the standard (NIST) air values of P12-P16 to 0.003 A. The
  Rydberg-only values are :func:`vacuum_wavelength_A` with ``fine_structure=False``.
* **Lower level.** ``E(n=3) = h c R_H (1 - 1/9) = 12.0874 eV``; g_lower = 2 n^2 = 18, so the
  line list carries ``log gf = log10(18 f)``.

How SME uses a hydrogen line (SMElib ``sme_synth_faster.cpp``, ``hlinprof.f``): species
``"H 1"``; the ``gamqst`` and ``gamvw`` columns are NOT damping constants for hydrogen but the
lower and upper principal quantum numbers (n_lower = 3, n_upper = m). The area-normalised
profile is computed by HLINPROF from these numbers: Stark broadening from the Stehle &
Hutcheon (1999, A&AS 140, 93) tables (Paschen lines up to m = 30, T >= 2500 K,
log N_e = 10-16), self (resonance) broadening by Barklem, Piskunov & O'Mara (2000), helium
broadening and radiative damping from the quantum numbers; lines with m > 30 fall back to
the approximate Kurucz/Peterson HLINOP profile. ``gamrad`` is not used for hydrogen (set to 0
here). Upstream SMElib limits a line to +-150 A of its centre (``InputLineList``); the PySME
build used here evaluates hydrogen lines much farther (P12 still depresses the flux by 2e-7
at 1050 A, measured).

Upper limit: ``PASCHEN_M_MAX = 30``, the last line SME profiles from Stehle's tables. SME
treats every line as an isolated transition (no occupation probabilities, no dissolved-level
pseudo-continuum); the Paschen bound-free continuum from 8206 A blueward is part of its
continuous opacity. In the G/F-dwarf photospheres where Paschen lines matter
(N_e ~ 1e13-1e14 cm^-3 at tau ~ 1), the Inglis & Teller (1939) limit
``log N_e = 23.26 - 7.5 log m`` puts the last resolvable member at m ~ 17-24, so members above
30 are merged into a weak quasi-continuum; their measured effect on the spectrum is in
docs/emulator.md ("Hydrogen lines").
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import comb, factorial

import numpy as np

#: Reduced-mass Rydberg constant of hydrogen, cm^-1: R_inf = 109737.31568160 cm^-1 divided by
#: 1 + m_e/m_p (m_p/m_e = 1836.15267343), CODATA 2018 (Tiesinga et al. 2021, RMP 93, 025010).
RYDBERG_H_CM = 109677.583
#: Fine-structure constant (CODATA 2018).
FINE_STRUCTURE_ALPHA = 7.2973525693e-3
#: h c in eV cm (exact in the 2019 SI: h = 6.62607015e-34 J s, c, e).
HC_EV_CM = 1.239841984e-4
#: Paschen series: lower level n = 3 (g = 2 n^2 = 18).
PASCHEN_N_LOWER = 3
#: First member kept: P9 (m = 9, 9231 A vacuum) is the first line redward of the synthesis range.
PASCHEN_M_MIN = 9
#: Last member kept: the last line SME profiles from Stehle's tables (see module docstring).
PASCHEN_M_MAX = 30

_HALF = Fraction(1, 2)


# ---------------------------------------------------------------- radial integrals
def _radial_polynomial(n: int, l: int) -> tuple[Fraction, list[Fraction]]:
    """R_nl(r) = sqrt(N2) * sum_k c_k r^k * exp(-r/n) (r in Bohr radii); returns (N2, c)."""
    k_max = n - l - 1
    s = Fraction(2, n)  # rho = 2 r / n
    lag = [Fraction((-1) ** i * comb(k_max + 2 * l + 1, k_max - i), factorial(i)) for i in range(k_max + 1)]
    coeffs = [Fraction(0)] * l + [c * s ** (i + l) for i, c in enumerate(lag)]
    norm2 = s ** 3 * Fraction(factorial(k_max), 2 * n * factorial(n + l))
    return norm2, coeffs


@lru_cache(maxsize=None)
def radial_dipole_sq(n: int, l: int, n2: int, l2: int) -> Fraction:
    """|<n l | r | n2 l2>|^2 in Bohr radii squared, exact (rational).

    The integral of ``r^3 R_nl R_n2l2`` is ``sum c_i d_j (i+j+3)! / a^(i+j+4)`` with
    ``a = 1/n + 1/n2``; its square is rational.
    """
    if not (0 <= l < n and 0 <= l2 < n2):
        raise ValueError(f"invalid hydrogen levels ({n},{l}), ({n2},{l2})")
    na, ca = _radial_polynomial(n, l)
    nb, cb = _radial_polynomial(n2, l2)
    a = Fraction(1, n) + Fraction(1, n2)
    total = Fraction(0)
    for i, ci in enumerate(ca):
        if ci:
            for j, cj in enumerate(cb):
                if cj:
                    k = i + j + 3
                    total += ci * cj * factorial(k) / a ** (k + 1)
    return na * nb * total * total


def _dipole_pairs(n: int, m: int):
    """(l, l', max(l,l') |<nl|r|ml'>|^2) for every allowed l -> l' = l +- 1."""
    for l in range(n):
        for l2 in (l - 1, l + 1):
            if 0 <= l2 < m:
                yield l, l2, max(l, l2) * radial_dipole_sq(n, l, m, l2)


def oscillator_strength(n_lower: int, n_upper: int) -> float:
    """Absorption oscillator strength f(n_lower -> n_upper) of hydrogen, summed over l-sublevels.

    ``f = 2/3 * dE * sum_{l,l'} max(l,l') |<nl|r|n'l'>|^2 / n^2`` with
    ``dE = (1/n^2 - 1/n'^2) / 2`` Hartree (Bethe & Salpeter 1957, section 63).
    """
    if not (1 <= n_lower < n_upper):
        raise ValueError(f"need 1 <= n_lower < n_upper, got {n_lower}, {n_upper}")
    s = sum(w for _, _, w in _dipole_pairs(n_lower, n_upper))
    de = _HALF * (Fraction(1, n_lower ** 2) - Fraction(1, n_upper ** 2))
    return float(Fraction(2, 3) * de * s / n_lower ** 2)


# ---------------------------------------------------------------- fine structure
def _delta_sq(a, b, c) -> Fraction:
    return Fraction(factorial(int(a + b - c)) * factorial(int(a - b + c)) * factorial(int(-a + b + c)),
                    factorial(int(a + b + c + 1)))


def wigner_6j_sq(j1, j2, j3, j4, j5, j6) -> Fraction:
    """Square of the Wigner 6j symbol {j1 j2 j3; j4 j5 j6} (Racah formula), exact; 0 if not triangular."""
    js = [Fraction(x) for x in (j1, j2, j3, j4, j5, j6)]
    j1, j2, j3, j4, j5, j6 = js
    triads = ((j1, j2, j3), (j1, j5, j6), (j4, j2, j6), (j4, j5, j3))
    for a, b, c in triads:
        if c < abs(a - b) or c > a + b or (a + b + c).denominator != 1:
            return Fraction(0)
    pre = Fraction(1)
    for t in triads:
        pre *= _delta_sq(*t)
    alpha = [sum(t) for t in triads]
    beta = [j1 + j2 + j4 + j5, j2 + j3 + j5 + j6, j3 + j1 + j6 + j4]
    s = Fraction(0)
    for t in range(int(max(alpha)), int(min(beta)) + 1):
        den = 1
        for x in alpha:
            den *= factorial(int(t - x))
        for x in beta:
            den *= factorial(int(x - t))
        s += Fraction((-1) ** t * factorial(t + 1), den)
    return pre * s * s


def level_wavenumber_cm(n: int, j: float | None = None) -> float:
    """Energy of level n (and total angular momentum j) in cm^-1 relative to the ionisation limit.

    ``-R_H/n^2`` (Bohr) or, with ``j``, ``-R_H/n^2 [1 + alpha^2/n^2 (n/(j+1/2) - 3/4)]`` (Dirac to
    order alpha^2; Lamb shifts, < 0.01 cm^-1 for n >= 3, are neglected).
    """
    e = -RYDBERG_H_CM / n ** 2
    if j is None:
        return e
    return e * (1.0 + FINE_STRUCTURE_ALPHA ** 2 / n ** 2 * (n / (j + 0.5) - 0.75))


def line_wavenumber_cm(n_lower: int, n_upper: int, *, fine_structure: bool = True) -> float:
    """Vacuum wavenumber (cm^-1) of the n_lower -> n_upper line.

    Without fine structure: the Rydberg formula ``R_H (1/n^2 - 1/m^2)``. With it: the
    line-strength-weighted centroid of all fine-structure components nlj -> n'l'j'.
    """
    if not fine_structure:
        return RYDBERG_H_CM * (1.0 / n_lower ** 2 - 1.0 / n_upper ** 2)
    num = den = 0.0
    for l, l2, s_orb in _dipole_pairs(n_lower, n_upper):
        for j in (l - _HALF, l + _HALF):
            if j < 0:
                continue
            for j2 in (l2 - _HALF, l2 + _HALF):
                if j2 < 0:
                    continue
                w = float(s_orb * (2 * j + 1) * (2 * j2 + 1) * wigner_6j_sq(l, j, _HALF, j2, l2, 1))
                if w == 0.0:
                    continue
                sigma = level_wavenumber_cm(n_upper, float(j2)) - level_wavenumber_cm(n_lower, float(j))
                num += w * sigma
                den += w
    return num / den


def vacuum_wavelength_A(n_lower: int, n_upper: int, *, fine_structure: bool = True) -> float:
    """Vacuum wavelength in Angstrom (1e8 / wavenumber); see :func:`line_wavenumber_cm`."""
    return 1e8 / line_wavenumber_cm(n_lower, n_upper, fine_structure=fine_structure)


def excitation_eV(n: int) -> float:
    """Excitation energy of level n above the ground state, eV: ``h c R_H (1 - 1/n^2)``."""
    return HC_EV_CM * RYDBERG_H_CM * (1.0 - 1.0 / n ** 2)


# ---------------------------------------------------------------- line list
def paschen_lines(m_min: int = PASCHEN_M_MIN, m_max: int = PASCHEN_M_MAX) -> dict:
    """Paschen lines 3 -> m (m_min..m_max) as PySME "short" line-list columns (vacuum, sorted).

    ``species`` "H 1", ``wlcent`` (vacuum A, fine-structure centroid), ``excit`` (eV of n = 3),
    ``gflog`` = log10(18 f), ``gamrad`` 0 (unused by SME for hydrogen), ``gamqst`` = 3 and
    ``gamvw`` = m (SME's encoding of the lower and upper principal quantum numbers).
    """
    if not (PASCHEN_N_LOWER < m_min <= m_max):
        raise ValueError(f"need 3 < m_min <= m_max, got {m_min}, {m_max}")
    n = PASCHEN_N_LOWER
    m = np.arange(m_min, m_max + 1)
    wl = np.array([vacuum_wavelength_A(n, int(k)) for k in m])
    gf = np.log10(2 * n ** 2 * np.array([oscillator_strength(n, int(k)) for k in m]))
    order = np.argsort(wl, kind="stable")
    return {
        "species": np.full(len(m), "H 1", dtype="U8"),
        "wlcent": wl[order],
        "excit": np.full(len(m), excitation_eV(n)),
        "gflog": gf[order],
        "gamrad": np.zeros(len(m)),
        "gamqst": np.full(len(m), float(n)),
        "gamvw": m[order].astype(np.float64),
    }
