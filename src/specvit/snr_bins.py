"""The per-spectrum SNR bins used by every per-bin evaluation and ceiling (SPEC section 7)."""
from __future__ import annotations

import numpy as np

#: Edges of the evaluation bins in per-spectrum SNR (median flux / error).
SNR_BIN_EDGES: tuple[float, ...] = (2.5, 3.5, 4.5, 5.5, 6.5, 8.5, 12.5, 18.0, 28.0)


def snr_bin_labels(edges=SNR_BIN_EDGES) -> list[str]:
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]


def snr_bin_index(snr, edges=SNR_BIN_EDGES) -> np.ndarray:
    """Bin index of each SNR; -1 where the SNR falls outside all bins."""
    snr = np.asarray(snr, dtype=float)
    idx = np.searchsorted(np.asarray(edges), snr, side="right") - 1
    idx[(snr < edges[0]) | (snr >= edges[-1]) | ~np.isfinite(snr)] = -1
    return idx
