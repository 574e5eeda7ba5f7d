"""A training stream of fresh simulations: every batch drawn from the prior, observed and noised on the device.

``data.source: simulate`` in a training config replaces the training file by this stream
(validation and test stay fixed files, so every model is scored on the same spectra). One batch
of ``B`` spectra at global micro-batch index ``g`` (``g = epoch * batches_per_epoch + batch``,
i.e. the training step) on DDP rank ``r``::

    rng    = numpy Generator(PCG64(SeedSequence([seed, g, r, TAG_DRAW])))
    labels ~ the prior of ``specvit simulate`` (data.simulate.labels: per-label LabelDist)   O(B)
    conds  = draw_conditions(data.simulate.observing, B, rng)                              O(B)
    obs    = ForwardModel.observe_torch(labels (on the training device), conds)   emulator → observed μ, σ
    z      = torch.randn on the device, torch.Generator seeded from SeedSequence([seed, g, r, TAG_NOISE])
    flux   = μ + noise_level · σ · z

So a batch is a pure function of ``(seed, g, rank)``: a resumed run (the checkpoint stores the
step) draws exactly the batches the uninterrupted run would have, any DDP rank draws its own
stream, and a background prefetch thread changes timing only. The batches follow the
:class:`~specvit.data.torchdata.SpectraStream` layout (``flux``, ``target``, ``labels``,
``rows``; ``rows`` = ``g * B + arange(B)``, an identifier of the sample within this rank's stream).

There is no training file, so an "epoch" is ``data.simulate.samples_per_epoch`` spectra (over all
ranks): schedules, evaluation cadence, checkpoints and early stopping count in those epochs.

The label scaler (z-scoring of the targets) and the input standardisation of models that have one
are fitted on ``data.simulate.stats_samples`` spectra drawn with their own key
(``SeedSequence([seed, i, TAG_STATS])``, independent of the rank and of the training batches),
so every rank and every resumed run computes the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from specvit.data.simulate import LabelPrior  # the same dataclasses (and keys) as specvit simulate
from specvit.errors import ConfigError, InputError
from specvit.labels import canonical_label, outside_domain
from specvit.observe.config import InstrumentConfig, ObservingConfig

TAG_DRAW, TAG_NOISE, TAG_STATS = 0x51D1, 0x51D2, 0x51D3




@dataclass
class SimulateStreamConfig:
    """``data.simulate``: the prior of ``specvit simulate`` (same keys) plus the stream's own sizes.

    labels / observing / instrument / model : exactly as in a ``specvit simulate`` config.
    samples_per_epoch : spectra per "epoch" over all ranks (there is no file to count).
    stats_samples : spectra drawn (own key) to fit the label scaler and the model's input standardisation.
    threads : CPU threads of the forward model (None = torch's); timing only.
    """

    labels: LabelPrior = field(default_factory=LabelPrior)
    observing: ObservingConfig = field(default_factory=ObservingConfig)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    model: str = "default"
    samples_per_epoch: int = 65536
    stats_samples: int = 4096
    #: CPU threads of the forward model per batch (None = torch's intra-op threads); the batches do not depend on it
    threads: int | None = None

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ConfigError("must be >= 1, or null", field="threads", value=self.threads)
        if self.samples_per_epoch < 1:
            raise ConfigError("must be >= 1", field="samples_per_epoch", value=self.samples_per_epoch)
        if self.stats_samples < 2:
            raise ConfigError("must be >= 2", field="stats_samples", value=self.stats_samples)
        # the checks of specvit simulate's own config (observing ranges inside their valid ranges, magnitudes)
        from specvit.data.simulate import SimulateConfig

        SimulateConfig(labels=self.labels, observing=self.observing, instrument=self.instrument, model=self.model)


def _generator_seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]) >> 1


class SimulatedStream:
    """Training batches simulated on the fly (see the module docstring); the trainer's ``train_data``.

    Parameters (keyword-only)
    ----------
    cfg : SimulateStreamConfig (``data.simulate``).
    label_names : labels to regress (aliases ok); each must be a label of the spectral model and vary in the prior.
    batch_size : spectra per batch (per process).
    noise_level : multiplies σ (1 = the simulated exposure; 0 = noiseless).
    seed : keys every draw.
    rank, world_size : DDP; rank ``r`` draws with its own key.
    device : where the forward model runs and the batches are made (the GPU when training on one).
    model : an already loaded spectral model (default: ``load_spectral_model(cfg.model)``).
    dtype : of the simulated flux (float32).
    """

    train = True

    def __init__(self, *, cfg: SimulateStreamConfig, label_names: Sequence[str], batch_size: int,
                 noise_level: float = 1.0, seed: int = 0, rank: int = 0, world_size: int = 1, device="cpu",
                 model=None, dtype=torch.float32, field_prefix: str = "data.simulate."):
        from specvit.data.simulate import check_prior
        from specvit.data.torchdata import LabelScaler
        from specvit.observe.forward import ForwardModel
        from specvit.spectra import load_spectral_model

        if batch_size < 1:
            raise InputError("batch_size must be >= 1", field="run.batch_size", value=batch_size)
        if not (noise_level >= 0 and math.isfinite(noise_level)):
            raise InputError("noise_level must be a finite number >= 0", field="data.noise_level", value=noise_level)
        self.cfg = cfg
        self.source_name = f"data.simulate (model {cfg.model!r})"
        if model is None:
            try:
                model = load_spectral_model(cfg.model)
            except InputError as e:
                raise ConfigError(e.message, field=field_prefix + "model", value=cfg.model) from None
        if hasattr(model, "interpolate") or not (getattr(model, "differentiable", False)
                                                 or hasattr(model, "flux_fused_torch")):
            raise ConfigError("the simulated stream needs a spectral model that runs in torch (the emulator, an "
                              "emulator .npz or a torch MODULE:FACTORY); for a grid, run specvit simulate to a file",
                              field=field_prefix + "model", value=cfg.model)
        try:
            check_prior(cfg, model)
        except ConfigError as e:
            raise ConfigError(e.message, field=field_prefix + str(e.field), value=e.value) from None
        self.model = model
        self.forward = ForwardModel.for_model(model, cfg.instrument)
        self.label_names = tuple(canonical_label(n) for n in label_names)
        for name in self.label_names:
            if name not in model.label_names:
                raise ConfigError(f"not a label of the spectral model ({', '.join(model.label_names)})",
                                  field="data.labels", value=name)
            d = getattr(cfg.labels, name)
            if d.low == d.high:
                raise ConfigError(f"label {name} is fixed in the prior (low == high): nothing to learn",
                                  field=f"{field_prefix}labels.{name}", value=[d.low, d.high])
        self._cols = [model.label_names.index(n) for n in self.label_names]
        self.batch_size, self.noise_level, self.seed = int(batch_size), float(noise_level), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device, self.dtype = torch.device(device), dtype
        self.n_rows = int(cfg.samples_per_epoch)  #: spectra per epoch (over all ranks)
        self.wave = np.asarray(self.forward.wave, dtype=np.float64)
        self.n_pixels = int(len(self.wave))
        self.batches_per_epoch()  # check the sizes now
        self._lo = np.array([model.bounds[n][0] for n in model.label_names], dtype=np.float64)
        self._hi = np.array([model.bounds[n][1] for n in model.label_names], dtype=np.float64)
        # the stats draw's labels and conditions (cheap, O(stats_samples)); the label scaler from its labels
        self._stats_draws = [self._draw(np.random.default_rng([self.seed, i, TAG_STATS]), n)
                             for i, n in self._stats_chunks()]
        #: labels of the stats draw (the label scaler's sample)
        self.labels = np.concatenate([lab for lab, _ in self._stats_draws])[:, self._cols]
        self.scaler = LabelScaler.fit(self.labels, self.label_names)
        self._stats_snr = None

    # ----------------------------------------------------------------- plan
    def __len__(self) -> int:
        return self.batches_per_epoch()

    def batches_per_epoch(self) -> int:
        n = self.n_rows // (self.batch_size * self.world_size)
        if n == 0:
            raise ConfigError("data.simulate.samples_per_epoch is smaller than one global batch (run.batch_size x "
                              "processes)", field="data.simulate.samples_per_epoch",
                              value=(self.n_rows, self.batch_size, self.world_size))
        return n

    STATS_CHUNK = 256  #: spectra per chunk of the stats draw (fixed: the statistics do not depend on the batch size)

    def _stats_chunks(self):
        n, step = int(self.cfg.stats_samples), self.STATS_CHUNK
        return [(i, min(step, n - a)) for i, a in enumerate(range(0, n, step))]

    # ----------------------------------------------------------------- drawing
    def _draw(self, rng: np.random.Generator, n: int):
        """Labels (n, L model order, float64 exactly representable in ``dtype``) and conditions, from ``rng``."""
        from specvit.observe import draw_conditions

        # the prior of specvit simulate: per-label distributions, label sets outside C/O < max_c_to_o redrawn
        lab = self.cfg.labels.sample(rng, n, self.model.label_names)
        cond = draw_conditions(self.cfg.observing, n, rng)
        # the labels the model is evaluated at are the dtype-rounded ones: keep those as the targets, inside the box
        np_dt = np.float32 if self.dtype == torch.float32 else np.float64
        low = lab.astype(np_dt)
        over, under = low > self._hi_dt(np_dt), low < self._lo_dt(np_dt)
        low[over] = np.nextafter(low[over], np_dt(-np.inf))
        low[under] = np.nextafter(low[under], np_dt(np.inf))
        names = list(self.model.label_names)
        if "C_M" in names:  # rounding must not carry a label set across the C/O limit: step C_M down by ulps
            j = names.index("C_M")
            for _ in range(8):
                bad = outside_domain(low, names, max_c_to_o=self.cfg.labels.max_c_to_o)
                if not bad.any():
                    break
                low[bad, j] = np.nextafter(low[bad, j], np_dt(-np.inf))
        return low.astype(np.float64), cond

    def _hi_dt(self, dt):
        return self._hi.astype(dt) if np.all(self._hi.astype(dt) <= self._hi) else np.nextafter(
            self._hi.astype(dt), dt(-np.inf))

    def _lo_dt(self, dt):
        return self._lo.astype(dt) if np.all(self._lo.astype(dt) >= self._lo) else np.nextafter(
            self._lo.astype(dt), dt(np.inf))

    def simulate(self, lab: np.ndarray, cond, noise_key: tuple | None):
        """(noisy or noiseless flux, snr) of labels ``lab`` (model order) under ``cond``, on the device."""
        x = torch.as_tensor(lab, dtype=self.dtype).to(self.device)
        obs = self.forward.observe_torch(x, cond, threads=self.cfg.threads)
        flux = obs.flux
        if noise_key is not None and self.noise_level > 0:
            g = torch.Generator(device=self.device)
            g.manual_seed(_generator_seed(*noise_key))
            z = torch.randn(flux.shape, generator=g, device=self.device, dtype=flux.dtype)
            flux = flux + self.noise_level * obs.error * z
        return flux, obs.snr

    def batch_at(self, g: int) -> dict:
        """The batch at global micro-batch index ``g`` of this rank (a pure function of seed, g, rank)."""
        rng = np.random.default_rng([self.seed, int(g), self.rank, TAG_DRAW])
        lab, cond = self._draw(rng, self.batch_size)
        flux, snr = self.simulate(lab, cond, (self.seed, int(g), self.rank, TAG_NOISE))
        labels = lab[:, self._cols]
        return {
            "flux": flux,
            "target": torch.from_numpy(self.scaler.transform(labels).astype(np.float32)),
            "labels": torch.from_numpy(labels),
            "rows": torch.arange(int(g) * self.batch_size, (int(g) + 1) * self.batch_size, dtype=torch.int64),
        }

    def _batches(self, epoch: int, start_batch: int) -> Iterator[dict]:
        n = self.batches_per_epoch()
        for b in range(int(start_batch), n):
            yield self.batch_at(int(epoch) * n + b)

    def iter_epoch(self, epoch: int, start_batch: int = 0):
        return self._batches(epoch, start_batch)

    def __iter__(self):
        return self._batches(0, 0)

    # ----------------------------------------------------------------- statistics
    def input_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel mean and std (float64) of the NOISY flux of the stats draw (``stats_samples`` spectra).

        Same on every rank and every run with this seed (the draws are keyed by (seed, chunk) only).
        """
        total = np.zeros(self.n_pixels)
        total_sq = np.zeros(self.n_pixels)
        snr = []
        for i, (lab, cond) in enumerate(self._stats_draws):
            flux, s = self.simulate(lab, cond, (self.seed, i, TAG_STATS, TAG_NOISE))
            x = flux.double().cpu().numpy()
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            snr.append(s.double().cpu().numpy())
        m = int(self.cfg.stats_samples)
        mean = total / m
        std = np.sqrt(np.maximum(total_sq / m - mean**2, 0.0))
        self._stats_snr = np.concatenate(snr)
        return mean, std

    def training_ranges(self) -> dict:
        """Label box of the prior and the SNR range of the stats draw (what ``predict`` flags outside)."""
        lows = [float(getattr(self.cfg.labels, n).low) for n in self.label_names]
        highs = [float(getattr(self.cfg.labels, n).high) for n in self.label_names]
        if self._stats_snr is None:
            self.input_statistics()
        s = self._stats_snr
        s = s / self.noise_level if self.noise_level > 0 else np.full_like(s, np.inf)
        finite = s[np.isfinite(s)]
        return {"label_min": lows, "label_max": highs, "noise_level": self.noise_level,
                "snr_min": float(finite.min()) if finite.size else None,
                "snr_max": float(finite.max()) if finite.size else None, "source": "simulate"}


__all__ = ["SimulateStreamConfig", "SimulatedStream"]
