"""Position encodings besides the paper's learned table (which lives in :mod:`specvit.models.specvit`).

Token order: CLS first when there is one. Chosen by ``SpecViTConfig.pos_encoding``
through :func:`build_position`:

* ``"sinusoidal"``: ``SinusoidalPosition``, the fixed sin/cos table of Vaswani et al. (2017).
* ``"rope"``: ``RotaryEmbedding``, RoPE (Su et al. 2021, arXiv:2104.09864): q and k of every
  head are rotated by angles proportional to the token index, so attention
  scores depend on relative position; nothing is added to the tokens.
* ``"wavelength"``: ``WavelengthPosition``, physics-informed (the paper's planned "PIPE"): each
  patch's central wavelength lambda (Angstrom) enters as multi-scale sin/cos
  features of ``ln(lambda / 1 A)`` with periods from ``min_period_lnwave`` (1e-4,
  i.e. 30 km/s) to ``max_period_lnwave`` (10), mapped by a trainable Linear.
  A Doppler shift or a different pixel grid moves ``ln lambda``; the encoding
  follows the physics rather than the token index, so a model can be applied
  to another wavelength grid of the same spectral range.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from specvit.errors import InputError
from specvit.models.tokenizers import pad_right, patch_layout


def sinusoid_table(positions: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """(n, dim) sin/cos features of ``positions`` with periods 2*pi .. 2*pi*max_period."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / max(half, 1))
    ang = positions.to(torch.float64)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(len(positions), 1, dtype=table.dtype)], dim=-1)
    return table.float()


class SinusoidalPosition(nn.Module):
    """Fixed (1, n_positions, D) sin/cos table added to the tokens (no parameters)."""

    def __init__(self, *, n_positions: int, dim: int):
        super().__init__()
        self.register_buffer("table", sinusoid_table(torch.arange(n_positions), dim)[None], persistent=False)

    def forward(self, x: torch.Tensor, **_) -> torch.Tensor:
        return x + self.table


class RotaryEmbedding(nn.Module):
    """Rotate pairs of channels of q/k (B, H, N, d) by ``pos * theta_i``; ``theta_i = base**(-2i/d)``."""

    def __init__(self, *, n_positions: int, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise InputError("RoPE needs an even head dimension (hidden / heads)", field="hidden/heads", value=head_dim)
        theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        ang = torch.arange(n_positions, dtype=torch.float64)[:, None] * theta[None, :]  # (N, d/2)
        self.register_buffer("cos", torch.cos(ang).float(), persistent=False)
        self.register_buffer("sin", torch.sin(ang).float(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Rotate ``t`` (B, H, n, d); its n rows are positions 0..n-1 (n <= n_positions: a prefix of queries)."""
        t1, t2 = t[..., 0::2], t[..., 1::2]
        n = t.shape[-2]
        cos, sin = self.cos[:n].to(t.dtype), self.sin[:n].to(t.dtype)
        out = torch.stack([t1 * cos - t2 * sin, t1 * sin + t2 * cos], dim=-1)
        return out.flatten(-2)


def patch_log_wave(wave_A: torch.Tensor, *, patch_size: int, stride: int) -> torch.Tensor:
    """Mean ``ln(lambda / 1 A)`` over each patch; ``wave_A`` is (n_pixels,) or (B, n_pixels), Angstrom."""
    if not torch.all(torch.isfinite(wave_A)) or not torch.all(wave_A > 0):
        raise InputError("wavelengths must be finite and positive (Angstrom)", field="wave")
    _, pad = patch_layout(wave_A.shape[-1], patch_size, stride)
    lw = pad_right(torch.log(wave_A.to(torch.float64)), pad)
    return lw.unfold(-1, patch_size, stride).mean(-1)


class WavelengthPosition(nn.Module):
    """Encoding of each patch's central wavelength; the CLS token gets a learned vector."""

    def __init__(
        self,
        *,
        wave_A,
        dim: int,
        patch_size: int,
        stride: int,
        has_cls: bool,
        min_period_lnwave: float = 1e-4,
        max_period_lnwave: float = 10.0,
    ):
        super().__init__()
        if wave_A is None:
            raise InputError("pos_encoding='wavelength' needs the input wavelength grid", field="wave", value=None)
        wave_A = torch.as_tensor(wave_A, dtype=torch.float64)
        self.patch_size, self.stride, self.has_cls = patch_size, stride, has_cls
        n_freq = dim // 2
        periods = min_period_lnwave * (max_period_lnwave / min_period_lnwave) ** (
            torch.arange(n_freq, dtype=torch.float64) / max(n_freq - 1, 1)
        )
        self.register_buffer("omega", 1.0 / periods, persistent=False)
        self.register_buffer("patch_lnwave", patch_log_wave(wave_A, patch_size=patch_size, stride=stride), persistent=False)
        self.proj = nn.Linear(2 * n_freq, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if has_cls else None

    def features(self, lnwave: torch.Tensor) -> torch.Tensor:
        ang = lnwave[..., None] * self.omega  # float64: ln(lambda) ~ 9 needs the precision for 1e-4 periods
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).float()

    def forward(self, x: torch.Tensor, *, wave=None) -> torch.Tensor:
        lnw = self.patch_lnwave if wave is None else patch_log_wave(
            torch.as_tensor(wave, device=x.device), patch_size=self.patch_size, stride=self.stride
        )
        pe = self.proj(self.features(lnw).to(x.device)).to(x.dtype)
        if pe.dim() == 2:
            pe = pe[None]
        if self.has_cls:
            pe = torch.cat([self.cls.expand(pe.shape[0], -1, -1).to(x.dtype), pe], dim=1)
        return x + pe


def build_position(
    kind: str, *, n_positions: int, dim: int, heads: int, wave_A, patch_size: int, stride: int, has_cls: bool
) -> tuple[nn.Module | None, RotaryEmbedding | None]:
    """``(encoding added to the tokens, rotary embedding applied in attention)``, one of them None.

    ``kind``: ``"sinusoidal"``, ``"rope"`` or ``"wavelength"``; ``n_positions`` tokens (CLS included),
    width ``dim`` split over ``heads``; ``wave_A`` (Angstrom, n_pixels), ``patch_size``, ``stride``
    (pixels) and ``has_cls`` for the wavelength encoding.
    """
    if kind == "sinusoidal":
        return SinusoidalPosition(n_positions=n_positions, dim=dim), None
    if kind == "rope":
        return None, RotaryEmbedding(n_positions=n_positions, head_dim=dim // heads)
    if kind == "wavelength":
        return WavelengthPosition(wave_A=wave_A, dim=dim, patch_size=patch_size, stride=stride, has_cls=has_cls), None
    raise InputError("unknown pos_encoding (known: sinusoidal, rope, wavelength)", field="pos_encoding", value=kind)
