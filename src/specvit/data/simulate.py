"""``specvit simulate``: labels + observing conditions -> model -> PFS observation -> pfsspec dataset.

Pipeline per chunk of rows (vectorised over the chunk)::

    rng = Generator(PCG64(SeedSequence(seed, spawn_key=(shard, chunk))))
    labels     ~ per-axis uniform or beta(a, b) over the label box,    (LabelPrior)
                 restricted to C/O < max_c_to_o (rejection sampling)
    conditions ~ draw_conditions(ObservingConfig)                      (specvit.observe)
    F_lambda   = model.flux(labels)   (grids: linear / spline / nearest; draws that hit
                                       invalid nodes are redrawn)
    obs        = ForwardModel.observe(labels, conditions)  -> flux, error (normalised), snr  (specvit.observe.forward)
    -> rows [start, stop) of the dataset file

Every chunk has its own seed stream, so the file is identical for any number
of workers, and a killed run resumes where it stopped (finished chunks are
recorded in the partial file ``.<name>.partial``; rerun the same command).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from specvit.config import config_to_dict, provenance
from specvit.errors import ConfigError, InputError, OutputError, SpecvitError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES, MAX_C_TO_O, outside_domain
from specvit.observe.config import InstrumentConfig, ObservingConfig

SHARD_FIELD = "{shard}"


@dataclass
class LabelDist:
    """Distribution of one label: ``uniform`` on [low, high] or ``beta`` (beta_a, beta_b) scaled to it."""

    low: float
    high: float
    dist: Literal["uniform", "beta"] = "uniform"
    beta_a: float = 0.7
    beta_b: float = 0.7

    def __post_init__(self):
        for name in ("low", "high", "beta_a", "beta_b"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ConfigError("must be a finite number", field=name, value=v)
        if not self.low <= self.high:
            raise ConfigError("low > high", field="low", value=[self.low, self.high])
        if not (self.beta_a > 0 and self.beta_b > 0):
            raise ConfigError("beta parameters must be > 0", field="beta_a", value=[self.beta_a, self.beta_b])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.beta(self.beta_a, self.beta_b, n) if self.dist == "beta" else rng.random(n)
        return self.low + u * (self.high - self.low)


def _dist(name: str) -> LabelDist:
    lo, hi = DEFAULT_LABEL_BOUNDS[name]
    return LabelDist(lo, hi)


@dataclass
class LabelPrior:
    """Label box (SPEC defaults): T_eff K, log_g dex, M_H dex, a_M dex, C_M dex, and the joint constraint
    C/O < ``max_c_to_o`` (default 1, :data:`specvit.labels.MAX_C_TO_O`; ``null``: the whole box).

    The per-label distributions are drawn independently and label sets with C/O >= ``max_c_to_o``
    (C/O = 0.537 * 10**(C_M - a_M), :func:`specvit.labels.c_to_o`) are redrawn (rejection sampling,
    deterministic for a seed). With the default box this removes 12.3 % of the uniform box, all with
    C_M - a_M > 0.27, so a_M and C_M are no longer uniform nor independent (docs/data.md).
    """

    T_eff: LabelDist = field(default_factory=lambda: _dist("T_eff"))
    log_g: LabelDist = field(default_factory=lambda: _dist("log_g"))
    M_H: LabelDist = field(default_factory=lambda: _dist("M_H"))
    a_M: LabelDist = field(default_factory=lambda: _dist("a_M"))
    C_M: LabelDist = field(default_factory=lambda: _dist("C_M"))
    max_c_to_o: float | None = MAX_C_TO_O

    def __post_init__(self):
        v = self.max_c_to_o
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0):
            raise ConfigError("must be a number > 0 or null", field="max_c_to_o", value=v)

    def sample(self, rng: np.random.Generator, n: int, label_names=LABEL_NAMES, *,
               max_rounds: int = 1000) -> np.ndarray:
        """(n, L) label sets in ``label_names`` order: each label from its distribution, label sets
        outside the C/O limit redrawn (all labels of the row), in rounds, from ``rng`` (deterministic)."""
        out = np.empty((n, len(label_names)))
        filled = 0
        for _ in range(max_rounds):
            m = n - filled
            if m == 0:
                return out
            lab = np.stack([getattr(self, name).sample(rng, m) for name in label_names], axis=1)
            lab = lab[~outside_domain(lab, label_names, max_c_to_o=self.max_c_to_o)]
            out[filled:filled + len(lab)] = lab
            filled += len(lab)
        if filled < n:
            raise ConfigError(f"fewer than {n} label sets with C/O < max_c_to_o after {max_rounds} rounds; the "
                              "label box lies (almost) entirely at C/O >= max_c_to_o", field="labels.max_c_to_o",
                              value=self.max_c_to_o)
        return out


@dataclass
class SimulateConfig:
    """Config of ``specvit simulate`` (YAML file and/or ``--set key=value``).

    model : "default" (the package's embedded spectral model) or the path of a
        pfsspec grid HDF5 file (:class:`specvit.spectra.grid.RegularGrid`).
    interpolation : grid interpolation (``spline`` = the paper's mode).
    wave_range_A : wavelength range read from a grid file, Angstrom (memory).
    grid_pad_nodes : grid nodes read beyond the label box on each side (spline support; memory).
    chunk_size : rows per chunk (one seed stream, one write, one progress step).
    dtype : stored array type (the paper's files were float64).
    max_redraws : rounds of redrawing labels that hit invalid grid nodes.
    """

    labels: LabelPrior = field(default_factory=LabelPrior)
    observing: ObservingConfig = field(default_factory=ObservingConfig)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    model: str = "default"
    interpolation: Literal["linear", "spline", "nearest"] = "spline"
    wave_range_A: tuple[float, float] = (6900.0, 9100.0)
    grid_pad_nodes: int = 2
    chunk_size: int = 1024
    dtype: Literal["float32", "float64"] = "float32"
    max_redraws: int = 100

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ConfigError("must be >= 1", field="chunk_size", value=self.chunk_size)
        if self.max_redraws < 0:
            raise ConfigError("must be >= 0", field="max_redraws", value=self.max_redraws)
        # every observing range inside the valid range of its column (the draw checks the same, but only
        # after the run has started), the magnitude inside MAG_RANGE
        from specvit.data.checks import MAG_RANGE

        try:
            from specvit.observe.conditions import _VALID
            from specvit.observe.config import _CFG_TO_COLUMN
        except ImportError:  # pragma: no cover - observe reorganised: the draw still checks
            _VALID, _CFG_TO_COLUMN = {}, {}
        for name, (a, b) in self.observing.ranges().items():
            lo, hi = MAG_RANGE if name == "mag" else _VALID.get(_CFG_TO_COLUMN.get(name, name), (-np.inf, np.inf))
            if not (lo <= a and b <= hi):
                what = "HSC i AB magnitudes " if name == "mag" else ""
                raise ConfigError(f"must be {what}in [{lo:g}, {hi:g}]", field=f"observing.{name}",
                                  value=getattr(self.observing, name))


# --------------------------------------------------------------------------- model
def _grid_kwargs(cfg: SimulateConfig) -> dict:
    """How to read a grid ``cfg.model``: the wavelength range and the prior box (plus padding), the interpolation."""
    bounds = {k: (getattr(cfg.labels, k).low, getattr(cfg.labels, k).high) for k in LABEL_NAMES}
    return dict(wave_range_A=cfg.wave_range_A, label_bounds=bounds, interpolation=cfg.interpolation,
                pad_nodes=cfg.grid_pad_nodes)


def check_prior(cfg: SimulateConfig, model) -> None:
    for name in model.label_names:
        if name not in LABEL_NAMES:
            continue
        d = getattr(cfg.labels, name)
        lo, hi = model.bounds[name]
        if d.low < lo - 1e-9 or d.high > hi + 1e-9:
            raise ConfigError(f"label range [{d.low}, {d.high}] exceeds the spectral model's [{lo}, {hi}]",
                              field=f"labels.{name}", value=[d.low, d.high])
    limit = getattr(model, "max_c_to_o", None)
    prior = cfg.labels.max_c_to_o
    if limit is not None and (prior is None or prior > limit + 1e-12):
        raise ConfigError(f"the spectral model is valid only at C/O < {limit:g}; the prior must not exceed it "
                          "(docs/emulator.md, 'Physical domain')", field="labels.max_c_to_o", value=prior)
    unknown = [n for n in model.label_names if n not in LABEL_NAMES]
    if unknown:
        raise ConfigError("the spectral model has labels simulate cannot sample", field="model", value=unknown)


# --------------------------------------------------------------------------- one chunk
class ChunkSimulator:
    """Everything needed to make one chunk: the model, the observer and the config."""

    def __init__(self, cfg: SimulateConfig, model=None):
        from specvit.observe.forward import ForwardModel
        from specvit.spectra import load_spectral_model

        self.cfg = cfg
        self.model = load_spectral_model(cfg.model, **_grid_kwargs(cfg)) if model is None else model
        check_prior(cfg, self.model)
        self.forward = ForwardModel.for_model(self.model, cfg.instrument)
        self.observer = self.forward.observer
        self.is_grid = hasattr(self.model, "interpolate")

    def _sample_labels(self, rng, n) -> np.ndarray:
        return self.cfg.labels.sample(rng, n, self.model.label_names)

    def model_flux(self, rng, n):
        """(labels (n, L) in model order, flux (n, n_model), interp_param (n,) str)."""
        names = np.array(list(self.model.label_names) + [""], dtype=object)
        lab = self._sample_labels(rng, n)
        if not self.is_grid:
            return lab, self.forward.model_flux_as(lab, self.cfg.dtype), np.full(n, "", dtype=object)
        mode = self.cfg.interpolation
        res = self.model.interpolate(lab, mode=mode, rng=rng, on_missing="mask")
        flux, used, ip = res.flux, res.labels, res.interp_param
        todo = np.flatnonzero(~res.ok)
        for _ in range(self.cfg.max_redraws):
            if todo.size == 0:
                break
            r = self.model.interpolate(self._sample_labels(rng, todo.size), mode=mode, rng=rng, on_missing="mask")
            flux[todo], used[todo], ip[todo] = r.flux, r.labels, r.interp_param
            todo = todo[~r.ok]
        if todo.size:
            raise InputError(f"{todo.size} label draws still hit missing grid nodes after {self.cfg.max_redraws} "
                             "redraws; narrow the label box", file=getattr(self.model, "source", None),
                             field="labels")
        return used, flux, names[ip]

    def run(self, seed: int, shard: int, chunk: int, start: int, n: int, id_offset: int, out=None) -> dict:
        """One chunk: ``{"start", "flux", "error", "params"}``. ``out = (flux, error)`` (n, 4096) arrays of
        the stored dtype receive flux and error (simulate's workers pass views of shared memory)."""
        from specvit.observe import draw_conditions

        ss = np.random.SeedSequence(int(seed), spawn_key=(int(shard), int(chunk)))
        rng = np.random.Generator(np.random.PCG64(ss))
        lab, mflux, ip = self.model_flux(rng, n)
        cond = draw_conditions(self.cfg.observing, n, rng)
        dt = np.dtype(self.cfg.dtype)
        obs = self.forward.observe(lab, cond, model_flux=mflux.astype(dt, copy=False), dtype=dt, out=out)
        params = {"id": np.arange(id_offset + start, id_offset + start + n, dtype=np.int64)}
        for name in LABEL_NAMES:
            params[name] = lab[:, self.model.label_names.index(name)] if name in self.model.label_names \
                else np.full(n, np.nan)
        params["mag"] = cond["mag"].to_numpy(float)
        params["snr"] = np.asarray(obs.snr, dtype=np.float64)
        for col in ("redshift", "exp_count", "exp_time", "seeing", "ext", "target_zenith_angle",
                    "target_field_angle", "moon_zenith_angle", "moon_target_angle", "moon_phase"):
            params[col] = cond[col].to_numpy()
        params["interp_param"] = ip.astype(str)
        params["norm_factor"] = np.asarray(obs.norm_factor, dtype=np.float64)
        params["mag_model"] = np.asarray(obs.mag_model, dtype=np.float64)
        params["seed"] = np.full(n, int(seed), dtype=np.int64)
        params["chunk"] = np.full(n, int(chunk), dtype=np.int64)
        return {"start": start, "flux": obs.flux.astype(dt, copy=False), "error": obs.error.astype(dt, copy=False),
                "params": pd.DataFrame(params)}


# --------------------------------------------------------------------------- workers
# Workers (spawned) build the model and the observer themselves, in parallel, while the main
# process (which never imports torch or loads the model when workers > 1) opens the output. Each
# chunk in flight owns one slot of a shared-memory buffer: the worker's observer writes flux and
# error straight into it, only the small params table goes through the pipe, and the main process
# copies the slot into the HDF5 file and hands the slot to the next chunk.
_WORKER: ChunkSimulator | None = None
_WORKER_ERROR: BaseException | None = None
_WORKER_SLOTS: dict = {}


class _Slots:
    """``n_slots`` pairs of (rows, n_wave) arrays (flux, error) in one block of memory.

    ``_Slots.create`` makes a shared-memory block (``multiprocessing.shared_memory``: its pages are
    mapped lazily, nothing is zeroed up front); workers attach to it by ``name``.
    """

    def __init__(self, buf, n_slots: int, rows: int, n_wave: int, dtype, shm=None):
        self.n_slots, self.rows, self.n_wave, self.dtype = n_slots, rows, n_wave, np.dtype(dtype)
        self._shm = shm
        self._arr = np.frombuffer(buf, dtype=self.dtype, count=n_slots * 2 * rows * n_wave).reshape(
            n_slots, 2, rows, n_wave)

    @property
    def spec(self) -> tuple:
        """What a worker needs to attach: (name, n_slots, rows, n_wave, dtype name)."""
        return self._shm.name, self.n_slots, self.rows, self.n_wave, self.dtype.name

    @classmethod
    def create(cls, n_slots: int, rows: int, n_wave: int, dtype) -> "_Slots":
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(create=True, size=n_slots * 2 * rows * n_wave * np.dtype(dtype).itemsize)
        return cls(shm.buf, n_slots, rows, n_wave, dtype, shm=shm)

    @classmethod
    def attach(cls, spec: tuple) -> "_Slots":
        from multiprocessing import shared_memory

        name, n_slots, rows, n_wave, dtype = spec
        shm = shared_memory.SharedMemory(name=name)
        return cls(shm.buf, n_slots, rows, n_wave, dtype, shm=shm)

    def get(self, slot: int, n: int):
        """(flux, error) views of ``slot``, first ``n`` rows (C-contiguous)."""
        return self._arr[slot, 0, :n], self._arr[slot, 1, :n]

    def release(self, unlink: bool) -> None:
        self._arr = None  # the views must go before the mapping
        if self._shm is not None:
            self._shm.close()
            if unlink:
                self._shm.unlink()
            self._shm = None


def _worker_init(cfg, model):
    global _WORKER, _WORKER_ERROR
    import os

    # one thread per worker process (the workers are the parallelism); torch reads this when it loads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:  # already loaded (e.g. unpickling a torch model)
        sys.modules["torch"].set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # numpy's BLAS was loaded before the variables above were set
    try:
        _WORKER = ChunkSimulator(cfg, model)
    except Exception as e:  # raised by the first task: an initializer that raises makes the pool respawn forever
        _WORKER_ERROR = e
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _worker_sim() -> ChunkSimulator:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    return _WORKER


def _worker_meta() -> dict:
    """What the main process needs to know about the model (it does not load it when workers > 1)."""
    return _meta(_worker_sim())


def _meta(sim: ChunkSimulator) -> dict:
    return {"wave": sim.observer.wave, "wave_edges": sim.observer.wave_edges,
            "label_names": list(sim.model.label_names),
            "model": sim.model.describe() if hasattr(sim.model, "describe") else {"model": type(sim.model).__name__}}


def _worker_run(job, spec: tuple, slot: int) -> dict:
    """Run one chunk into ``slot`` of the shared memory ``spec``; return its params (flux and error stay there)."""
    sim = _worker_sim()
    if spec[0] not in _WORKER_SLOTS:
        _WORKER_SLOTS[spec[0]] = _Slots.attach(spec)
    r = sim.run(*job, out=_WORKER_SLOTS[spec[0]].get(slot, job[4]))
    return {"start": r["start"], "slot": slot, "params": r["params"]}


def _run_pooled(pool, slots: _Slots, jobs, write):
    """Run ``jobs`` on ``pool`` with one shared-memory slot per chunk in flight; ``write(start, flux, error,
    params)`` each result (any order) in this process. At most ``slots.n_slots`` chunks in flight: memory
    flat in N, and the workers never wait for a batch to finish (a free slot takes the next chunk)."""
    import queue

    done = queue.SimpleQueue()
    free = list(range(slots.n_slots - 1, -1, -1))
    todo = list(reversed(jobs))
    in_flight = 0
    while todo or in_flight:
        while todo and free:
            pool.apply_async(_worker_run, (todo.pop(), slots.spec, free.pop()), callback=done.put,
                             error_callback=done.put)
            in_flight += 1
        r = done.get()
        in_flight -= 1
        if isinstance(r, BaseException):
            raise r
        n = len(r["params"])
        flux, error = slots.get(r["slot"], n)
        write(r["start"], flux, error, r["params"])
        free.append(r["slot"])


# --------------------------------------------------------------------------- shards
def shard_paths(out, shards: int) -> list[Path]:
    """Output files: ``out`` itself for one shard; for K > 1, ``out`` is a directory (files
    ``shard_000.h5`` ...) or a name containing ``{shard}`` (e.g. ``train_{shard}.h5``)."""
    out = str(out)
    if shards < 1:
        raise InputError("--shards must be >= 1", field="shards", value=shards)
    if SHARD_FIELD in out:
        return [Path(out.replace(SHARD_FIELD, f"{k:03d}")) for k in range(shards)]
    if shards == 1 and not out.endswith("/") and not Path(out).is_dir():
        return [Path(out)]
    return [Path(out) / f"shard_{k:03d}.h5" for k in range(shards)]


def _split(n: int, k: int) -> list[int]:
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _resume_key(cfg_dict, n, seed, shard, n_shards, model_desc) -> str:
    doc = json.dumps({"config": cfg_dict, "n": n, "seed": seed, "shard": shard, "n_shards": n_shards,
                      "model": model_desc}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


class SimulateResult(list):
    """The files :func:`simulate` made (a list of Paths), plus what this call did:
    ``n_written`` rows simulated and written now, ``n_resumed`` rows found done in partial files,
    ``n_complete`` rows in files that were already complete (skipped)."""

    n_written: int = 0
    n_resumed: int = 0
    n_complete: int = 0


def simulate(cfg: SimulateConfig, out, *, n: int, seed: int, shards: int = 1, workers: int = 1,
             model=None, progress: bool = True, overwrite: bool = False, restart: bool = False) -> SimulateResult:
    """Simulate ``n`` spectra (total over ``shards`` files) into the pfsspec layout. Returns the files
    (a :class:`SimulateResult`, a list of Paths with counts of what was written).

    Re-running the same call after a kill resumes each unfinished shard and
    skips finished ones. ``restart=True`` discards partial files;
    ``overwrite=True`` replaces finished files that do not match this job.
    Each output is locked (:class:`specvit.atomic.OutputLock`) for the whole call: a second process
    writing the same output, with or without ``restart``/``overwrite``, gets
    :class:`~specvit.errors.OutputLockedError`. The free space is checked before anything is written
    (:class:`~specvit.errors.DiskFullError`); a full disk later keeps the partial file for resuming.
    """
    import contextlib

    from tqdm import tqdm

    from specvit.atomic import OutputLock
    from specvit.data.pfsspec import DatasetWriter, allocated_bytes, check_space, expected_bytes

    n, seed, workers = int(n), int(seed), int(workers)
    if n < 1:
        raise InputError("--n must be >= 1", field="n", value=n)
    if seed < 0:
        raise InputError("--seed must be >= 0", field="seed", value=seed)
    if workers < 1:
        raise InputError("--workers must be >= 1", field="workers", value=workers)
    if shards > n:
        raise InputError("more shards than spectra", field="shards", value=shards)
    paths = shard_paths(out, shards)
    sizes = _split(n, shards)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    C = cfg.chunk_size
    workers = min(workers, sum(-(-size // C) for size in sizes))  # no more workers than chunks
    pool = slots = sim = None
    bar = None
    result = SimulateResult(paths)
    locks = contextlib.ExitStack()
    try:
        for path in paths:  # before anything else: a second writer of these files is refused right away
            locks.enter_context(OutputLock(path, what="output"))
        if workers > 1:
            import multiprocessing as mp

            from specvit.observe.pfs import pfs_mr_wave

            # start the workers first: each builds its own model from the config (a grid file is read, not
            # pickled; only a model object passed in by the caller is shipped) while this process goes on
            pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(cfg, model))
            meta = pool.apply_async(_worker_meta)
            # one slot per chunk in flight (2 per worker: one computed, one waiting to be written)
            slots = _Slots.create(2 * workers, min(C, max(sizes)), len(pfs_mr_wave()), np.dtype(cfg.dtype))
            cfg_dict = config_to_dict(cfg)
            meta = meta.get()  # validates config + model (raises their errors) before any file is touched
        else:
            sim = ChunkSimulator(cfg, model)  # validates config + model before any file is touched
            meta = _meta(sim)
            cfg_dict = config_to_dict(cfg)
        wave, wave_edges, label_names, model_desc = meta["wave"], meta["wave_edges"], meta["label_names"], meta["model"]
        # decide for every shard before writing any: skip (complete), write, or refuse
        keys = [_resume_key(cfg_dict, n, seed, k, shards, model_desc) for k in range(shards)]
        todo, needed = [], 0
        for k, (path, size) in enumerate(zip(paths, sizes)):
            if path.exists():
                found = _finished_key(path)
                if found == _UNREADABLE and not overwrite:
                    raise InputError("output exists but is truncated or corrupt (not a readable HDF5 file); "
                                     "use --overwrite to replace it", file=path)
                if found == keys[k]:
                    if restart and not overwrite:
                        raise InputError("output is already complete, made by this same job (same n, seed and "
                                         "config); --restart only discards partial files, so nothing was written "
                                         "(add --overwrite to make it again)", file=path)
                    if not restart:
                        result.n_complete += size
                        continue
                if not overwrite:
                    raise InputError("output exists and was made by a different job (use --overwrite)", file=path)
            todo.append(k)
            tmp = path.with_name(f".{path.name}.partial")
            reuse = allocated_bytes(tmp) if tmp.exists() and not restart else 0
            needed += max(0, expected_bytes(size, len(wave), cfg.dtype, with_mask=True, chunk_rows=min(C, 256)) - reuse)
        if todo:
            check_space(paths[todo[0]], needed, f"{len(todo)} output file(s)")
        bar = tqdm(total=n, unit="spec", file=sys.stderr, disable=not progress, desc="simulate")
        bar.update(result.n_complete)
        for k in todo:
            path, size, key = paths[k], sizes[k], keys[k]
            attrs = {
                "seed": seed, "shard": k, "n_shards": shards, "row_offset": int(offsets[k]), "n_total": n,
                "config": cfg_dict, "provenance": provenance(), "model": model_desc, "resume_key": key,
                "interp_param_values": json.dumps(label_names + [""]),
            }
            tmp = path.with_name(f".{path.name}.partial")
            damaged = path.with_name(f".{path.name}.damaged")  # set aside after a failed HDF5 write
            resume = (tmp.exists() or damaged.exists()) and not restart
            for p in (tmp, damaged) if restart else ():
                if p.exists():
                    p.unlink()
            try:
                # with_mask: pfsspec's readers expect dataset/arrays/mask/value (all 0 = no flag: every
                # simulated pixel is a model pixel); flux and error are written exactly as before
                writer = DatasetWriter(path, wave=wave, wave_edges=wave_edges, n_rows=size,
                                       dtype=np.dtype(cfg.dtype), attrs=attrs, chunk_rows=min(C, 256),
                                       resume=resume, with_mask=True)
            except InputError as e:
                raise InputError(f"{str(e).split('; file=')[0]}; rerun with --restart to discard it",
                                 file=e.file or tmp) from None
            try:
                done = writer.done_mask()
                jobs = [(seed, k, c, s, min(C, size - s), int(offsets[k]))
                        for c, s in enumerate(range(0, size, C)) if not done[s:s + min(C, size - s)].all()]
                bar.update(int(size - sum(j[4] for j in jobs)))
                result.n_resumed += int(size - sum(j[4] for j in jobs))

                def write(start, flux, error, params):
                    writer.write_rows(start, flux=flux, error=error, params=params)
                    bar.update(len(params))
                    result.n_written += len(params)

                if pool is not None:
                    _run_pooled(pool, slots, jobs, write)
                else:
                    for j in jobs:
                        r = sim.run(*j)
                        write(r["start"], r["flux"], r["error"], r["params"])
                writer.finalize()
            except OutputError:
                writer.close()  # disk full / not writable: keep the partial file for resuming
                raise
            except SpecvitError:
                writer.abort()  # deterministic bad input: nothing to resume
                raise
            except BaseException:
                writer.close()  # killed / crashed: keep the partial file for resuming
                raise
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if slots is not None:
            slots.release(unlink=True)
        locks.close()
    return result


#: What :func:`_finished_key` returns for a file HDF5 cannot open (truncated or corrupt).
_UNREADABLE = "<unreadable>"


def _finished_key(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            k = f.attrs.get("resume_key")
            return k.decode() if isinstance(k, bytes) else k
    except OSError:
        return _UNREADABLE
