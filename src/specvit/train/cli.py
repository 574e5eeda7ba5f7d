"""``specvit train`` and ``specvit predict``."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a neural model (SpecViT, CNN, MLP) from a YAML config; resumable; DDP under torchrun",
        description=(
            "Train one model with the config FILE (sections data/model/optim/schedule/loss/run; see "
            "docs/training.md and configs/*.yaml). --set section.key=value overrides any key (an unknown key is "
            "an error). Re-running with the same run.out_dir resumes from its last checkpoint (run.resume=auto). "
            "Many GPUs / nodes: torchrun --nproc_per_node=N -m specvit.cli train --config FILE. "
            "--set data.source=simulate trains on fresh simulations instead of data.train: every batch drawn from "
            "the prior data.simulate (the keys of a specvit simulate config) through the forward model, on the "
            "training device, deterministic by (seed, step, rank); validation stays the data.val files "
            "(configs/stream_mlp.yaml; docs/training.md 'Training on fresh simulations')."
        ),
    )
    p.add_argument("--config", required=True, help="YAML training config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set run.epochs=5 --set optim.lr=1e-3 (repeatable)")
    p.set_defaults(func=_train)

    q = subparsers.add_parser(
        "predict",
        help="predict labels (+ uncertainties, SNR, flags) for a dataset file or PFS pfsObject/pfsSingle FITS "
             "-> catalogue CSV",
        description=(
            "Run a trained model directory on a dataset file (pfsspec layout) and write a catalogue CSV: id, row, "
            "one column per label, <label>_err for Gaussian-head models, snr, flag_nan_input, flag_label_range "
            "(prediction outside the training label range), flag_snr_range (SNR outside the training range), flags "
            "(bits 1/2/4). By default the stored flux is used as it is (--noiseless); --noise-level X --seed S adds "
            "fixed per-row noise X * error * N(0,1) like validation does. "
            "PFS data products: --input may be a pfsObject/pfsSingle FITS file or a folder of them (PFS datamodel: "
            "flux in nJy, wavelengths in nm, vacuum). Each spectrum's MR red-arm range is converted to F_lambda, "
            "resampled flux-conservingly onto the model's pixels (errors propagated, masked pixels carried), "
            "normalised to median 0.5 and predicted; --model templatefit fits it with the template fit instead. "
            "Radial velocity: spectra must already be in the rest frame unless --rv-table gives v_los (km/s) per "
            "objId or file; specvit does not measure it. A file it cannot use (wrong arm, all pixels masked, "
            "missing HDU, unreadable flux unit) becomes a row with flag_input and the reason in status; the batch "
            "goes on. --stellarparam OUT.fits also writes the GA STELLARPARAM table (method, frame, param, covarId, "
            "unit, value, valueErr, flag, status) and a STELLARCOVAR HDU. See docs/data.md."
        ),
    )
    q.add_argument("--model", required=True,
                   help="trained model directory (e.g. RUN/model), or 'templatefit' (PFS FITS input only)")
    q.add_argument("--input", required=True,
                   help="dataset file, list/dir/glob of shards; or a pfsObject/pfsSingle FITS file or a folder of them")
    q.add_argument("--out", required=True, help="catalogue CSV to write (atomically; plus OUT.json provenance)")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--noise-level", type=float, default=None, help="add fixed per-row noise at this level")
    mode.add_argument("--noiseless", action="store_true", help="use the stored flux as it is (default)")
    q.add_argument("--seed", type=int, default=0, help="seed of the fixed per-row noise (default 0)")
    q.add_argument("--batch-size", type=int, default=256)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    q.add_argument("--raw-sigma", action="store_true",
                   help="Gaussian-head models: write the network's own sigmas as <label>_err instead of the "
                        "calibrated ones (default: MODEL/calibration.json is applied when present, and the raw "
                        "sigma goes to <label>_err_raw; docs/uncertainty.md)")
    q.add_argument("--stellarparam", default=None, metavar="OUT.fits",
                   help="PFS FITS input: also write the GA STELLARPARAM table (+ STELLARCOVAR) to this FITS file")
    q.add_argument("--rv-table", default=None, metavar="CSV",
                   help="PFS FITS input: radial velocities, columns v_los (km/s) and objId or file; spectra without "
                        "one are taken as rest-frame")
    q.add_argument("--templatefit-config", default=None, metavar="YAML",
                   help="with --model templatefit: TemplateFitConfig keys (mode, free_labels, model, ...)")
    q.set_defaults(func=_predict)

    c = subparsers.add_parser(
        "calibrate",
        help="fit the per-label sigma scales of a Gaussian-head model on a validation set -> MODEL/calibration.json",
        description=(
            "Post-hoc calibration of the network's 1-sigma uncertainties (docs/uncertainty.md): one factor per "
            "label, fitted on the validation spectra with the fixed per-row noise (--noise-level, --seed: use the "
            "training config's data.noise_level and data.noise_seed), written atomically to MODEL/calibration.json, "
            "which `specvit predict` applies by default. The trainer already does this at the end of training "
            "when the model is Gaussian and there is a validation split; this command re-fits it (another "
            "method, another validation set, a model trained before calibration existed)."
        ),
    )
    c.add_argument("--model", required=True, help="trained model directory (RUN/model)")
    c.add_argument("--val", required=True, help="validation dataset (file, list/dir/glob of shards) with true labels")
    c.add_argument("--noise-level", type=float, default=1.0, help="fixed per-row noise level (default 1.0)")
    c.add_argument("--seed", type=int, default=42, help="seed of the fixed per-row noise (default 42, the configs')")
    c.add_argument("--method", choices=["coverage68", "unit_variance"], default="coverage68",
                   help="coverage68 (default): 68.27%% of |z| inside 1 sigma; unit_variance: RMS of z = 1")
    c.add_argument("--max-rows", type=int, default=None, help="first N validation rows only")
    c.set_defaults(func=_calibrate)


def _train(args) -> int:
    from specvit.train import Trainer, load_train_config

    cfg = load_train_config(args.config, args.set)
    trainer = Trainer(cfg)
    res = trainer.fit()
    if trainer.dist.is_main:
        keys = ["global_step", "epochs_completed", "stopped_early", "val_loss", "val_r2"]
        print(json.dumps({k: res.get(k) for k in keys}))
        print(f"model: {trainer.out_dir / 'model'}")
    from specvit.train.distributed import cleanup

    cleanup()
    return 0


def _calibrate(args) -> int:
    from specvit.train.calibration import CALIBRATION_FILE
    from specvit.train.predict import calibrate_model_dir

    cal = calibrate_model_dir(args.model, args.val, noise_level=args.noise_level, noise_seed=args.seed,
                              method=args.method, max_rows=args.max_rows)
    for j, n in enumerate(cal.labels):
        print(f"{n}: scale {cal.scale[j]:.4g}; validation coverage 68% {cal.raw['cov68'][j]:.3f} -> "
              f"{cal.calibrated['cov68'][j]:.3f}, 95% {cal.raw['cov95'][j]:.3f} -> {cal.calibrated['cov95'][j]:.3f}")
    print(f"wrote {args.model}/{CALIBRATION_FILE} ({cal.method}, {cal.n_rows} validation rows)")
    return 0


def _predict(args) -> int:
    from specvit.data.pfsfits import is_pfs_fits
    from specvit.errors import InputError
    from specvit.train.predict import predict_dataset, write_catalog

    level = args.noise_level if args.noise_level is not None else 0.0
    if is_pfs_fits(args.input):
        return _predict_pfs(args, level)
    for opt, val in (("--stellarparam", args.stellarparam), ("--rv-table", args.rv_table),
                     ("--templatefit-config", args.templatefit_config)):
        if val is not None:
            raise InputError(f"{opt} needs PFS FITS input (pfsObject/pfsSingle)", field=opt, value=args.input)
    if args.model == "templatefit":
        raise InputError("--model templatefit needs PFS FITS input; for datasets use `specvit baseline templatefit`",
                         field="--model", value=args.model)
    cat = predict_dataset(args.model, args.input, noise_level=level, seed=args.seed, batch_size=args.batch_size,
                          device=args.device, calibrate=not args.raw_sigma)
    write_catalog(cat, args.out, info={"model": str(args.model), "input": str(args.input), "noise_level": level,
                                       "seed": args.seed})
    if "sigma" in cat.attrs:
        print(f"sigmas (<label>_err): {cat.attrs['sigma']}")
    print(f"{args.out}: {len(cat)} rows, {int((cat['flags'] > 0).sum())} flagged")
    return 0


def _predict_pfs(args, level: float) -> int:
    from specvit.errors import InputError
    from specvit.train.predict import write_catalog
    from specvit.train.predict_pfs import predict_pfs, write_stellarparam

    if level > 0:
        raise InputError("observed PFS spectra already carry their noise: --noise-level is for simulated datasets",
                         field="--noise-level", value=level)
    cat, info = predict_pfs(args.model, args.input, batch_size=args.batch_size, device=args.device,
                            rv_table=args.rv_table, templatefit_config=args.templatefit_config,
                            calibrate=not args.raw_sigma)
    write_catalog(cat, args.out, info={"model": str(args.model), "input": str(args.input), "rv_table": args.rv_table,
                                       **info})
    if args.stellarparam:
        write_stellarparam(cat, info["labels"], info["method"], args.stellarparam)
    n_bad = int(cat["flag_input"].sum())
    print(f"{args.out}: {len(cat)} spectra, {int((cat['flags'] > 0).sum())} flagged ({n_bad} unusable input)"
          + (f"; {args.stellarparam}" if args.stellarparam else ""))
    return 0
