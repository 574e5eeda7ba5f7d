"""Training and inference throughput of SpecViT vs the same network built with HuggingFace ViTModel.

The reference is what the paper used: ``transformers.ViTModel`` configured for
1D spectra as an image of height 1 (``image_size=(1, n_pixels)``,
``patch_size=(1, 16)``, one channel), hidden 256, 6 layers, 8 heads, FFN 1024,
GELU, hidden dropout 0.1, no pooler, with ``Linear(256, 1)`` on the CLS token.
It has exactly the parameter count of ``specvit_p16_h256_l6`` (printed). HF
runs with its default attention implementation (``sdpa``, the fused kernel);
``--hf-attn eager`` measures the slower eager path instead.

SpecViT is built with the same regularisation as the reference: dropout 0.1
after the embeddings, the attention projection and the FFN, none on the
attention weights (checked at start-up).

A training step is forward + MSE backward + AdamW step (same optimizer
settings for both; by default ``fused=True``, what ``specvit.train`` uses on
CPU/CUDA), on random inputs of the same batch, in the same process, with the
same number of torch threads; the models are timed in alternating rounds so
background load affects them alike. Reported: median samples/s over the timed
steps. Inference: spectra/s of ``specvit_p16_h256_l6`` in eval mode under
``torch.inference_mode``.

Where SpecViT's speed comes from (the same architecture and parameters as the
reference; see docs/models.md "Speed"): only the CLS token is computed in the
last block (exact: keys/values still from every token), one fused qkv GEMM
with copy-free q/k/v views, a cheaper CPU dropout mask (same distribution).
``--ablation`` also times SpecViT with the full last block and torch's own
dropout (``specvit_full_*`` keys), in the same rounds.

``--compile`` times SpecViT under ``torch.compile`` (the reference stays
eager) AND eager SpecViT in the same rounds: ``ratio_vs_hf`` is then the
compiled ratio, ``eager_ratio_vs_hf`` the eager one, and ``compile_s`` the
wall time of the first compiled step (compilation) -- not in any rate.

    python benchmarks/train_throughput.py [--json] [--batch 16] [--steps 5]
        [--threads N] [--compile] [--ablation] [--bf16] [--hf-attn sdpa|eager]
        [--optimizer default|foreach|fused] [--malloc keep|system]

``--malloc keep`` (default) applies :func:`specvit.malloc.keep_freed_memory` to the
process, as the ``specvit`` command does, so both models reuse freed activation memory
instead of faulting it in again each step; ``system`` measures glibc's default.

Note: a background spectral-synthesis job may run at nice 19 on this machine;
it steals CPU from both models alike, but absolute figures are lower while
it runs. Pause it for clean absolute numbers.

bf16 depends on the CPU: on an AMD EPYC with AVX2 only (2026-11-23) ``--bf16``
autocast made SpecViT training ~10x slower (no native bf16 GEMM); on an AMD
EPYC with AVX512-BF16 (2026-12-06) it made it 1.27x faster (23.2 vs 18.3
samples/s). It is off by default so the ratio compares equal precision
(``run.precision: bf16`` turns it on in training). ``--compile`` needs minutes
of inductor compilation on 2 cores before the first step.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time

import torch
from torch import nn


class HFViTRegressor(nn.Module):
    """HuggingFace ViTModel over a (B, 1, 1, n_pixels) 'image' + Linear head on the CLS token."""

    def __init__(self, *, n_pixels=4096, patch_size=16, hidden=256, depth=6, heads=8, mlp_dim=1024, dropout=0.1, attn="sdpa"):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        cfg = ViTConfig(
            hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=mlp_dim,
            hidden_act="gelu", hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0,
            image_size=(1, n_pixels), patch_size=(1, patch_size), num_channels=1, qkv_bias=True,
            attn_implementation=attn,
        )
        self.vit = ViTModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(hidden, 1)

    def forward(self, flux):
        h = self.vit(pixel_values=flux[:, None, None, :]).last_hidden_state
        return self.head(h[:, 0])


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def make_step(model, *, bf16: bool, optimizer: str = "fused"):
    kw = {"foreach": True} if optimizer == "foreach" else {"fused": True} if optimizer == "fused" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, **kw)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(x, y):
        with autocast():
            loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--batch", type=int, default=16, help="spectra per step (default 16; the paper trained with 256)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per model (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the SpecViT model (reference stays eager)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for SpecViT training")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    ap.add_argument("--optimizer", default="fused", choices=["default", "foreach", "fused"],
                    help="AdamW implementation, the same for both models (default: fused, as specvit.train uses; "
                         "'default' is torch's CPU default, a per-tensor loop)")
    ap.add_argument("--ablation", action="store_true",
                    help="also time SpecViT with the full last block and torch's bernoulli dropout")
    ap.add_argument("--malloc", default="keep", choices=["keep", "system"],
                    help="process memory policy for both models (default keep: what the specvit command does, "
                         "specvit.malloc; system: glibc's default, which re-faults freed activations every step)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.malloc == "keep":
        from specvit.malloc import keep_freed_memory

        keep_freed_memory()

    from specvit.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # parameter init of both models
    ours = create_model("specvit_p16_h256_l6", dropout=0.1, attn_dropout=0.0).train()
    ref = HFViTRegressor(attn=args.hf_attn, dropout=0.1).train()
    assert ref.vit.config.hidden_dropout_prob == ours.config.dropout and ref.vit.config.attention_probs_dropout_prob == 0.0
    print(f"params: specvit_p16_h256_l6 {n_params(ours):,}  HF ViTModel+head {n_params(ref):,} "
          f"(ratio {n_params(ours) / n_params(ref):.4f})")
    print(f"torch {torch.__version__}, threads {threads}, batch {args.batch}, cpu {platform.processor() or platform.machine()}, "
          f"os.cpu_count {os.cpu_count()}, optimizer AdamW {args.optimizer}, malloc {args.malloc}")
    print("note: a background job at nice 19 may share the CPU; the models are timed in alternating rounds.")
    x = 1.0 + 0.1 * torch.randn(args.batch, 4096, generator=gen)
    y = torch.randn(args.batch, 1, generator=gen)

    steps = {"hf": make_step(ref, bf16=False, optimizer=args.optimizer)}
    compile_s = None
    if args.compile:
        eager = create_model("specvit_p16_h256_l6", dropout=0.1, attn_dropout=0.0).train()
        eager.load_state_dict(ours.state_dict())
        steps["eager"] = make_step(eager, bf16=args.bf16, optimizer=args.optimizer)
        ours_fwd = torch.compile(ours)
        steps["ours"] = make_step(ours_fwd, bf16=args.bf16, optimizer=args.optimizer)
        compile_s = timed(steps["ours"], x, y)  # first call compiles forward and backward
        print(f"compile: first compiled step took {compile_s:.1f} s (not in any rate)")
    else:
        ours_fwd = ours
        steps["ours"] = make_step(ours, bf16=args.bf16, optimizer=args.optimizer)
    if args.ablation:
        from specvit.models.dropout import Dropout

        full = create_model("specvit_p16_h256_l6", dropout=0.1, attn_dropout=0.0).train()
        full.load_state_dict(ours.state_dict())
        full.cls_only_last_block = False
        for m in full.modules():
            if isinstance(m, Dropout):
                m.fast_cpu = False
        steps["full"] = make_step(full, bf16=args.bf16, optimizer=args.optimizer)
    for _ in range(args.warmup):
        for step in steps.values():
            step(x, y)
    times = {k: [] for k in steps}
    cpu = {k: [] for k in steps}  # process CPU seconds per step (all threads): less sensitive to background load
    keys = list(steps)
    for r in range(args.steps):  # alternate so background load hits all alike; rotate who goes first
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            c0 = time.process_time()
            times[k].append(timed(steps[k], x, y))
            cpu[k].append(time.process_time() - c0)
    sps = {k: args.batch / statistics.median(t) for k, t in times.items()}
    cpu_ratios = {k: statistics.median(cpu["hf"]) / statistics.median(c) for k, c in cpu.items()}
    cpu_ratio = cpu_ratios["ours"]
    sps_ours, sps_ref = sps["ours"], sps["hf"]

    ours.eval()
    with torch.inference_mode():
        ours_fwd(x)
        t_inf = [timed(ours_fwd, x) for _ in range(max(3, args.steps // 2))]
    inf = args.batch / statistics.median(t_inf)

    tag = "compiled" if args.compile else "eager"
    print(f"train  specvit_p16_h256_l6 ({tag}): {sps_ours:8.2f} samples/s  (median of {args.steps} steps)")
    if "eager" in sps:
        print(f"train  specvit_p16_h256_l6 (eager)   : {sps['eager']:8.2f} samples/s  ratio {sps['eager'] / sps_ref:.3f}"
              f"  (CPU-time ratio {cpu_ratios['eager']:.3f})")
    if "full" in sps:
        print(f"train  specvit, full last block + bernoulli dropout: {sps['full']:8.2f} samples/s  "
              f"ratio {sps['full'] / sps_ref:.3f}  (CPU-time ratio {cpu_ratios['full']:.3f})")
    print(f"train  HF ViTModel ({args.hf_attn:5s})     : {sps_ref:8.2f} samples/s")
    print(f"ratio  specvit / HF ({tag})  : {sps_ours / sps_ref:8.3f}  (goal >= 1.3)")
    print(f"ratio  of CPU seconds per step, HF / specvit ({tag}): {cpu_ratio:.3f}")
    print(f"infer  specvit_p16_h256_l6 ({tag}): {inf:8.2f} spectra/s")
    if args.json:
        print(json.dumps({
            "specvit_samples_per_s": round(sps_ours, 2), "hf_samples_per_s": round(sps_ref, 2),
            "ratio_vs_hf": round(sps_ours / sps_ref, 4), "inference_spectra_per_s": round(inf, 2),
            "torch_threads": threads, "batch": args.batch, "steps": args.steps, "compile": args.compile,
            "bf16": args.bf16, "hf_attn": args.hf_attn, "optimizer": args.optimizer, "params_specvit": n_params(ours), "params_hf": n_params(ref),
            "compile_s": None if compile_s is None else round(compile_s, 1), "cpu_time_ratio_vs_hf": round(cpu_ratio, 4),
            "specvit_eager_samples_per_s": round(sps.get("eager", sps_ours), 2),
            "eager_ratio_vs_hf": round(sps.get("eager", sps_ours) / sps_ref, 4),
            **({"eager_cpu_time_ratio_vs_hf": round(cpu_ratios["eager"], 4)} if "eager" in cpu_ratios else {}),
            **({"specvit_full_samples_per_s": round(sps["full"], 2), "specvit_full_ratio_vs_hf": round(sps["full"] / sps_ref, 4),
                "specvit_full_cpu_time_ratio_vs_hf": round(cpu_ratios["full"], 4)}
               if "full" in sps else {}),
            "torch_version": torch.__version__, "seed": args.seed, "malloc": args.malloc,
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
