"""``specvit synthesis run``: synthesise a design in parallel, resumable, one file per spectrum.

* finished spectra are ``OUT/<id>.npz`` (see :mod:`.store`), written atomically, so a
  kill loses at most the spectra being computed; a rerun skips every finished id;
* a label set whose synthesis fails is recorded in ``OUT/failed/<id>.json`` (error,
  traceback tail, labels) and skipped, never fatal; ``--retry-failed`` tries again;
* rows are processed in design order (a Sobol prefix is itself space-filling);
* the synthesis is deterministic (no random draw); the design seed and id are stored
  with every spectrum;
* one output directory holds ONE line-list version (``linelist_version`` in every
  spectrum's metadata and in ``OUT/setup.json``: 1 = atoms + molecules, 2 = also hydrogen);
  a run whose setup has another version than the spectra already there is refused
  (:class:`~specvit.errors.InputError` naming the file and the field);
* progress: one line per finished spectrum on stdout (count, id, seconds, ETA) and a
  ``OUT/progress.json`` summary.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from specvit.atomic import write_text_atomic
from specvit.errors import InputError
from specvit.labels import LABEL_NAMES
from specvit.spectra.synthesis.backend import PysmeSynthesizer, SynthesisSetup
from specvit.spectra.synthesis.design import read_design
from specvit.spectra.synthesis.store import write_spectrum

_WORKER: dict = {}


def _init_worker(cache_dir: str, setup: dict, out_dir: str, design_meta: dict) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _WORKER["synth"] = PysmeSynthesizer(cache_dir, SynthesisSetup.from_dict(setup))
    _WORKER["out"] = Path(out_dir)
    _WORKER["design_meta"] = design_meta


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("pysme-astro", "numpy", "specvit"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _one(task) -> dict:
    sid, labels = task
    synth: PysmeSynthesizer = _WORKER["synth"]
    out: Path = _WORKER["out"]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = synth.synthesize(*labels)
        meta = {
            "id": sid, "status": "ok", "design": _WORKER["design_meta"], **res["info"],
            "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "versions": _versions(), "medium": "vacuum", "resolution": synth.setup.resolution,
            "flux_unit": "erg s-1 cm-2 A-1 (surface flux)",
        }
        write_spectrum(out / f"{sid}.npz", flux=res["flux"], cont=res["cont"], labels=labels,
                       label_names=LABEL_NAMES, wave_min_A=synth.setup.wave_min_A, dlnlam=synth.setup.dlnlam,
                       meta=meta)
        return {"id": sid, "status": "ok", "wall_seconds": meta["wall_seconds"], "cpu_seconds": meta["cpu_seconds"]}
    except Exception as e:  # recorded and skipped, never fatal for the batch
        rec = {"id": sid, "status": "failed", "labels": dict(zip(LABEL_NAMES, map(float, labels))),
               "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:],
               "wall_seconds": time.perf_counter() - t0}
        write_text_atomic(out / "failed" / f"{sid}.json", json.dumps(rec, indent=2))
        return rec


def spectrum_linelist_version(path) -> int:
    """Line-list version recorded in a finished spectrum (files written before versions existed: 1)."""
    try:
        with np.load(path) as d:
            meta = json.loads(str(d["meta_json"]))
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"cannot read synthesised spectrum: {e}", file=path, field="meta_json") from None
    return int(meta.get("linelist_version", 1))


def check_linelist_version(out_dir, version: int) -> None:
    """Refuse to add spectra of line-list ``version`` to a directory holding another version.

    Checks ``OUT/setup.json`` (a record without ``hydrogen`` is version 1) and every finished
    ``OUT/*.npz``; raises :class:`InputError` naming the first file that disagrees.
    """
    out_dir = Path(out_dir)
    setup_file = out_dir / "setup.json"
    if setup_file.exists():
        try:
            old = SynthesisSetup.from_dict(json.loads(setup_file.read_text()), source=setup_file).linelist_version
        except json.JSONDecodeError as e:
            raise InputError(f"cannot parse: {e}", file=setup_file) from None
        if old != version:
            raise InputError(f"output directory holds line-list version {old}, this run would write version "
                             f"{version}; use another --out directory", file=setup_file, field="linelist_version",
                             value=old)
    for p in sorted(out_dir.glob("*.npz")):
        v = spectrum_linelist_version(p)
        if v != version:
            raise InputError(f"output directory holds line-list version {v}, this run would write version "
                             f"{version}; use another --out directory", file=p, field="linelist_version", value=v)


def pending_ids(df, out_dir: Path, *, retry_failed: bool = False) -> list[str]:
    done = {p.stem for p in out_dir.glob("*.npz")}
    failed = set() if retry_failed else {p.stem for p in (out_dir / "failed").glob("*.json")}
    return [i for i in df["id"] if i not in done and i not in failed]


def run_design(design_path, out_dir, **kwargs) -> dict:
    """Synthesise every pending row of the design; return counts (ok, failed, skipped).

    Keyword arguments: ``cache_dir`` (required), ``workers``, ``setup``, ``limit``, ``retry_failed``,
    ``log``. The output folder is locked for the run (:class:`specvit.atomic.OutputLock`,
    ``.<OUT>.lock`` beside it): a second ``synthesis run`` into the same folder is refused
    (:class:`~specvit.errors.OutputLockedError`) instead of synthesising the same ids twice; the
    worker processes write their spectra under the parent's lock."""
    from specvit.atomic import OutputLock

    with OutputLock(out_dir, what="synthesis output folder"):
        return _run_design(design_path, out_dir, **kwargs)


def out_of_domain_rows(df, max_c_to_o) -> np.ndarray:
    """Bool per design row: outside the physical domain the design tools now respect (C/O >= ``max_c_to_o``
    for validation rows, >= ``max_c_to_o`` * 10**margin[C_M] for training rows; None: no row)."""
    from specvit.labels import outside_domain
    from specvit.spectra.synthesis.design import DEFAULT_MARGIN

    if max_c_to_o is None:
        return np.zeros(len(df), dtype=bool)
    lab = df[list(LABEL_NAMES)].to_numpy(dtype=float)
    train = df["split"].astype(str).str.startswith("train").to_numpy() if "split" in df else np.ones(len(df), bool)
    limit = np.where(train, max_c_to_o * 10 ** DEFAULT_MARGIN["C_M"], max_c_to_o)
    out = np.zeros(len(df), dtype=bool)
    for lim in np.unique(limit):
        sel = limit == lim
        out[sel] = outside_domain(lab[sel], LABEL_NAMES, max_c_to_o=float(lim))
    return out


def _run_design(design_path, out_dir, *, cache_dir, workers: int = 1, setup: SynthesisSetup | None = None,
                limit: int | None = None, retry_failed: bool = False, log=sys.stdout,
                max_c_to_o: float | None = None) -> dict:
    out_dir = Path(out_dir)
    (out_dir / "failed").mkdir(parents=True, exist_ok=True)
    df = read_design(design_path)
    setup = setup or SynthesisSetup()
    sidecar = Path(design_path).with_suffix(".json")
    design_meta = {"file": Path(design_path).name}
    if sidecar.exists():
        info = json.loads(sidecar.read_text())
        design_meta["seed"] = info.get("seed")
    if retry_failed:
        for p in (out_dir / "failed").glob("*.json"):
            p.unlink()
    todo = pending_ids(df, out_dir, retry_failed=retry_failed)
    n_skipped = len(df) - len(todo)
    outside = set(df["id"][out_of_domain_rows(df, max_c_to_o)])
    n_outside = sum(1 for t in todo if t in outside)
    if n_outside:  # no synthesis on carbon-star chemistry (C/O >= 1) the emulator does not cover
        todo = [t for t in todo if t not in outside]
        print(f"synthesis: {n_outside} pending rows outside the physical domain (C/O limit {max_c_to_o:g}) "
              "skipped", file=log, flush=True)
    if limit is not None:
        todo = todo[:limit]
    rows = df.set_index("id").loc[todo, list(LABEL_NAMES)].to_numpy(dtype=float)
    tasks = [(sid, tuple(map(float, r))) for sid, r in zip(todo, rows)]
    check_linelist_version(out_dir, setup.linelist_version)
    write_text_atomic(out_dir / "setup.json",
                      json.dumps({**asdict(setup), "linelist_version": setup.linelist_version}, indent=2))
    print(f"synthesis: {len(df)} in design, {n_skipped} already done/failed, {len(tasks)} to do, "
          f"{workers} worker(s)", file=log, flush=True)
    counts = {"ok": 0, "failed": 0, "skipped": n_skipped, "outside_domain": n_outside}
    t_start = time.time()
    initargs = (str(cache_dir), asdict(setup), str(out_dir), design_meta)
    if workers <= 1:
        _init_worker(*initargs)
        results = map(_one, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=initargs)
        results = pool.imap(_one, tasks, chunksize=1)
    try:
        for k, r in enumerate(results, 1):
            counts[r["status"]] += 1
            el = time.time() - t_start
            eta = el / k * (len(tasks) - k)
            msg = (f"[{k}/{len(tasks)}] {r['id']} {r['status']} {r.get('wall_seconds', 0):.1f}s "
                   f"(cpu {r.get('cpu_seconds', float('nan')):.1f}s) elapsed {el / 60:.1f} min, ETA {eta / 3600:.1f} h")
            if r["status"] != "ok":
                msg += f" -- {r['error']}"
            print(msg, file=log, flush=True)
            if k % 5 == 0 or k == len(tasks):
                write_text_atomic(out_dir / "progress.json", json.dumps(
                    {**counts, "n_design": len(df), "elapsed_s": el, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return counts
