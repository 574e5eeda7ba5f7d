"""``specvit simulate``: labels + observing conditions -> model -> PFS observation -> pfsspec dataset.

Pipeline per chunk of rows (vectorised over the chunk)::

    rng = Generator(PCG64(SeedSequence(seed, spawn_key=(shard, chunk))))
    labels     ~ per-axis uniform or beta(a, b) over the label box     (LabelPrior)
    conditions ~ draw_conditions(ObservingConfig)                      (specvit.observe)
    F_lambda   = model.flux(labels)   (grids: linear / spline / nearest; draws that hit
                                       invalid nodes are redrawn)
    obs        = PFSObserver.observe(F_lambda, conditions)  -> flux, error (normalised), snr
    -> rows [start, stop) of the dataset file

Every chunk has its own seed stream, so the file is identical for any number
of workers, and a killed run resumes where it stopped (finished chunks are
recorded in the partial file ``.<name>.partial``; rerun the same command).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from specvit.config import config_to_dict, provenance
from specvit.errors import ConfigError, InputError, SpecvitError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES
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
        if not self.low <= self.high:
            raise ConfigError("low > high", field="low", value=[self.low, self.high])
        if self.dist == "beta" and not (self.beta_a > 0 and self.beta_b > 0):
            raise ConfigError("beta parameters must be > 0", field="beta_a", value=[self.beta_a, self.beta_b])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.beta(self.beta_a, self.beta_b, n) if self.dist == "beta" else rng.random(n)
        return self.low + u * (self.high - self.low)


def _dist(name: str) -> LabelDist:
    lo, hi = DEFAULT_LABEL_BOUNDS[name]
    return LabelDist(lo, hi)


@dataclass
class LabelPrior:
    """Label box (SPEC defaults): T_eff K, log_g dex, M_H dex, a_M dex, C_M dex."""

    T_eff: LabelDist = field(default_factory=lambda: _dist("T_eff"))
    log_g: LabelDist = field(default_factory=lambda: _dist("log_g"))
    M_H: LabelDist = field(default_factory=lambda: _dist("M_H"))
    a_M: LabelDist = field(default_factory=lambda: _dist("a_M"))
    C_M: LabelDist = field(default_factory=lambda: _dist("C_M"))


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


# --------------------------------------------------------------------------- model
def build_model(cfg: SimulateConfig):
    """The spectral model named by ``cfg.model``."""
    if cfg.model == "default":
        try:
            from specvit.spectra import default_model

            return default_model()
        except (ImportError, OSError) as e:  # not built / weights not shipped in this install
            raise InputError(f"the embedded default spectral model is not available ({e}); set model=<grid.h5>",
                             field="model", value="default") from None
    from specvit.spectra.grid import RegularGrid

    bounds = {k: (getattr(cfg.labels, k).low, getattr(cfg.labels, k).high) for k in LABEL_NAMES}
    return RegularGrid.load(cfg.model, wave_range_A=cfg.wave_range_A, label_bounds=bounds,
                            interpolation=cfg.interpolation, pad_nodes=cfg.grid_pad_nodes)


def _check_prior(cfg: SimulateConfig, model) -> None:
    for name in model.label_names:
        if name not in LABEL_NAMES:
            continue
        d = getattr(cfg.labels, name)
        lo, hi = model.bounds[name]
        if d.low < lo - 1e-9 or d.high > hi + 1e-9:
            raise ConfigError(f"label range [{d.low}, {d.high}] exceeds the spectral model's [{lo}, {hi}]",
                              field=f"labels.{name}", value=[d.low, d.high])
    unknown = [n for n in model.label_names if n not in LABEL_NAMES]
    if unknown:
        raise ConfigError("the spectral model has labels simulate cannot sample", field="model", value=unknown)


# --------------------------------------------------------------------------- one chunk
class ChunkSimulator:
    """Everything needed to make one chunk: the model, the observer and the config."""

    def __init__(self, cfg: SimulateConfig, model=None):
        from specvit.observe import PFSObserver

        self.cfg = cfg
        self.model = build_model(cfg) if model is None else model
        _check_prior(cfg, self.model)
        self.observer = PFSObserver.for_model(self.model, cfg.instrument)
        self.is_grid = hasattr(self.model, "interpolate")
        # models that can write the stored dtype directly (the emulator's float32 path) skip a
        # float64 round trip; the values are the same float32 numbers either way
        flux_params = inspect.signature(self.model.flux).parameters
        self._flux_kwargs = {"dtype": np.dtype(cfg.dtype)} if "dtype" in flux_params else {}

    def _sample_labels(self, rng, n) -> np.ndarray:
        cols = [getattr(self.cfg.labels, name).sample(rng, n) for name in self.model.label_names]
        return np.stack(cols, axis=1)

    def model_flux(self, rng, n):
        """(labels (n, L) in model order, flux (n, n_model), interp_param (n,) str)."""
        names = np.array(list(self.model.label_names) + [""], dtype=object)
        lab = self._sample_labels(rng, n)
        if not self.is_grid:
            f = self.model.flux(lab, **self._flux_kwargs)
            f = f.detach().cpu().numpy() if hasattr(f, "detach") else np.asarray(f)  # torch-backed models
            return lab, f, np.full(n, "", dtype=object)
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

    def run(self, seed: int, shard: int, chunk: int, start: int, n: int, id_offset: int) -> dict:
        from specvit.observe import draw_conditions

        ss = np.random.SeedSequence(int(seed), spawn_key=(int(shard), int(chunk)))
        rng = np.random.Generator(np.random.PCG64(ss))
        lab, mflux, ip = self.model_flux(rng, n)
        cond = draw_conditions(self.cfg.observing, n, rng)
        dt = np.dtype(self.cfg.dtype)
        obs = self.observer.observe(mflux.astype(dt, copy=False), cond)  # float32 in -> observer's float32 path
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
_WORKER: ChunkSimulator | None = None


def _worker_init(cfg, model):
    global _WORKER
    import os

    # one thread per worker process (the workers are the parallelism); torch reads this when it loads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:  # already loaded (e.g. unpickling a torch model)
        sys.modules["torch"].set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # numpy's BLAS was loaded before the variables above were set
    _WORKER = ChunkSimulator(cfg, model)


def _worker_run(job):
    return _WORKER.run(*job)


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


def simulate(cfg: SimulateConfig, out, *, n: int, seed: int, shards: int = 1, workers: int = 1,
             model=None, progress: bool = True, overwrite: bool = False, restart: bool = False) -> list[Path]:
    """Simulate ``n`` spectra (total over ``shards`` files) into the pfsspec layout. Returns the files.

    Re-running the same call after a kill resumes each unfinished shard and
    skips finished ones. ``restart=True`` discards partial files;
    ``overwrite=True`` replaces finished files that do not match this job.
    """
    from tqdm import tqdm

    from specvit.data.pfsspec import DatasetWriter, PARAMS_KEY

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
    sim = ChunkSimulator(cfg, model)  # validates config + model before any file is touched
    wave, wave_edges = sim.observer.wave, sim.observer.wave_edges
    label_names = list(sim.model.label_names)
    cfg_dict = config_to_dict(cfg)
    model_desc = sim.model.describe() if hasattr(sim.model, "describe") else {"model": type(sim.model).__name__}
    if workers > 1:
        sim = None  # the workers hold the model; free the main process's copy (a grid can be GBs)
    sizes = _split(n, shards)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    C = cfg.chunk_size
    bar = tqdm(total=n, unit="spec", file=sys.stderr, disable=not progress, desc="simulate")
    pool = None
    try:
        for k, (path, size) in enumerate(zip(paths, sizes)):
            key = _resume_key(cfg_dict, n, seed, k, shards, model_desc)
            if path.exists():
                if _finished_key(path) == key and not restart:
                    bar.update(size)
                    continue
                if not overwrite:
                    raise InputError("output exists and was made by a different job (use --overwrite)", file=path)
            attrs = {
                "seed": seed, "shard": k, "n_shards": shards, "row_offset": int(offsets[k]), "n_total": n,
                "config": cfg_dict, "provenance": provenance(), "model": model_desc, "resume_key": key,
                "interp_param_values": json.dumps(label_names + [""]),
            }
            tmp = path.with_name(f".{path.name}.partial")
            resume = tmp.exists() and not restart
            if restart and tmp.exists():
                tmp.unlink()
            try:
                writer = DatasetWriter(path, wave=wave, wave_edges=wave_edges, n_rows=size,
                                       dtype=np.dtype(cfg.dtype), attrs=attrs, chunk_rows=min(C, 256),
                                       resume=resume)
            except InputError as e:
                raise InputError(f"{e}; rerun with --restart to discard it", file=tmp) from None
            try:
                done = writer.done_mask()
                jobs = [(seed, k, c, s, min(C, size - s), int(offsets[k]))
                        for c, s in enumerate(range(0, size, C)) if not done[s:s + min(C, size - s)].all()]
                bar.update(int(size - sum(j[4] for j in jobs)))
                if workers > 1 and jobs:
                    if pool is None:
                        import multiprocessing as mp

                        # workers build their own model from the config (a grid file is read, not pickled);
                        # only a model object passed in by the caller is shipped to them
                        pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init,
                                                            initargs=(cfg, model))
                    results = _windowed(pool, jobs, 2 * workers)
                else:
                    results = (sim.run(*j) for j in jobs)
                for r in results:
                    writer.write_rows(r["start"], flux=r["flux"], error=r["error"], params=r["params"])
                    bar.update(len(r["params"]))
                writer.finalize()
            except SpecvitError:
                writer.abort()  # deterministic bad input: nothing to resume
                raise
            except BaseException:
                writer.close()  # killed / crashed: keep the partial file for resuming
                raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return paths


def _windowed(pool, jobs, window: int):
    """Results of ``jobs`` (any order) with at most ``window`` chunks in flight: memory flat in N."""
    for i in range(0, len(jobs), window):
        yield from pool.imap_unordered(_worker_run, jobs[i:i + window])


def _finished_key(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            k = f.attrs.get("resume_key")
            return k.decode() if isinstance(k, bytes) else k
    except OSError:
        return None
