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
        help="predict labels (+ uncertainties, SNR, flags) for every spectrum of a dataset file -> catalogue CSV",
        description=(
            "Run a trained model directory on a dataset file (pfsspec layout) and write a catalogue CSV: id, row, "
            "one column per label, <label>_err for Gaussian-head models, snr, flag_nan_input, flag_label_range "
            "(prediction outside the training label range), flag_snr_range (SNR outside the training range), flags "
            "(bits 1/2/4). By default the stored flux is used as it is (--noiseless); --noise-level X --seed S adds "
            "fixed per-row noise X * error * N(0,1) like validation does."
        ),
    )
    q.add_argument("--model", required=True, help="trained model directory (e.g. RUN/model)")
    q.add_argument("--input", required=True, help="dataset file, list/dir/glob of shards")
    q.add_argument("--out", required=True, help="catalogue CSV to write (atomically; plus OUT.json provenance)")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--noise-level", type=float, default=None, help="add fixed per-row noise at this level")
    mode.add_argument("--noiseless", action="store_true", help="use the stored flux as it is (default)")
    q.add_argument("--seed", type=int, default=0, help="seed of the fixed per-row noise (default 0)")
    q.add_argument("--batch-size", type=int, default=256)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    q.set_defaults(func=_predict)


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


def _predict(args) -> int:
    from specvit.train.predict import predict_dataset, write_catalog

    level = args.noise_level if args.noise_level is not None else 0.0
    cat = predict_dataset(args.model, args.input, noise_level=level, seed=args.seed, batch_size=args.batch_size,
                          device=args.device)
    write_catalog(cat, args.out, info={"model": str(args.model), "input": str(args.input), "noise_level": level,
                                       "seed": args.seed})
    print(f"{args.out}: {len(cat)} rows, {int((cat['flags'] > 0).sum())} flagged")
    return 0
