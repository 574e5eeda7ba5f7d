"""Run logs (rank 0 only): a CSV of every logged step/evaluation and TensorBoard scalars."""
from __future__ import annotations

import csv
from pathlib import Path


class RunLogger:
    """Append rows to ``metrics.csv`` (columns fixed by the first row's keys plus later ones) and TensorBoard."""

    def __init__(self, out_dir, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard not installed: CSV only
                self._tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v) for k, v in row.items()}
        fields = list(row)
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if set(fields) - set(header):  # new columns: rewrite with the union header
                with open(self.path, newline="") as f:
                    old = list(csv.DictReader(f))
                header = header + [k for k in fields if k not in header]
                with open(self.path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=header)
                    w.writeheader()
                    w.writerows(old)
        else:
            header = fields
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, float):
                    self._tb.add_scalar(k.replace("_", "/", 1), v, step)
            self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run replays them)."""
        if not (self.enabled and self.path.exists()):
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], [r for r in reader if int(float(r.get("step") or 0)) <= step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
