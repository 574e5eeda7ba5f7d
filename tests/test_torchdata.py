"""Streaming torch data: chunked reads, shuffling, rank sharding, on-the-fly noise, bounded memory."""
from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest
import torch

from specvit.observe.noise import fixed_normal
from specvit.data.torchdata import LabelScaler, SpectraStream
from specvit.errors import InputError
from test_train_data import write_dataset

N_PIX = 32


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = tmp_path_factory.mktemp("td") / "d.h5"
    write_dataset(p, n_rows=203, n_pixels=N_PIX, seed=0, error=0.05)
    return p


def stream(path, **kw):
    args = dict(path=path, label_names=["log_g"], batch_size=16, train=True, chunk_rows=20, buffer_rows=60, seed=3)
    args.update(kw)
    return SpectraStream(**args)


def noiseless(path, rows):
    with h5py.File(path) as f:
        flux = f["dataset/arrays/flux/value"][()]
        err = f["dataset/arrays/error/value"][()]
    return flux[rows], err[rows]


def test_train_epoch_is_a_shuffled_subset_without_repeats(path):
    s = stream(path)
    rows = np.concatenate([b["rows"].numpy() for b in s.iter_epoch(0)])
    assert len(rows) == (203 // 16) * 16 == s.batches_per_epoch() * 16
    assert len(np.unique(rows)) == len(rows) and rows.max() < 203
    assert not np.array_equal(rows, np.sort(rows))  # shuffled
    again = np.concatenate([b["rows"].numpy() for b in stream(path).iter_epoch(0)])
    other = np.concatenate([b["rows"].numpy() for b in s.iter_epoch(1)])
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    # order does not depend on the batch size (so gradient accumulation is exact)
    rows8 = np.concatenate([b["rows"].numpy() for b in stream(path, batch_size=8).iter_epoch(0)])
    assert np.array_equal(rows8[: len(rows)], rows)


def test_ranks_disjoint_equal_batches(path):
    per = [stream(path, rank=r, world_size=3) for r in range(3)]
    n = {s.batches_per_epoch() for s in per}
    assert n == {203 // (16 * 3)}
    rows = [np.concatenate([b["rows"].numpy() for b in s.iter_epoch(2)]) for s in per]
    assert all(len(r) == 4 * 16 for r in rows)
    chunks = [set(r // 20) for r in rows]  # rank sharding is chunk-wise (contiguous reads)
    assert not (chunks[0] & chunks[1]) and not (chunks[1] & chunks[2]) and not (chunks[0] & chunks[2])


def test_eval_every_row_once_over_ranks_in_order(path):
    rows = []
    for r in range(2):
        s = stream(path, train=False, rank=r, world_size=2, batch_size=10)
        b = [x["rows"].numpy() for x in s.iter_epoch(0)]
        rows.append(np.concatenate(b))
    assert np.array_equal(np.concatenate(rows), np.arange(203))


def test_training_noise_fresh_and_right_size(path):
    s = stream(path, noise_level=2.0)
    b0 = list(s.iter_epoch(0))
    rows = np.concatenate([b["rows"].numpy() for b in b0])
    noisy = np.concatenate([b["flux"].numpy() for b in b0])
    flux, err = noiseless(path, rows)
    z = (noisy - flux) / (2.0 * err)
    assert abs(z.mean()) < 0.03 and z.std() == pytest.approx(1.0, abs=0.03)
    b1 = {int(r): f for b in s.iter_epoch(1) for r, f in zip(b["rows"], b["flux"].numpy())}
    common = [i for i, r in enumerate(rows) if int(r) in b1]
    assert common and not np.allclose(noisy[common[0]], b1[int(rows[common[0]])])  # new draw next epoch
    quiet = np.concatenate([b["flux"].numpy() for b in stream(path, noise_level=0.0).iter_epoch(0)])
    assert np.array_equal(quiet, flux)


def test_eval_noise_fixed_per_row(path):
    a = {int(r): f for b in stream(path, train=False, batch_size=7, seed=11).iter_epoch(0)
         for r, f in zip(b["rows"], b["flux"].numpy())}
    b = {}
    for rank in range(2):
        for x in stream(path, train=False, batch_size=50, seed=11, rank=rank, world_size=2).iter_epoch(5):
            b.update({int(r): f for r, f in zip(x["rows"], x["flux"].numpy())})
    assert a.keys() == b.keys() == set(range(203))
    assert all(np.array_equal(a[i], b[i]) for i in a)
    flux, err = noiseless(path, [17])
    assert np.allclose(a[17], flux[0] + err[0] * fixed_normal([17], N_PIX, 11)[0], atol=1e-6)


def test_resume_offset_gives_the_same_batches(path):
    s = stream(path)
    full = list(s.iter_epoch(4))
    tail = list(s.iter_epoch(4, start_batch=5))
    assert len(tail) == len(full) - 5
    for a, b in zip(full[5:], tail):
        assert torch.equal(a["rows"], b["rows"]) and torch.equal(a["flux"], b["flux"])
    s.set_epoch(4, start_batch=7)  # DataLoader path
    first = next(iter(torch.utils.data.DataLoader(s, batch_size=None)))
    assert torch.equal(first["flux"], full[7]["flux"])


def test_labels_zscored_with_training_scaler(path):
    s = stream(path, label_names=["logg", "teff"], max_rows=100)
    assert s.label_names == ("log_g", "T_eff") and s.n_rows == 100
    assert np.allclose(s.scaler.mean, s.labels.mean(axis=0)) and len(s.labels) == 100
    b = next(s.iter_epoch(0))
    assert b["rows"].max() < 100
    assert torch.allclose(b["target"].double(), (b["labels"] - torch.tensor(s.scaler.mean)) / torch.tensor(s.scaler.std),
                          atol=1e-6)
    v = stream(path, label_names=["log_g", "T_eff"], train=False, scaler=s.scaler)
    assert v.scaler is s.scaler
    back = LabelScaler.from_dict(s.scaler.to_dict())
    assert np.allclose(back.inverse(back.transform(s.labels)), s.labels)


def _peak_bytes(p, n_rows):
    write_dataset(p, n_rows=n_rows, n_pixels=4096, seed=2)
    s = SpectraStream(path=p, label_names=["log_g"], batch_size=32, train=True, chunk_rows=32, buffer_rows=64, seed=0)
    tracemalloc.start()
    n = 0
    for b in s.iter_epoch(0):
        n += len(b["rows"])
        del b
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == n_rows // 32 * 32
    assert s.peak_rows_in_memory <= 64 + 32
    return peak


def test_streaming_memory_bounded_by_buffer(tmp_path):
    """Peak memory while streaming depends on the buffer (64 rows), not on the file size."""
    small = _peak_bytes(tmp_path / "small.h5", 400)  # 6.6 MB of flux
    big = _peak_bytes(tmp_path / "big.h5", 2400)  # 39 MB of flux
    buffer_bytes = 2 * (64 + 32) * 4096 * 4  # flux + error of one buffer + one batch
    assert big < 1.1 * small + 256 * 1024, (small, big)
    assert big < 4 * buffer_bytes, (big, buffer_bytes)
    assert big < 0.25 * 2400 * 4096 * 4  # far below the file size


def test_nan_flux_error_names_file_and_row(tmp_path):
    p = tmp_path / "nan.h5"
    write_dataset(p, n_rows=40, n_pixels=N_PIX, nan_row=13)
    with pytest.raises(InputError, match="row 13") as e:
        list(stream(p, train=False).iter_epoch(0))
    assert "nan.h5" in str(e.value) and "flux" in str(e.value)


def test_missing_label_and_bad_arguments(tmp_path, path):
    p = tmp_path / "nolab.h5"
    write_dataset(p, n_rows=40, n_pixels=N_PIX, drop_label="T_eff")
    with pytest.raises(InputError, match="missing label column") as e:
        stream(p, label_names=["T_eff"])
    assert "T_eff" in str(e.value) and "nolab.h5" in str(e.value)
    with pytest.raises(InputError, match="unknown label"):
        stream(path, label_names=["gravity"])
    with pytest.raises(InputError, match="noise_level"):
        stream(path, noise_level=float("nan"))
    with pytest.raises(InputError, match="global batch"):
        stream(path, batch_size=300).batches_per_epoch()
    with pytest.raises(InputError):
        stream(tmp_path / "absent.h5")


def test_error_channel_function_gets_noisy_flux(path):
    seen = {}

    def error_fn(noisy, rows):
        seen["noisy"] = noisy.copy()
        return np.full_like(noisy, 0.1)

    s = stream(path, error_fn=error_fn)
    b = next(s.iter_epoch(0))
    assert np.array_equal(seen["noisy"], b["flux"].numpy())  # estimated from the noisy flux, not the stored error
    assert b["error"].shape == b["flux"].shape


def test_prefetch_same_batches_and_errors(path, tmp_path):
    from specvit.data.torchdata import prefetch

    s = stream(path)
    plain = list(s.iter_epoch(3))
    ahead = list(prefetch(s.iter_epoch(3), 3))
    assert len(plain) == len(ahead)
    assert all(torch.equal(a["flux"], b["flux"]) and torch.equal(a["rows"], b["rows"]) for a, b in zip(plain, ahead))
    p = tmp_path / "nan.h5"
    write_dataset(p, n_rows=40, n_pixels=N_PIX, nan_row=21)
    it = prefetch(stream(p, train=False).iter_epoch(0), 2)
    with pytest.raises(InputError, match="row 21"):
        list(it)
    early = prefetch(s.iter_epoch(0), 1)
    next(early)
    early.close()  # stops the reader thread although the epoch is not finished
    assert not early._thread.is_alive()
