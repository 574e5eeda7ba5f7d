"""The Subaru PFS medium-resolution (MR) arm: its pixel grid, in one place."""
from __future__ import annotations

import numpy as np

#: Number of pixels of the MR arm as stored in the paper's datasets.
PFS_MR_N_PIXELS = 4096
#: First pixel edge, Angstrom (vacuum).
PFS_MR_WAVE_START_A = 7100.0
#: Pixel width, Angstrom.
PFS_MR_DISPERSION_A = 0.42724609375
#: Wavelength medium of the PFS grid.
PFS_MR_MEDIUM = "vacuum"


def pfs_mr_wave_edges() -> np.ndarray:
    """Pixel edges (n+1,), Angstrom."""
    return PFS_MR_WAVE_START_A + np.arange(PFS_MR_N_PIXELS + 1) * PFS_MR_DISPERSION_A


def pfs_mr_wave() -> np.ndarray:
    """Pixel centres (4096,), Angstrom: 7100 + (i + 0.5) * 0.42724609375."""
    return PFS_MR_WAVE_START_A + (np.arange(PFS_MR_N_PIXELS) + 0.5) * PFS_MR_DISPERSION_A
