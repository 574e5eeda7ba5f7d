"""Stream spectra from dataset files into torch batches, adding noise on the fly.

The dataset files (SPEC section 4) store NOISELESS flux and the 1-sigma error
at noise level 1; a consumer draws ``noisy = flux + noise_level * error * N(0, 1)``:

* training: fresh noise for every batch, from a generator keyed by
  ``(seed, epoch, rank, batch)`` — the stream position *is* the generator
  state, so a checkpoint that stores the position resumes the exact draws;
* validation / test: fixed noise per row (keyed by ``(seed, row)``), the same
  whatever the batch size, order or number of processes.

Reading never loads the whole file. The rows ``[0, n_rows)`` are cut into
contiguous *chunks* of ``chunk_rows``; an epoch visits the chunks in a seeded
random order, ``buffer_rows // chunk_rows`` chunks at a time are read (one
contiguous HDF5 slice each) into a *buffer* whose rows are shuffled, and
batches are cut from consecutive buffers. With several processes (DDP) rank
``r`` takes chunks ``r, r + W, r + 2W, ...`` of the epoch's chunk order (like
``DistributedSampler``, but chunk-wise so reads stay contiguous) and every
rank yields the same number of batches (its share wraps around if short).
Rows are gathered from the buffer straight into each batch, so at most one
buffer plus one batch of spectra (plus the batches a :class:`Prefetch` thread
reads ahead) is in memory. Training noise is drawn with torch on the stream's
``device`` (the GPU when training on one).

Labels are selected by name and z-scored with a :class:`LabelScaler` fitted
on the training split (saved with the model).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from specvit.data.checks import patch_masked_errors
from specvit.observe.noise import batch_noise, fixed_normal
from specvit.errors import InputError
from specvit.labels import canonical_label

_FLUX_KEY = "dataset/arrays/flux/value"
_ERROR_KEY = "dataset/arrays/error/value"


# --------------------------------------------------------------------------- labels
@dataclasses.dataclass
class LabelScaler:
    """Per-label z-scoring ``z = (y - mean) / std`` (label units in, unitless out)."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, labels: np.ndarray, names: Sequence[str]) -> "LabelScaler":
        labels = np.asarray(labels, dtype=np.float64)
        std = labels.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant label is only centred
        return cls(tuple(names), labels.mean(axis=0), std)

    def transform(self, y):
        return (y - self._like(self.mean, y)) / self._like(self.std, y)

    def inverse(self, z):
        return z * self._like(self.std, z) + self._like(self.mean, z)

    def inverse_scale(self, s):
        """Scale a spread (e.g. sigma in z units) back to label units."""
        return s * self._like(self.std, s)

    @staticmethod
    def _like(a: np.ndarray, x):
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(a, dtype=x.dtype, device=x.device)
        return a

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelScaler":
        return cls(tuple(d["names"]), np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


# --------------------------------------------------------------------------- file access
def open_source(path):
    """Open a dataset lazily (``specvit.data.open_dataset``: a file, a list of shards, a directory or a glob)."""
    from specvit.data.pfsspec import open_dataset

    return open_dataset(path)


def _describe(path) -> str:
    if isinstance(path, (list, tuple)):
        return ",".join(str(p) for p in path)
    return str(path)


def select_labels(params, names: Sequence[str], *, n_rows: int, source) -> np.ndarray:
    """Label columns ``names`` of the first ``n_rows`` rows as float64 (n_rows, L); clear error if missing/NaN."""
    out = np.empty((n_rows, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        if name not in params.columns:
            raise InputError(f"missing label column (columns: {', '.join(map(str, params.columns))})",
                             file=source, field=f"dataset/params/{name}")
        out[:, j] = params[name].to_numpy(dtype=np.float64)[:n_rows]
    bad = ~np.isfinite(out)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"non-finite label in row {i}", file=source, field=f"dataset/params/{names[j]}",
                         value=float(out[i, j]))
    return out


# --------------------------------------------------------------------------- the stream
@dataclasses.dataclass
class _Buffer:
    chunks: list[tuple[int, int]]  # contiguous [start, stop) row ranges, read one slice each
    perm: np.ndarray | None  # order of the concatenated rows (None = as read)

    @property
    def rows(self) -> np.ndarray:
        r = np.concatenate([np.arange(a, b) for a, b in self.chunks])
        return r if self.perm is None else r[self.perm]

    def __len__(self):
        return sum(b - a for a, b in self.chunks)


class SpectraStream(torch.utils.data.IterableDataset):
    """Batches ``{"flux", "target", "labels", "rows", ["error"]}`` streamed from a dataset file.

    Parameters (keyword-only)
    ----------
    path : dataset file (or whatever ``open_dataset`` accepts: list of shards, directory).
    label_names : label columns (aliases such as ``logg`` accepted).
    batch_size : spectra per batch (per process).
    train : True = shuffled chunks/buffers, fresh noise per batch, equal batches per rank, drop last partial batch;
        False = rows in file order, fixed per-row noise, every row exactly once over all ranks.
    noise_level : multiplies the stored 1-sigma error (1 = the simulated exposure); 0 = noiseless.
    seed : keys the chunk order, the buffer shuffles and the noise.
    scaler : LabelScaler for the ``target`` (z-scored) labels; None = fit on this stream's rows.
    chunk_rows, buffer_rows : contiguous read size and shuffle-buffer size, in spectra.
    max_rows : use only the first ``max_rows`` rows (prefix subsets for scaling curves).
    rank, world_size : this process's share (DDP).
    device : where the batch tensors (and the training noise) are made; "cuda" draws the noise on the GPU.
    error_fn : optional ``f(noisy_flux (B,P) ndarray, rows (B,)) -> error (B,P)`` giving a leakage-safe
        error channel estimated from the noisy data (never the stored noiseless-model error: SPEC section 3).
    """

    def __init__(self, *, path, label_names: Sequence[str], batch_size: int, train: bool, noise_level: float = 1.0,
                 seed: int = 0, scaler: LabelScaler | None = None, chunk_rows: int = 1024, buffer_rows: int = 8192,
                 max_rows: int | None = None, rank: int = 0, world_size: int = 1,
                 error_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, source=None,
                 device="cpu"):
        super().__init__()
        if batch_size < 1 or chunk_rows < 1 or buffer_rows < 1:
            raise InputError("batch_size, chunk_rows and buffer_rows must be >= 1", field="batch_size/chunk_rows/buffer_rows",
                             value=(batch_size, chunk_rows, buffer_rows))
        if not (noise_level >= 0 and math.isfinite(noise_level)):
            raise InputError("noise_level must be a finite number >= 0", field="noise_level", value=noise_level)
        self.path = path
        self.source_name = _describe(path)
        self.src = source if source is not None else open_source(path)
        self.label_names = tuple(canonical_label(n) for n in label_names)
        n_file = len(self.src)
        if max_rows is not None and max_rows < 1:
            raise InputError("max_rows must be >= 1", field="max_rows", value=max_rows)
        self.n_rows = n_file if max_rows is None else min(int(max_rows), n_file)
        if self.n_rows == 0:
            raise InputError("dataset has no rows", file=self.source_name, field="dataset/arrays/flux/value")
        self.labels = select_labels(self.src.params, self.label_names, n_rows=self.n_rows, source=self.source_name)
        self.scaler = scaler if scaler is not None else LabelScaler.fit(self.labels, self.label_names)
        if tuple(self.scaler.names) != self.label_names:
            raise InputError("label scaler was fitted on other labels", field="labels",
                             value=(list(self.scaler.names), list(self.label_names)))
        self.n_pixels = int(self.src.flux.shape[1])
        self.batch_size, self.train = int(batch_size), bool(train)
        self.noise_level, self.seed = float(noise_level), int(seed)
        self.chunk_rows = int(chunk_rows)
        self.chunks_per_buffer = max(1, int(buffer_rows) // self.chunk_rows)
        self.rank, self.world_size = int(rank), int(world_size)
        self.error_fn = error_fn
        self.device = torch.device(device)
        self.epoch, self.start_batch = 0, 0
        #: largest number of spectra held at once (buffer + carried-over rows), for memory checks
        self.peak_rows_in_memory = 0
        #: masked error pixels (NaN, inf, zero, negative) patched so far (masked-pixel policy, docs/data.md)
        self.masked_pixels_read = 0

    @property
    def wave(self) -> np.ndarray:
        """Wavelengths of the pixels, Angstrom (the dataset's grid)."""
        return np.asarray(self.src.wave, dtype=np.float64)

    # ----------------------------------------------------------------- plan
    def __len__(self) -> int:
        return self.batches_per_epoch()

    def batches_per_epoch(self) -> int:
        if self.train:
            n = self.n_rows // (self.batch_size * self.world_size)
            if n == 0:
                raise InputError("fewer training rows than one global batch", file=self.source_name,
                                 field="batch_size", value=(self.n_rows, self.batch_size, self.world_size))
            return n
        return math.ceil(len(self._eval_rows()) / self.batch_size)

    def _eval_rows(self) -> range:
        per = math.ceil(self.n_rows / self.world_size)
        return range(min(self.rank * per, self.n_rows), min((self.rank + 1) * per, self.n_rows))

    def plan(self, epoch: int) -> list[_Buffer]:
        """The buffers this rank reads in ``epoch``, in order (a pure function of seed, epoch, rank)."""
        if not self.train:
            r = self._eval_rows()
            return [_Buffer([(a, min(a + self.chunk_rows, r.stop))], None) for a in range(r.start, r.stop, self.chunk_rows)]
        starts = np.arange(0, self.n_rows, self.chunk_rows)
        order = np.random.default_rng([self.seed, int(epoch), 0xC4]).permutation(len(starts))
        mine = order[self.rank::self.world_size]
        if len(mine) == 0:  # more ranks than chunks: take a chunk anyway (wraps)
            mine = order[self.rank % len(order):][:1]
        rng = np.random.default_rng([self.seed, int(epoch), self.rank, 0xB0])
        buffers = []
        for i in range(0, len(mine), self.chunks_per_buffer):
            chunks = sorted((int(starts[c]), int(min(starts[c] + self.chunk_rows, self.n_rows)))
                            for c in mine[i:i + self.chunks_per_buffer])
            n = sum(b - a for a, b in chunks)
            buffers.append(_Buffer(chunks, rng.permutation(n)))
        return buffers

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Row indices of every batch this rank yields in ``epoch``, concatenated (for tests/inspection)."""
        rows = np.concatenate([b.rows for b in self.plan(epoch)])
        if self.train:
            need = self.batches_per_epoch() * self.batch_size
            rows = np.resize(rows, need) if need > len(rows) else rows[:need]
        return rows

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Position the next ``iter()`` at batch ``start_batch`` of ``epoch`` (resume)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    # ----------------------------------------------------------------- reading
    def _read(self, buf: _Buffer):
        """Read one buffer (contiguous slices, file order); returns flux, error, rows and the emit order."""
        n = len(buf)
        flux = np.empty((n, self.n_pixels), dtype=np.float32)
        error = np.empty((n, self.n_pixels), dtype=np.float32)
        i = 0
        for a, b in buf.chunks:  # one contiguous slice per chunk, straight into the buffer
            flux[i:i + b - a] = self.src.flux[a:b]
            error[i:i + b - a] = self.src.error[a:b]
            i += b - a
        rows = np.concatenate([np.arange(a, b) for a, b in buf.chunks])
        # one pass each, no full-size temporaries: NaN/inf propagate into the sum, NaN into the min
        bad = ~np.isfinite(flux.sum(axis=1, dtype=np.float64))
        if bad.any():
            raise InputError("NaN or inf in flux", file=self.source_name, field=_FLUX_KEY,
                             value=f"row {int(rows[np.argmax(bad)])}")
        bad = ~(error.min(axis=1) > 0) | ~np.isfinite(error.sum(axis=1, dtype=np.float64))
        if bad.any():  # suspect rows: the masked-pixel policy (specvit.data.checks) patches their errors
            sub, pix = patch_masked_errors(error[bad])
            empty = pix.all(axis=1)
            if empty.any():
                row = int(rows[np.flatnonzero(bad)[np.argmax(empty)]])
                raise InputError("no usable error pixel (every pixel NaN, inf, zero or negative)",
                                 file=self.source_name, field=_ERROR_KEY, value=f"row {row}")
            error[bad] = sub
            self.masked_pixels_read += int(pix.sum())
        order = buf.perm if buf.perm is not None else np.arange(n)
        return flux, error, rows, order

    def _blocks_from(self, epoch: int, start_row: int):
        """Buffers of this rank's epoch stream from position ``start_row`` on (wrapping): (flux, error, rows, order)."""
        plan = self.plan(epoch)
        sizes = np.array([len(b) for b in plan])
        ends = np.cumsum(sizes)
        pos = start_row
        while True:
            cycle_pos = pos % int(ends[-1])
            i = int(np.searchsorted(ends, cycle_pos, side="right"))
            skip = cycle_pos - int(ends[i] - sizes[i])
            flux, error, rows, order = self._read(plan[i])
            yield flux, error, rows, order[skip:]
            pos += int(sizes[i]) - skip

    def _batches(self, epoch: int, start_batch: int) -> Iterator[dict]:
        """Batches cut from consecutive buffers; rows are gathered (one copy) straight into the batch."""
        n_batches = self.batches_per_epoch()
        B = self.batch_size
        if start_batch >= n_batches:
            return
        eval_stop = len(self._eval_rows())
        blocks = self._blocks_from(epoch, start_batch * B)
        cur, pos = None, 0
        for b in range(start_batch, n_batches):
            want = B if self.train else min(B, eval_stop - b * B)
            pieces, have = [], 0
            while have < want:
                if cur is None or pos >= len(cur[3]):
                    cur, pos = None, 0  # drop the old buffer before reading the next one
                    cur = next(blocks)
                    self.peak_rows_in_memory = max(self.peak_rows_in_memory, len(cur[0]) + have)
                idx = cur[3][pos:pos + want - have]
                pieces.append((cur[0][idx], cur[1][idx], cur[2][idx]))
                pos += len(idx)
                have += len(idx)
            flux, error, rows = (np.concatenate(x) if len(pieces) > 1 else x[0] for x in zip(*pieces))
            yield self._make_batch(flux, error, rows, epoch, b)

    def _make_batch(self, flux, error, rows, epoch, b) -> dict:
        flux_t, err_t = torch.from_numpy(flux), torch.from_numpy(error)
        if self.device.type != "cpu":
            flux_t, err_t = flux_t.to(self.device), err_t.to(self.device)
        if self.noise_level > 0:
            if self.train:
                z = batch_noise(self.seed, epoch, self.rank, b, tuple(flux.shape), device=self.device)
            else:
                z = torch.from_numpy(fixed_normal(rows, flux.shape[1], self.seed, dtype=np.float32)).to(self.device)
            flux_t = flux_t + self.noise_level * err_t * z
        labels = self.labels[rows]
        out = {
            "flux": flux_t,
            "target": torch.from_numpy(self.scaler.transform(labels).astype(np.float32)),
            "labels": torch.from_numpy(labels),
            "rows": torch.from_numpy(rows.astype(np.int64)),
        }
        if self.error_fn is not None:
            noisy = flux_t.cpu().numpy()
            out["error"] = torch.from_numpy(np.asarray(self.error_fn(noisy, rows), dtype=np.float32)).to(self.device)
        return out

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:  # every worker would yield the same stream
            raise InputError("SpectraStream reads in one process; use DataLoader(num_workers<=1) (it prefetches with "
                             "a thread: data.prefetch_batches)", field="num_workers", value=info.num_workers)
        start, self.start_batch = self.start_batch, 0  # a resume offset applies to one pass only
        return self._batches(self.epoch, start)

    def iter_epoch(self, epoch: int, start_batch: int = 0):
        return self._batches(epoch, start_batch)

    # ----------------------------------------------------------------- extras
    def snr(self, rows) -> np.ndarray:
        """Per-spectrum SNR at this stream's noise level: the ``snr`` column / noise_level (inf if noiseless)."""
        params = self.src.params
        if "snr" not in params.columns:
            return np.full(len(rows), np.nan)
        s = params["snr"].to_numpy(dtype=np.float64)[np.asarray(rows)]
        return s / self.noise_level if self.noise_level > 0 else np.full(len(rows), np.inf)


def observer_error_fn(src, noise_level: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Leakage-safe error channel via ``PFSObserver.error_from_noisy`` (needs observing columns in params).

    The error is estimated from the NOISY flux (counts), never taken from the stored
    error array, which was computed from the noiseless model (SPEC section 3, leakage trap).

    The per-spectrum normalisation (normalised flux = F_lambda * norm_factor) is the ``norm_factor``
    column when the file has one (specvit simulate writes it). pfsspec files do not: then it is
    derived per batch from the NOISY flux and the catalogue magnitude, ``norm_factor = 10**(-0.4 *
    (m_i(noisy) - mag))`` with m_i the synthetic HSC i magnitude (:class:`SyntheticPhotometry`), so
    the file needs the ``mag`` column instead.
    """
    from specvit.observe import PFSObserver  # type: ignore[attr-defined]

    params = src.params
    source = str(getattr(src, "path", ""))
    has_norm = "norm_factor" in params.columns
    if not has_norm and "mag" not in params.columns:
        raise InputError("the error channel needs the 'norm_factor' column, or the 'mag' column to derive it from "
                         "the noisy flux (pfsspec files)", file=source, field="dataset/params/norm_factor")
    wave = np.asarray(src.wave, dtype=np.float64)
    obs = PFSObserver(model_wave=wave, model_resolution=1e6, model_medium="vacuum")
    if has_norm:
        norm = params["norm_factor"].to_numpy(dtype=np.float64)
    else:
        from specvit.observe.photometry import SyntheticPhotometry

        phot = SyntheticPhotometry(wave)
        mag = params["mag"].to_numpy(dtype=np.float64)

    def fn(noisy_flux: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        cond = params.iloc[rows].reset_index(drop=True)
        if has_norm:
            nf = norm[rows]
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                nf = 10.0 ** (-0.4 * (phot.ab_mag(np.asarray(noisy_flux, dtype=np.float64)) - mag[rows]))
            bad = ~(np.isfinite(nf) & (nf > 0))
            if bad.any():
                raise InputError("cannot derive norm_factor: the noisy flux has no positive i-band flux, or mag is "
                                 "not finite", file=source, field="dataset/params/mag",
                                 value=f"row {int(rows[np.argmax(bad)])}")
        return np.asarray(obs.error_from_noisy(noisy_flux, cond, nf), dtype=np.float32)

    return fn


class Prefetch:
    """Run an iterator in a background thread, up to ``depth`` items ahead (same items, same order).

    Reading HDF5 chunks, shuffling and drawing noise then overlap with the model's
    forward/backward (torch releases the GIL). The data stream is a pure function of
    its position, so prefetching changes timing only, never the batches. Exceptions
    (e.g. NaN in flux) are re-raised in the consumer; ``close()`` stops the thread.
    """

    _END = object()

    def __init__(self, iterator, depth: int = 2, *, pin_memory: bool = False):
        import queue
        import threading

        self._q: "queue.Queue" = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._pin = pin_memory
        self._thread = threading.Thread(target=self._run, args=(iter(iterator),), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it) -> None:
        try:
            for item in it:
                if self._pin:
                    item = {k: v.pin_memory() if v.device.type == "cpu" else v for k, v in item.items()}
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # hand the error to the consumer
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            self._q.put(self._END)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def prefetch(iterator, depth: int, *, pin_memory: bool = False):
    """``Prefetch(iterator, depth)`` if depth > 0, else the iterator itself."""
    return Prefetch(iterator, depth, pin_memory=pin_memory) if depth > 0 else iter(iterator)
