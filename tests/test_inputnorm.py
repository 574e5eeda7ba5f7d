"""Per-pixel input standardisation: fitted by the trainer on the training split, saved with the model."""
import h5py
import numpy as np
import pytest
import torch

from specvit.models import create_model
from specvit.models.inputnorm import InputStandardizer, input_standardizers
from specvit.models.io import load_model
from specvit.train import Trainer
from test_train import make_cfg
from test_train_data import write_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputnorm")
    write_dataset(d / "train.h5", n_rows=128, n_pixels=256, seed=0)
    write_dataset(d / "val.h5", n_rows=32, n_pixels=256, seed=1)
    return d


def test_unfitted_layer_is_identity_and_fit_sets_buffers():
    layer = InputStandardizer(n_pixels=4)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), x) and not bool(layer.fitted)
    layer.fit_(np.array([1.0, 2, 3, 4]), np.array([2.0, 0.0, 1, 1]))
    assert bool(layer.fitted)
    assert torch.allclose(layer(torch.ones(1, 4)), torch.tensor([[0.0, -1.0, -2.0, -3.0]]))  # zero std -> 1
    with pytest.raises(ValueError, match="pixels"):
        layer.fit_(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("name", ["mlp_small", "cnn_small", "specvit_tiny"])
def test_every_model_has_it_and_can_switch_it_off(name):
    assert len(input_standardizers(create_model(name, n_pixels=256))) == 1
    assert input_standardizers(create_model(name, n_pixels=256, input_norm=False)) == []


def test_trainer_fits_training_statistics_and_model_dir_keeps_them(files, tmp_path):
    cfg = make_cfg(files, tmp_path / "run", run={"epochs": 1})
    tr = Trainer(cfg)
    tr.fit()
    (layer,) = input_standardizers(tr.model)
    assert bool(layer.fitted)
    with h5py.File(files / "train.h5") as f:
        flux = f["dataset/arrays/flux/value"][:].astype(np.float64)
        err = f["dataset/arrays/error/value"][:].astype(np.float64)
    # mean of the noisy flux = mean of the noiseless flux within the noise of the mean
    tol = 4 * err.mean() / np.sqrt(len(flux))
    assert np.max(np.abs(layer.mean.numpy() - flux.mean(0))) < tol
    # std of the noisy flux^2 = signal variance + noise variance
    expect = np.sqrt(flux.var(0) + err.mean(0) ** 2)
    assert np.allclose(layer.std.numpy(), expect, rtol=0.2)
    model, _ = load_model(tmp_path / "run" / "model")
    (loaded,) = input_standardizers(model)
    assert bool(loaded.fitted) and torch.allclose(loaded.mean, layer.mean) and torch.allclose(loaded.std, layer.std)
