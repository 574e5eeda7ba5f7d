"""The physical ceiling: Fisher information, Cramér–Rao and van Trees bounds, Monte-Carlo validation.

μ(θ), σ and ∂μ/∂θ come from the forward model (:mod:`specvit.observe.forward`, :mod:`specvit.observe.noise`).

>>> from specvit.fisher import compute_information, ceiling_by_magnitude, default_forward  # doctest: +SKIP
>>> fwd, _ = default_forward()                       # emulator through the PFS observer
>>> iset = compute_information(fwd, points, [18, 20, 22.5])
>>> ceiling_by_magnitude(iset, label="log_g", nuisance="5d")["22.5"]["r2max_median"]
"""
from specvit.fisher.ceiling import (InformationSet, ceiling_by_magnitude, ceiling_by_snr_bin, compute_information,
                                    summarise)
from specvit.fisher.information import (Bound, BayesBound, SmoothBoxPrior, crlb_bound, fisher_from_weights,
                                        fisher_matrix, prior_weights, r2_max, resolve_free, schur_complement,
                                        van_trees_bound)
from specvit.fisher.points import make_points
from specvit.observe.forward import default_forward  # the forward model's owner is observe/

__all__ = [
    "fisher_matrix", "schur_complement", "crlb_bound", "r2_max", "van_trees_bound", "SmoothBoxPrior", "prior_weights",
    "resolve_free", "Bound", "BayesBound", "InformationSet", "compute_information", "ceiling_by_magnitude",
    "ceiling_by_snr_bin", "summarise", "default_forward", "make_points", "fisher_from_weights",
]
