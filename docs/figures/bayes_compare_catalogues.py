"""Per-spectrum comparison of two posterior catalogues (``run_bayes`` / ``bayes_rows.py`` CSVs) on their common rows
(docs/bayes.md, "T_eff 68 % coverage at high SNR").

    python docs/figures/bayes_compare_catalogues.py A.csv B.csv

Per label: sd ratio B/A (median, 10 %, 90 %), |Δ mean| / sd_A (median), mean signed Δ mean / sd_A, 68 % (q16–q84)
coverage of A and B, rows whose truth is inside one 68 % interval and outside the other, and the correlation
of z = (true − mean) / sd between A and B (same row: for two datasets with the same noise seed, the same noise
vector; a correlation there means the two sets are not independent draws).
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

LABELS = ("T_eff", "log_g", "M_H", "a_M", "C_M")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    a_ = ap.parse_args(argv)
    a = pd.read_csv(a_.a).set_index("row")
    b = pd.read_csv(a_.b).set_index("row")
    rows = a.index.intersection(b.index)
    a, b = a.loc[rows], b.loc[rows]
    for nm, c in (("A", a), ("B", b)):
        print(f"{nm}: median ESS {c['ess'].median():.0f}, mean draws {c['n_draws'].mean():.0f}")
    print(f"{len(rows)} common rows; label: sd ratio B/A median [10 %, 90 %], |dmean|/sd median, mean dmean/sd, "
          f"68 % cov A, B, in/out flips, corr(z_A, z_B)")
    for n in LABELS:
        if f"{n}_sd" not in a or f"true_{n}" not in a:
            continue
        r = b[f"{n}_sd"] / a[f"{n}_sd"]
        dm = (b[f"{n}_mean"] - a[f"{n}_mean"]) / a[f"{n}_sd"]
        ca = (a[f"true_{n}"] >= a[f"{n}_q16"]) & (a[f"true_{n}"] <= a[f"{n}_q84"])
        cb = (b[f"true_{n}"] >= b[f"{n}_q16"]) & (b[f"true_{n}"] <= b[f"{n}_q84"])
        za = (a[f"true_{n}"] - a[f"{n}_mean"]) / a[f"{n}_sd"]
        zb = (b[f"true_{n}"] - b[f"{n}_mean"]) / b[f"{n}_sd"]
        print(f"  {n:6s} {np.median(r):.3f} [{np.quantile(r, 0.1):.3f}, {np.quantile(r, 0.9):.3f}]  "
              f"{np.median(np.abs(dm)):.3f}  {dm.mean():+.4f}  {100 * ca.mean():.1f} {100 * cb.mean():.1f}  "
              f"{int((ca != cb).sum())}  {np.corrcoef(za, zb)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
