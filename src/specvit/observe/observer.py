"""The PFS MR-arm observation: noiseless model F_lambda + observing conditions -> flux, error, SNR.

One pure, vectorised function of (spectra, conditions, instrument) -- the single
place where the noise model lives (SPEC section 3, DESIGN). The random noise draw
is NOT done here: consumers draw ``noisy = flux + noise_level * error * N(0, 1)``.

Chain for spectrum n and PFS pixel i (all wavelengths vacuum):

1. Doppler shift F(lambda) -> F(lambda / (1 + z_n)); reddening by E(B-V)_n (CCM89).
2. Scale to the HSC i AB magnitude ``mag_n`` (photon weighted; photometry.py).
3. LSF (Gaussian, R=5000, model resolution removed in quadrature) + flux-conserving
   integration over the pixel: one sparse matrix ``resample_matrix`` (lsf.py).
4. Electrons: O = F * lambda/(hc) * dlambda * A_tel * t * T(lambda) * 10^(-0.4 k X) * f_fibre * v;
   sky S = sky(lambda) * fibre area * dlambda * A_tel * t * T(lambda) * X * v; moon likewise.
5. Var = O + S + S_moon + stray + n_exp * npix * RN^2 + npix * dark * t
         + (floor * max(S_{i-1}, S_i, S_{i+1}))^2,  stray = 0.02 mean(S);
   sigma_F = sqrt(Var) / (O / F).
6. Normalise flux and error by one factor so that median(flux) = 0.5; snr = median(flux / error).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from specvit.errors import InputError
from specvit.observe import atmosphere as atm
from specvit.observe import instrument as ins
from specvit.observe.conditions import check_conditions
from specvit.observe.config import InstrumentConfig
from specvit.observe.lsf import air_to_vacuum, lsf_sigma_A, resample_matrix
from specvit.observe.pfs import pfs_mr_wave, pfs_mr_wave_edges
from specvit.observe.photometry import SyntheticPhotometry
from specvit.physics import AB_ZERO_FNU, C_LIGHT_A_S, H_C_ERG_A, planck_shape

#: Median of the normalised flux (SPEC section 3).
NORMALISED_MEDIAN = 0.5
_SUN_TEFF_K = 5778.0
_V_WAVE_A = 5500.0
#: airmass step of the tabulated atmospheric transmission 10^(-0.4 k X)
AIRMASS_TABLE_STEP = 0.02
#: PFS pixels per dense band of the LSF + resampling product (16-32 fastest, measured)
_BAND_PIXELS = 16


_BLAS: list = []


def _one_blas_thread():
    """Context manager: BLAS on one thread (threadpoolctl, process-wide, restored on exit).

    The banded products are small; OpenBLAS's own threads made them 3-5x more expensive in
    CPU (measured on this 2-core machine), and simulate's workers are the parallelism.
    """
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def median_rows(x: np.ndarray) -> np.ndarray:
    """``np.median(x, axis=1)``, bit for bit, with one partition instead of two.

    For even n the median is the mean of the two middle values; the lower one is the maximum
    of the lower partition. ~5x less CPU than ``np.median`` on (N, 4096) float32 (measured).
    """
    n = x.shape[1]
    p = np.partition(x, n // 2, axis=1)
    hi = p[:, n // 2]
    if n % 2:
        return hi.copy()
    lo = p[:, : n // 2].max(axis=1)
    return (lo + hi) / 2


@dataclass
class Observation:
    """Result of :meth:`PFSObserver.observe` for N spectra on the 4096 PFS pixels.

    flux : (N, 4096) normalised NOISELESS flux (median 0.5)
    error : (N, 4096) 1-sigma noise of ``flux`` at noise_level 1 (same normalisation)
    snr : (N,) median over pixels of flux / error
    norm_factor : (N,) normalised = F_lambda [erg/s/cm^2/A, scaled to ``mag``] * norm_factor
    mag_model : (N,) HSC i AB magnitude of the input model flux (before scaling; in its units)
    conditions : the observing conditions used (DataFrame, N rows)
    components : electrons per pixel ('object_e', 'sky_e', 'moon_e', 'var_e') if asked for
    """

    wave: np.ndarray
    flux: np.ndarray
    error: np.ndarray
    snr: np.ndarray
    norm_factor: np.ndarray
    mag_model: np.ndarray
    conditions: pd.DataFrame
    components: dict = field(default_factory=dict)


class PFSObserver:
    """Observe noiseless spectra with the PFS MR arm.

    Parameters (keyword only)
    -------------------------
    model_wave : (n_model,) wavelengths of the model flux, Angstrom, in ``model_medium``
    model_resolution : the model's own resolving power (``inf`` if not band limited)
    model_medium : "vacuum" or "air" (air is converted to vacuum; the PFS grid is vacuum)
    instrument : :class:`InstrumentConfig` (default: the calibrated PFS MR arm)
    """

    def __init__(self, *, model_wave, model_resolution: float = float("inf"), model_medium: str = "vacuum",
                 instrument: InstrumentConfig | None = None):
        cfg = instrument or InstrumentConfig()
        self.instrument = cfg
        w = np.asarray(model_wave, dtype=float)
        if w.ndim != 1 or not np.all(np.isfinite(w)):
            raise InputError("model wavelengths must be a finite 1D array", field="model_wave", value=w.shape)
        if model_medium not in ("vacuum", "air"):
            raise InputError("must be 'vacuum' or 'air'", field="model_medium", value=model_medium)
        if not model_resolution > 0:
            raise InputError("must be > 0", field="model_resolution", value=model_resolution)
        self.model_wave = air_to_vacuum(w) if model_medium == "air" else w
        self.model_resolution = float(model_resolution)
        self.n_model = len(w)
        self.wave = pfs_mr_wave()
        self.wave_edges = pfs_mr_wave_edges()
        self.dlam = np.diff(self.wave_edges)
        #: instrument LSF FWHM per pixel, Angstrom (lambda / R, or the user table)
        self.lsf_fwhm_A = self.wave / cfg.resolution
        if cfg.lsf_fwhm_file:
            lw, lf = atm._read_table(cfg.lsf_fwhm_file, field="lsf_fwhm_file")
            if not np.all(lf > 0):
                raise InputError("FWHM must be > 0", file=cfg.lsf_fwhm_file, field="lsf_fwhm_file", value=float(lf.min()))
            self.lsf_fwhm_A = np.interp(self.wave, lw, lf)
        self.lsf_sigma_A = lsf_sigma_A(self.wave, cfg.resolution, self.model_resolution, fwhm_A=self.lsf_fwhm_A)
        if np.any(self.wave / self.model_resolution > self.lsf_fwhm_A):
            warnings.warn(f"the model (R = {self.model_resolution:g}) is coarser than the instrument LSF; "
                          "it is only binned to the pixels, not sharpened", stacklevel=2)
        self._matrix = None
        self._matrix_error = None
        try:  # a model grid that does not cover the arm can still serve error_from_noisy; observe() raises
            self._matrix = resample_matrix(self.model_wave, self.wave_edges, self.lsf_sigma_A,
                                           truncate=cfg.lsf_truncate_sigma)
        except InputError as e:
            self._matrix_error = e
        self.photometry = SyntheticPhotometry(self.model_wave)
        self._setup_response()
        self._cache = {}

    @property
    def resample_matrix(self):
        """scipy.sparse CSR (4096, n_model): LSF + flux-conserving resampling (``model_flux @ M.T``)."""
        if self._matrix is None:
            raise self._matrix_error
        return self._matrix

    @classmethod
    def for_model(cls, model, instrument: InstrumentConfig | None = None) -> "PFSObserver":
        """Observer matched to a :class:`specvit.spectra.base.SpectralModel`."""
        return cls(model_wave=model.wave, model_resolution=model.resolution, model_medium=model.medium,
                   instrument=instrument)

    # ------------------------------------------------------------------ setup
    def _setup_response(self):
        cfg, w = self.instrument, self.wave
        self.throughput = ins.throughput(w, cfg)
        self.area_cm2 = ins.collecting_area_cm2(cfg)
        #: electrons per (erg/s/cm^2/A) per second, before atmosphere, fibre loss and vignetting
        self.base_response = w / H_C_ERG_A * self.dlam * self.area_cm2 * self.throughput
        kw, kk = atm.load_extinction(cfg.extinction_file)
        self.extinction_k = np.interp(w, kw, kk)
        # transmission 10^(-0.4 k X) tabulated on an airmass grid, interpolated linearly in X
        # (error < 1e-5 for k < 0.5 mag/airmass), so no exp over (N, 4096) on the hot path
        self._x_grid = np.arange(1.0, 5.0 + AIRMASS_TABLE_STEP, AIRMASS_TABLE_STEP)
        self._trans_table = 10 ** (-0.4 * self._x_grid[:, None] * self.extinction_k[None, :])
        if cfg.sky_pixel_file:  # absolute sky, already at the instrument resolution (e.g. the pfs-etc preset)
            sw, sf = atm._read_table(cfg.sky_pixel_file, field="sky_pixel_file")
            if sw[0] > w[0] + 1e-6 or sw[-1] < w[-1] - 1e-6:
                raise InputError("sky table must cover the PFS MR pixel centres 7100.2-8849.8 A",
                                 file=cfg.sky_pixel_file, field="sky_pixel_file", value=[float(sw[0]), float(sw[-1])])
            self.sky_flambda = np.interp(w, sw, sf)
        else:
            # night sky: resample through the LSF, scale to the dark-sky i-band brightness
            sw, sf, s_res = atm.load_sky(cfg.sky_file, cfg.sky_file_resolution)
            if sw[0] > self.wave_edges[0] - 20 or sw[-1] < self.wave_edges[-1] + 20:
                raise InputError("sky table must cover the PFS MR arm 7080-8870 A",
                                 file=cfg.sky_file or "sky_paranal", field="sky_file", value=[float(sw[0]), float(sw[-1])])
            sky_phot = SyntheticPhotometry(sw)
            sky_scale = 10 ** (-0.4 * (cfg.sky_mag_i_arcsec2 - sky_phot.ab_mag(sf[None])[0]))
            sky_M = resample_matrix(sw, self.wave_edges,
                                    lsf_sigma_A(w, cfg.resolution, s_res, fwhm_A=self.lsf_fwhm_A),
                                    truncate=cfg.lsf_truncate_sigma)
            #: sky F_lambda per arcsec^2 at zenith on the PFS pixels, erg/s/cm^2/A/arcsec^2
            self.sky_flambda = sky_M @ (sf * sky_scale)
        #: sky electrons per second per pixel per arcsec^2 at zenith (dark sky)
        self.sky_rate = self.sky_flambda * self.base_response
        self._sky_max3 = np.maximum(np.maximum(self.sky_rate, np.r_[self.sky_rate[1:], self.sky_rate[-1]]),
                                    np.r_[self.sky_rate[0], self.sky_rate[:-1]])
        self._sky_mean = float(self.sky_rate.mean())
        #: (sky-subtraction floor * max of the sky rate over 3 pixels)^2, per pixel
        self.sky_floor2 = (cfg.sky_subtraction_floor * self._sky_max3) ** 2
        # moonlight per unit 10^(-0.4 V): solar shape normalised at 5500 A
        f_v = AB_ZERO_FNU * C_LIGHT_A_S / _V_WAVE_A**2
        shape = planck_shape(w, _SUN_TEFF_K) / planck_shape(_V_WAVE_A, _SUN_TEFF_K)
        self.moon_rate_v0 = f_v * shape * self.base_response  # per arcsec^2
        # fibre aperture loss is smooth in wavelength: evaluate at the arm ends, interpolate linearly
        # (<= 0.15% error for seeing 0.5-1.5", airmass 1-1.41)
        self._fib_wave = np.array([w[0], w[-1]])
        self._field_table = ins.load_field_table(cfg.field_file) if cfg.field_file else None
        self._aperture_table = ins.load_aperture_table(cfg.fibre_aperture_file) if cfg.fibre_aperture_file else None
        self._fib_u = (w - w[0]) / (w[-1] - w[0])

    # --------------------------------------------------------------- helpers
    def _check_flux(self, model_flux, name="model_flux") -> np.ndarray:
        f = np.asarray(model_flux)
        f = f.astype(np.float32 if f.dtype == np.float32 else np.float64, copy=False)
        if f.ndim == 1:
            f = f[None]
        if f.ndim != 2 or f.shape[1] != self.n_model:
            raise InputError(f"must have shape (N, {self.n_model}) (the model wavelength grid)", field=name,
                             value=tuple(np.shape(model_flux)))
        if not np.all(np.isfinite(f.sum(axis=1, dtype=np.float64))):  # one cheap pass; NaN/inf propagate
            bad = np.flatnonzero(~np.isfinite(f).all(1))
            if len(bad) == 0:
                raise InputError("values so large that their sum overflows", field=name, value=float(np.abs(f).max()))
            raise InputError(f"non-finite values (first bad row {int(bad[0])})", field=name, value="NaN/inf")
        return f

    def convolve_resample(self, model_flux) -> np.ndarray:
        """LSF + flux-conserving resampling to the 4096 PFS pixels: (N, n_model) -> (N, 4096)."""
        return self._resample(self._check_flux(model_flux))

    def _doppler(self, f: np.ndarray, z: np.ndarray) -> np.ndarray:
        """F_obs(lambda) = F(lambda / (1 + z)) by linear interpolation on the model grid, rows with z != 0."""
        rows = np.flatnonzero(z != 0)
        if len(rows) == 0:
            return f
        f = f.copy()
        w = self.model_wave
        x = w[None, :] / (1.0 + z[rows, None])
        j = np.clip(np.searchsorted(w, x) - 1, 0, len(w) - 2)
        t = np.clip((x - w[j]) / (w[j + 1] - w[j]), 0.0, 1.0)
        sub = f[rows]
        f[rows] = np.take_along_axis(sub, j, 1) * (1 - t) + np.take_along_axis(sub, j + 1, 1) * t
        return f

    def _redden(self, f: np.ndarray, ebv: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(ebv > 0)
        if len(rows) == 0:
            return f
        f = f.copy()
        a = atm.ccm89_a_lambda_over_av(self.model_wave) * 3.1
        f[rows] *= 10 ** (-0.4 * ebv[rows, None] * a[None, :])
        return f

    def _transmission(self, X: np.ndarray, dtype) -> np.ndarray:
        u = (np.clip(X, 1.0, self._x_grid[-1]) - 1.0) / AIRMASS_TABLE_STEP
        i = np.minimum(u.astype(np.int64), len(self._x_grid) - 2)
        t = (u - i).astype(dtype)[:, None]
        table = self._as(dtype, "trans_table", self._trans_table)
        lo = table[i]
        out = table[i + 1]  # lo + t * (hi - lo), in place (same operations, fewer (N, 4096) temporaries)
        out -= lo
        out *= t
        out += lo
        return out

    def _as(self, dtype, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr.astype(dtype)``, converted once per dtype and cached."""
        key = (name, np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = arr.astype(dtype)
        return self._cache[key]

    def condition_factors(self, conditions) -> dict:
        """Per-spectrum scalars (N,) of the response and background (float64): the conditions' part of
        the noise model. ``response = T(X) * base * (a + b u)``, ``background = sky_fac * (sky_rate +
        sky_fac * floor²) + const + moon_fac * moon_rate`` (see :meth:`response_and_background`)."""
        cfg = self.instrument
        c = conditions
        X = atm.airmass(c["target_zenith_angle"].to_numpy(float))
        n_exp = c["exp_count"].to_numpy(float)
        t_tot = n_exp * c["exp_time"].to_numpy(float)
        field = c["target_field_angle"].to_numpy(float)
        if self._field_table is None:
            vig = ins.vignetting(field, cfg)
            diam = ins.fibre_diameter_arcsec(field, cfg)
        else:
            vig, diam = ins.field_table_values(self._field_table, field)
        if self._aperture_table is None:
            fwhm = ins.delivered_fwhm_arcsec(c["seeing"].to_numpy(float)[:, None], X[:, None],
                                             self._fib_wave[None, :])
            fib = ins.fibre_fraction(fwhm, diam[:, None], cfg)  # (N, 2) at the two ends of the arm
        else:  # tabulated vs the delivered FWHM at 8000 A (the ETC's seeing definition)
            fwhm800 = ins.delivered_fwhm_arcsec(c["seeing"].to_numpy(float), X, 8000.0)
            fib = ins.aperture_table_values(self._aperture_table, fwhm800, field, self._fib_wave)
        tv = t_tot * vig
        area = np.pi / 4 * diam**2  # arcsec^2
        sky_fac = (X if cfg.sky_scales_with_airmass else np.ones_like(X)) * tv * area
        v_moon = atm.moon_v_surface_brightness(c["moon_phase"].to_numpy(float), c["moon_zenith_angle"].to_numpy(float),
                                               c["target_zenith_angle"].to_numpy(float),
                                               c["moon_target_angle"].to_numpy(float), cfg.moon_k_v)
        moon_fac = 10 ** (-0.4 * v_moon) * tv * area  # 0 where the Moon is down
        const = (cfg.stray_light_fraction * self._sky_mean * sky_fac
                 + n_exp * cfg.extraction_pixels * cfg.read_noise_e**2
                 + cfg.extraction_pixels * cfg.dark_e_per_pix_s * t_tot)
        # response = base * t * v * transmission(X) * (fibre_blue + (fibre_red - fibre_blue) * u)
        return {"airmass": X, "a": tv * fib[:, 0], "b": tv * (fib[:, 1] - fib[:, 0]), "sky_fac": sky_fac,
                "moon_fac": moon_fac, "const": const}

    def response_and_background(self, conditions, dtype=np.float64) -> tuple[np.ndarray, np.ndarray, dict]:
        """Per spectrum and pixel: electrons per unit F_lambda (erg/s/cm^2/A), and the variance
        (electrons^2) of everything that is not the object. Depends on the conditions only."""
        fac = self.condition_factors(conditions)
        X, sky_fac, moon_fac, const = fac["airmass"], fac["sky_fac"], fac["moon_fac"], fac["const"]
        a = fac["a"].astype(dtype)[:, None]
        b = fac["b"].astype(dtype)[:, None]
        base = self._as(dtype, "base_response", self.base_response)
        key = ("base_u", np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = base * self._fib_u.astype(dtype)
        response = self._transmission(X, dtype)
        tmp = np.multiply(base, a)  # response *= base * a + (base * u) * b, same operations in place
        scratch = np.multiply(self._cache[key], b)
        tmp += scratch
        response *= tmp
        # sky + (floor * max3(sky))^2 + const, with sky = sky_fac * sky_rate
        sf = sky_fac.astype(dtype)[:, None]
        fl2 = self._as(dtype, "floor2", self.sky_floor2)
        background = np.multiply(sf, fl2, out=tmp)  # sf * (sky_rate + sf * fl2), in place
        background += self._as(dtype, "sky_rate", self.sky_rate)
        background *= sf
        background += const.astype(dtype)[:, None]
        extra = {"airmass": X, "sky_fac": sky_fac, "moon_fac": moon_fac}
        if np.any(moon_fac > 0):
            background += np.multiply(moon_fac.astype(dtype)[:, None], self._as(dtype, "moon", self.moon_rate_v0),
                                      out=scratch)
        return response, background, extra

    # ------------------------------------------------------------------ main
    def observe(self, model_flux, conditions, *, return_components: bool = False, out=None) -> Observation:
        """Observe N noiseless model spectra (N, n_model) F_lambda under ``conditions`` (N rows).

        Computes in float32 if ``model_flux`` is float32 (outputs float32), else in float64.
        ``out = (flux, error)``: two C-contiguous (N, 4096) arrays of that dtype (e.g. views of
        shared memory) that receive the normalised flux and error -- the same numbers, no copy.
        """
        f = self._check_flux(model_flux)
        dtype = f.dtype
        c = check_conditions(conditions, len(f), source="conditions")
        if out is not None:
            out = tuple(out)
            shape = (len(f), len(self.wave))
            if len(out) != 2 or any(not isinstance(o, np.ndarray) or o.shape != shape or o.dtype != dtype
                                    or not o.flags.c_contiguous or not o.flags.writeable for o in out):
                raise InputError(f"must be two writeable C-contiguous {dtype} arrays of shape {shape}", field="out",
                                 value=[(getattr(o, "shape", None), str(getattr(o, "dtype", None))) for o in out])
        if len(f) == 0:
            empty = np.zeros((0, len(self.wave)), dtype)
            flux, error = (empty, empty.copy()) if out is None else out
            return Observation(wave=self.wave, flux=flux, error=error, snr=np.zeros(0), norm_factor=np.zeros(0),
                               mag_model=np.zeros(0), conditions=c)
        f = self._doppler(f, c["redshift"].to_numpy(float))
        f = self._redden(f, c["ext"].to_numpy(float))
        with _one_blas_thread():  # also makes the result independent of BLAS threading (simulate workers)
            phot = self.photometry.photon_integral(f)
        if not np.all(phot > 0):
            i = int(np.flatnonzero(~(phot > 0))[0])
            raise InputError(f"model flux has no positive flux in the HSC i band (row {i})", field="model_flux")
        mag_model = -2.5 * np.log10(phot / self.photometry.ab_norm)
        scale = 10 ** (-0.4 * (c["mag"].to_numpy(float) - mag_model))  # model units -> erg/s/cm^2/A
        fc = self._resample(f)  # (N, 4096), model units
        med = median_rows(fc)
        if not np.all(med > 0):
            i = int(np.flatnonzero(~(med > 0))[0])
            raise InputError(f"median model flux over the PFS arm is not positive (row {i})", field="model_flux")
        norm = NORMALISED_MEDIAN / med  # model units -> normalised
        response, var, extra = self.response_and_background(c, dtype)
        response *= scale.astype(dtype)[:, None]  # electrons per model unit
        obj = fc * response
        var += np.maximum(obj, 0)
        components = {}
        if return_components:
            comp_sky = (extra["sky_fac"][:, None] * self.sky_rate).astype(dtype)
            components = {"object_e": obj.copy(), "var_e": var.copy(), "sky_e": comp_sky,
                          "moon_e": (extra["moon_fac"][:, None] * self.moon_rate_v0).astype(dtype),
                          "airmass": extra["airmass"]}
        err = np.sqrt(var, out=var)
        snr = median_rows(np.divide(obj, err, out=obj))
        nf = norm.astype(dtype)[:, None]
        error = np.divide(err, response, out=err if out is None else out[1])
        error *= nf
        flux = np.multiply(fc, nf, out=fc if out is None else out[0])
        return Observation(wave=self.wave, flux=flux, error=error, snr=snr, norm_factor=norm * scale ** -1,
                           mag_model=mag_model, conditions=c, components=components)

    def _resample(self, f: np.ndarray) -> np.ndarray:
        """(N, n_model) -> (N, 4096) = f @ resample_matrix.T, as dense products over bands.

        The matrix is banded: each group of ``_BAND_PIXELS`` consecutive PFS pixels depends on one
        contiguous range of model pixels (~65 for 16 pixels at R_model = 10,000). Each band is
        one dense BLAS product (N, width) x (width, 16) holding exactly the sparse matrix's
        entries (zeros elsewhere), so only the summation order differs from the sparse product
        (``tests/test_emulator_speed.py``); ~3x less CPU than scipy's sparse product with its
        transposed copies (measured 2026-11-23: 20 vs 64 us per spectrum, float32, 1 thread).
        """
        out = np.empty((len(f), self.resample_matrix.shape[0]), dtype=f.dtype)
        with _one_blas_thread():
            for i0, i1, j0, j1, band in self._bands(f.dtype):
                np.matmul(f[:, j0:j1], band, out=out[:, i0:i1])
        return out

    def _bands(self, dtype) -> list:
        """[(i0, i1, j0, j1, dense (j1 - j0, i1 - i0) block of resample_matrix.T)] for ``dtype``."""
        key = ("bands", np.dtype(dtype).str)
        if key not in self._cache:
            M = self.resample_matrix.tocsr()
            bands = []
            for i0 in range(0, M.shape[0], _BAND_PIXELS):
                sub = M[i0:i0 + _BAND_PIXELS]
                j0, j1 = int(sub.indices.min()), int(sub.indices.max()) + 1
                block = np.ascontiguousarray(sub[:, j0:j1].toarray().T, dtype=dtype)
                bands.append((i0, i0 + sub.shape[0], j0, j1, block))
            self._cache[key] = bands
        return self._cache[key]

    def error_from_noisy(self, noisy_flux, conditions, norm_factor) -> np.ndarray:
        """Leakage-safe 1-sigma error estimated from NOISY normalised flux (SPEC section 3, "Leakage trap").

        The object shot noise is taken from the noisy counts (clipped at 0) instead of
        the noiseless model; sky, read noise, dark, stray light and the sky floor depend
        on the observing conditions only. ``norm_factor`` is the per-spectrum
        normalisation of :class:`Observation` (physical flux -> normalised flux).
        """
        noisy = np.asarray(noisy_flux, dtype=float)
        if noisy.ndim == 1:
            noisy = noisy[None]
        if noisy.ndim != 2 or noisy.shape[1] != len(self.wave):
            raise InputError(f"must have shape (N, {len(self.wave)})", field="noisy_flux", value=np.shape(noisy_flux))
        if not np.all(np.isfinite(noisy)):
            raise InputError("non-finite values", field="noisy_flux", value="NaN/inf")
        norm = np.broadcast_to(np.asarray(norm_factor, dtype=float), (len(noisy),))
        if not np.all(norm > 0):
            raise InputError("must be > 0", field="norm_factor", value=float(norm.min()))
        c = check_conditions(conditions, len(noisy), source="conditions")
        response, background, _ = self.response_and_background(c)
        r = response / norm[:, None]  # electrons per unit normalised flux
        var = np.clip(noisy * r, 0.0, None) + background
        return np.sqrt(var) / r

    # ----------------------------------------------------------------- torch
    def _torch_matrix(self, dtype, device):
        import torch

        key = (dtype, str(device))
        if key not in self._cache:
            M = self.resample_matrix.tocoo()
            idx = torch.as_tensor(np.vstack([M.row, M.col]), dtype=torch.long)
            self._cache[key] = torch.sparse_coo_tensor(
                idx, torch.as_tensor(M.data, dtype=dtype), M.shape, device=device, check_invariants=True).coalesce()
        return self._cache[key]

    def convolve_resample_torch(self, model_flux):
        """Differentiable LSF + resampling: torch (N, n_model) -> (N, 4096)."""
        import torch

        f = model_flux if model_flux.ndim == 2 else model_flux[None]
        if f.shape[-1] != self.n_model:
            raise InputError(f"must have shape (N, {self.n_model})", field="model_flux", value=tuple(f.shape))
        M = self._torch_matrix(f.dtype, f.device)
        return torch.sparse.mm(M, f.T).T

    def normalised_torch(self, model_flux):
        """Differentiable observed shape: LSF + resampling + median normalisation to 0.5 (torch, (N, 4096)).

        Equals ``observe(...).flux`` for redshift 0 and no reddening (the magnitude
        only scales the flux, which the normalisation removes). The median of the
        4096 pixels is the mean of the 2048th and 2049th values, as in numpy.
        """
        fc = self.convolve_resample_torch(model_flux)
        n = fc.shape[1]
        lo = fc.kthvalue(n // 2, dim=1).values
        hi = fc.kthvalue(n // 2 + 1, dim=1).values
        med = 0.5 * (lo + hi)
        return fc * (NORMALISED_MEDIAN / med)[:, None]
