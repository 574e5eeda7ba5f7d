"""The optional error channel: estimated from the NOISY flux through the PFS observer (SPEC section 3 leakage trap)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from specvit.data import write_dataset
from specvit.data.torchdata import SpectraStream, observer_error_fn
from specvit.labels import LABEL_NAMES


@pytest.fixture(scope="module")
def observed(tmp_path_factory, toy_model):
    from specvit.observe import ObservingConfig, PFSObserver, draw_conditions

    rng = np.random.default_rng(0)
    n = 48
    lo = np.array([toy_model.bounds[k][0] for k in LABEL_NAMES])
    hi = np.array([toy_model.bounds[k][1] for k in LABEL_NAMES])
    labels = lo + (hi - lo) * rng.uniform(size=(n, len(LABEL_NAMES)))
    obs = PFSObserver(model_wave=toy_model.wave, model_resolution=toy_model.resolution)
    cond = draw_conditions(ObservingConfig(), n, rng)
    o = obs.observe(toy_model.flux(labels), cond)
    params = pd.concat([pd.DataFrame(labels, columns=list(LABEL_NAMES)), cond.reset_index(drop=True)], axis=1)
    params["id"] = np.arange(n)
    params["snr"] = o.snr
    params["norm_factor"] = o.norm_factor
    p = tmp_path_factory.mktemp("errch") / "obs.h5"
    write_dataset(p, wave=o.wave, flux=o.flux.astype(np.float32), error=o.error.astype(np.float32), params=params)
    return p, o


def test_error_channel_unbiased_and_from_noisy_counts(observed):
    p, o = observed
    s = SpectraStream(path=p, label_names=["log_g"], batch_size=16, train=True, chunk_rows=16, buffer_rows=48, seed=1)
    s.error_fn = observer_error_fn(s.src, s.noise_level)
    ratios, moved = [], []
    for b in s.iter_epoch(0):
        rows = b["rows"].numpy()
        est, true = b["error"].numpy(), o.error[rows]
        ratios.append(np.median(est / true, axis=1))
        moved.append(np.abs(est / true - 1).max())
    ratios = np.concatenate(ratios)
    assert np.all(np.abs(ratios - 1) < 0.05)  # unbiased per spectrum (median over pixels)
    assert max(moved) > 1e-3  # but not the stored model error: it follows the noisy counts


def test_error_channel_without_norm_factor_derives_it_from_mag(observed, tmp_path):
    """pfsspec files have no norm_factor: it is derived from the noisy flux and the mag column."""
    p, o = observed
    df = pd.read_hdf(p, "dataset/params")
    assert "mag" in df.columns
    q = tmp_path / "nonorm.h5"
    write_dataset(q, wave=o.wave, flux=o.flux.astype(np.float32), error=o.error.astype(np.float32),
                  params=df.drop(columns=["norm_factor"]))
    kw = dict(label_names=["log_g"], batch_size=16, train=True, chunk_rows=16, buffer_rows=48, seed=1)
    with_norm = SpectraStream(path=p, **kw)
    with_norm.error_fn = observer_error_fn(with_norm.src, 1.0)
    without = SpectraStream(path=q, **kw)
    without.error_fn = observer_error_fn(without.src, 1.0)
    for a, b in zip(with_norm.iter_epoch(0), without.iter_epoch(0)):
        np.testing.assert_array_equal(a["rows"].numpy(), b["rows"].numpy())
        ratio = np.median(b["error"].numpy() / a["error"].numpy(), axis=1)
        assert np.all(np.abs(ratio - 1) < 0.05)  # the normalisation of a noisy spectrum: a few % off


def test_error_channel_needs_norm_factor_or_mag(tmp_path):
    from test_train_data import write_dataset as write_toy

    write_toy(tmp_path / "x.h5", n_rows=8, n_pixels=16)
    df = pd.read_hdf(tmp_path / "x.h5", "dataset/params").drop(columns=["norm_factor", "mag"])
    df.to_hdf(tmp_path / "x.h5", key="dataset/params", format="table")
    s = SpectraStream(path=tmp_path / "x.h5", label_names=["log_g"], batch_size=4, train=True)
    from specvit.errors import InputError

    with pytest.raises(InputError, match="norm_factor.*'mag'"):
        observer_error_fn(s.src, 1.0)
