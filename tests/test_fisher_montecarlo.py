"""Monte-Carlo validation: the scatter of maximum-likelihood fits reaches the CRLB at high SNR."""
import numpy as np
import pandas as pd
import pytest

from specvit.fisher.jacobian import ForwardModel
from specvit.fisher.montecarlo import plot_validation, validate_crlb


def small_model():
    """The small ToyModel of these tests (also the model of docs/figures/fisher_mc_toy.png)."""
    from toymodel import ToyModel

    return ToyModel(wave_min=8400.0, wave_max=8700.0, step=0.5, n_lines=10)


@pytest.fixture(scope="module")
def fwd():
    return ForwardModel(small_model())


def test_ml_scatter_reaches_crlb_at_high_snr_and_departs_at_low_snr(fwd, tmp_path):
    theta = np.array([4800.0, 3.0, -1.0, 0.0, 0.0])
    mu = fwd.numpy(theta[None])[0]
    kw = dict(label="log_g", nuisance="3d", n_starts=1, max_iter=20)  # starts: box centre + the truth
    hi_df = validate_crlb(fwd, theta, {"snr200": mu / 200.0}, n_real=240, rng=np.random.default_rng(11), **kw)
    lo_df = validate_crlb(fwd, theta, {"snr3": mu / 3.0}, n_real=60, rng=np.random.default_rng(12), **kw)
    df = pd.concat([hi_df, lo_df], ignore_index=True)
    hi = df.set_index("key").loc["snr200"]
    lo = df.set_index("key").loc["snr3"]
    assert abs(hi["ratio"] - 1) < 0.10, hi.to_dict()
    assert abs(hi["bias"]) < 3 * hi["sigma_mc_se"] * np.sqrt(2) + 0.1 * hi["sigma_crlb"]
    assert hi["frac_at_bound"] == 0
    # at SNR 3 the CRLB (several dex) exceeds the log g box: fits pile up on the edges,
    # the scatter is truncated below sqrt(CRLB)
    assert lo["sigma_crlb"] > 1.0 and lo["frac_at_bound"] > 0.2 and lo["ratio"] < 0.9
    fig = plot_validation(df.assign(point="toy"))
    fig.savefig(tmp_path / "mc.png")
    assert (tmp_path / "mc.png").stat().st_size > 1000
