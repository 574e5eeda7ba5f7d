"""A refinement design: the next label sets to synthesise, where the emulator is least certain.

The emulator is data-limited (docs/emulator.md: its held-out error falls with the number of
training spectra, and the worst spectra sit in sparsely sampled corners: cool metal-rich
dwarfs, metal-rich warm dwarfs). Synthesis costs minutes per spectrum, so where the next
spectra go matters. This module ranks candidate label sets by the disagreement of a
committee of emulators (query by committee; Seung, Opper & Sompolinsky 1992):

1. train ``n_members`` emulators on the training rows, each leaving out a different
   fold (the k-fold split of :func:`~specvit.spectra.emulator_train.cross_validate`), with
   the shipped architecture and a per-member seed;
2. for every candidate (a scrambled-Sobol pool over the label box users work in,
   ``DEFAULT_LABEL_BOUNDS``, T_eff uniform in 5040/T_eff as in :mod:`.design`; with
   ``include_margin`` over the widened training box instead), restricted to the physical
   domain C/O < ``max_c_to_o`` (default 1; times 10**0.05 with ``include_margin``, as the
   training rows of :mod:`.design`), the disagreement is the rms
   over pixels of the standard deviation of the members' normalised flux;
3. pick greedily: the highest score, then damp the scores of candidates near it by
   ``1 - exp(-d^2 / 2 r^2)`` (d = Euclidean distance in labels scaled to the box, r =
   ``exclusion``), so one batch does not pile into a single corner.

On the shipped training set (v2, 207 spectra) the committee disagreement at the 22
held-out label sets has a Spearman rank correlation of 0.89 with the actual error of the
emulator there (docs/emulator.md), so the score is a measured proxy for the error.

Why candidates stay inside the box by default: a committee disagrees most where it
extrapolates. The first refinement design (r1, 2026-12-06) drew candidates from the widened
training box, and 57 of its 64 picks fell in the margin (T_eff < 3750 K, [C/M] > +0.5, ...);
an emulator trained with them was not better inside the box (docs/emulator.md).

The output is a design CSV (``id, split, labels..., committee_rms``; every row ``train``:
validation stays with the Sobol design) in greedy order, so any prefix is the best batch
of that size; ``specvit synthesis run --design FILE`` synthesises it like any design and
``specvit emulator train --design A B`` trains on both designs.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from specvit.errors import InputError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES, MAX_C_TO_O
from specvit.spectra.synthesis.design import DEFAULT_MARGIN, sobol_in_domain, training_box


def committee(data: dict, *, n_members: int = 5, config=None, seed: int = 0, log=print) -> list:
    """``n_members`` emulators, each trained without one fold of the training rows (seed ``config.seed + k``)."""
    from specvit.spectra.emulator_train import EmulatorTrainConfig, fold_models

    if n_members < 2:
        raise InputError("a committee needs at least 2 members", field="n_members", value=n_members)
    cfg = config or EmulatorTrainConfig()
    n_train = int((data["split"] != "val").sum())
    if n_train < 2 * n_members:
        raise InputError("too few training spectra for this committee", field="n_train", value=n_train)
    members = []
    t0 = time.time()
    for k, (part, model) in enumerate(fold_models(data, cfg, folds=n_members, seed=seed, vary_seed=True)):
        members.append(model)
        if log:
            log(f"committee member {k + 1}/{n_members}: {n_train - len(part)} spectra ({time.time() - t0:.0f} s)")
            t0 = time.time()
    return members


def disagreement(members: list, labels: np.ndarray, *, batch: int = 2048) -> np.ndarray:
    """Per label set: rms over pixels of the members' standard deviation of the normalised flux."""
    import warnings

    labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
    out = np.empty(len(labels))
    with warnings.catch_warnings():  # candidates in the margin are evaluated on purpose
        warnings.simplefilter("ignore", UserWarning)
        for i in range(0, len(labels), batch):
            pred = np.stack([m.normalized_flux(labels[i:i + batch], extrapolate=True) for m in members])
            out[i:i + batch] = np.sqrt(pred.var(axis=0).mean(axis=1))
    return out


def _scaled(labels: np.ndarray, box: dict) -> np.ndarray:
    lo = np.array([box[n][0] for n in LABEL_NAMES])
    hi = np.array([box[n][1] for n in LABEL_NAMES])
    return (labels - lo) / (hi - lo)


def greedy_select(candidates: np.ndarray, scores: np.ndarray, n: int, *, box: dict, exclusion: float = 0.1):
    """Indices of ``n`` candidates: highest score first, scores damped near each pick."""
    if not 1 <= n <= len(candidates):
        raise InputError("n must be between 1 and the number of candidates", field="n", value=n)
    if exclusion <= 0:
        raise InputError("exclusion radius must be > 0", field="exclusion", value=exclusion)
    x = _scaled(candidates, box)
    s = np.asarray(scores, dtype=np.float64).copy()
    picked = []
    for _ in range(n):
        j = int(np.argmax(s))
        picked.append(j)
        d2 = ((x - x[j]) ** 2).sum(axis=1)
        s *= 1.0 - np.exp(-0.5 * d2 / exclusion ** 2)
        s[j] = -np.inf
    return np.array(picked)


def refine_design(data: dict, *, n: int, seed: int, prefix: str = "r1", n_candidates: int = 8192,
                  n_members: int = 5, exclusion: float = 0.1, include_margin: bool = False, config=None,
                  max_c_to_o: float | None = MAX_C_TO_O, log=print) -> pd.DataFrame:
    """The ``n`` label sets of a refinement design (see module docstring), in greedy order.

    Candidates come from ``DEFAULT_LABEL_BOUNDS``; ``include_margin=True`` widens them to the
    training box (bounds + ``DEFAULT_MARGIN``), where the committee's spread is dominated by
    extrapolation. Candidates at C/O >= ``max_c_to_o`` (times the [C/M] margin with ``include_margin``)
    are left out (the physical domain, docs/emulator.md); None: no C/O limit (the behaviour before 2026-12-07).
    """
    margin = DEFAULT_MARGIN if include_margin else {}
    box = training_box(margin)
    cand_c_to_o = None if max_c_to_o is None else max_c_to_o * 10.0 ** margin.get("C_M", 0.0)
    cand = sobol_in_domain(n_candidates, box, seed, max_c_to_o=cand_c_to_o)
    members = committee(data, n_members=n_members, config=config, seed=seed, log=log)
    scores = disagreement(members, cand)
    idx = greedy_select(cand, scores, n, box=box, exclusion=exclusion)
    df = pd.DataFrame(np.round(cand[idx], 4), columns=list(LABEL_NAMES))
    df.insert(0, "split", "train")
    df.insert(0, "id", [f"{prefix}-{i:05d}" for i in range(n)])
    df["committee_rms"] = np.round(scores[idx], 6)
    df.attrs.update(seed=seed, method="query by committee (greedy, damped)", n_members=n_members,
                    n_candidates=n_candidates, exclusion=exclusion, n_train=int((data["split"] != "val").sum()),
                    candidate_score_median=float(np.median(scores)), candidate_score_max=float(scores.max()),
                    bounds=dict(DEFAULT_LABEL_BOUNDS), margin={k: margin.get(k, 0.0) for k in DEFAULT_MARGIN},
                    include_margin=include_margin, max_c_to_o=max_c_to_o, max_c_to_o_candidates=cand_c_to_o)
    if log:
        log(f"refine: {n} of {n_candidates} candidates; committee rms of the picks {scores[idx].min():.4f}-"
            f"{scores[idx].max():.4f} (all candidates: median {np.median(scores):.4f})")
    return df
