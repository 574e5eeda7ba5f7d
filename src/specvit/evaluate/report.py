"""A self-contained HTML report plus ``metrics.json``.

:func:`write_report` renders figures (matplotlib Figures or PNG files), tables
(pandas DataFrames), metrics, the resolved config, provenance (command line,
package versions) and timings into one ``report.html`` whose PNGs are embedded
as base64 (the file can be mailed or opened offline), and also writes each
figure as ``figures/<name>.png`` beside it (for READMEs and papers). Every file
is written atomically (:mod:`specvit.atomic`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from specvit.atomic import atomic_path, write_text_atomic
from specvit.errors import InputError

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #0072B2;padding-bottom:.2em} h2{margin-top:1.6em;color:#0072B2}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f6fa} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em} nav a{margin-right:1em}
"""


def to_jsonable(obj):
    """Convert numpy/pandas/Path values (nested) to plain JSON types; NaN/inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # DataFrame
        return to_jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    return s or "figure"


def _figure_png(fig_or_path, name: str) -> bytes:
    if isinstance(fig_or_path, (str, Path)):
        p = Path(fig_or_path)
        if not p.exists():
            raise InputError("figure file not found", file=p, field=f"figures[{name!r}]")
        data = p.read_bytes()
        if not data.startswith(b"\x89PNG"):
            raise InputError("figure file is not a PNG", file=p, field=f"figures[{name!r}]")
        return data
    if hasattr(fig_or_path, "savefig"):
        buf = io.BytesIO()
        fig_or_path.savefig(buf, format="png", dpi=130)
        return buf.getvalue()
    raise InputError("a figure must be a matplotlib Figure or a PNG path", field=f"figures[{name!r}]",
                     value=type(fig_or_path).__name__)


def _table_html(name: str, df) -> str:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        try:
            df = pd.DataFrame(df)
        except (TypeError, ValueError) as e:
            raise InputError(f"a table must be a DataFrame ({e})", field=f"tables[{name!r}]") from None
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0, escape=True)


def _kv_table(d: Mapping) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(to_jsonable(v))
    return str(v)


def write_report(
    out_dir,
    *,
    title: str,
    metrics: Mapping | None = None,
    figures: Mapping[str, object] | None = None,
    tables: Mapping[str, object] | None = None,
    config: Mapping | None = None,
    provenance: Mapping | None = None,
    timings: Mapping[str, float] | None = None,
    captions: Mapping[str, str] | None = None,
    summary: str | None = None,
) -> Path:
    """Write ``out_dir/report.html``, ``out_dir/metrics.json`` and ``out_dir/figures/*.png``.

    Parameters
    ----------
    out_dir : directory (created if missing).
    title : report title.
    metrics : JSON-able dict (numpy values allowed; NaN -> null) written to ``metrics.json``
        and shown in the report.
    figures : {name: matplotlib Figure or path to a PNG}, in display order.
    tables : {name: pandas DataFrame}.
    config : the resolved configuration (dict).
    provenance : command line, package versions, seeds (e.g. :func:`specvit.config.provenance`).
    timings : {step: seconds}.
    captions : optional {figure name: caption}.
    summary : optional paragraph (plain text) at the top.

    Returns
    -------
    Path of ``report.html``.
    """
    if not isinstance(title, str) or not title:
        raise InputError("the report needs a title", field="title", value=title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = to_jsonable(metrics or {})
    figures = dict(figures or {})
    tables = dict(tables or {})
    captions = dict(captions or {})

    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")

    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Written {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>"]
    if summary:
        parts.append(f"<p>{html.escape(summary)}</p>")
    nav = ["figures"] * bool(figures) + ["tables"] * bool(tables) + ["metrics"] * bool(metrics) \
        + ["timings"] * bool(timings) + ["config"] * bool(config) + ["provenance"] * bool(provenance)
    parts.append("<nav>" + "".join(f'<a href="#{n}">{n}</a>' for n in nav) + "</nav>")

    if figures:
        parts.append('<h2 id="figures">Figures</h2>')
        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        for name, fig in figures.items():
            png = _figure_png(fig, name)
            with atomic_path(fig_dir / f"{_slug(name)}.png") as tmp:
                tmp.write_bytes(png)
            b64 = base64.b64encode(png).decode("ascii")
            cap = html.escape(captions.get(name, name))
            parts.append(
                f'<figure id="fig-{_slug(name)}"><img alt="{html.escape(name)}" '
                f'src="data:image/png;base64,{b64}"><figcaption><b>{html.escape(name)}</b>. {cap}'
                f"</figcaption></figure>"
            )
    if tables:
        parts.append('<h2 id="tables">Tables</h2>')
        for name, df in tables.items():
            parts.append(f'<h3 id="table-{_slug(name)}">{html.escape(name)}</h3>{_table_html(name, df)}')
    if metrics:
        parts.append('<h2 id="metrics">Metrics (<code>metrics.json</code>)</h2>')
        parts.append(f"<pre>{html.escape(json.dumps(metrics, indent=2))}</pre>")
    if timings:
        parts.append('<h2 id="timings">Timings</h2>')
        parts.append(_kv_table({k: f"{float(v):.1f} s" for k, v in timings.items()}))
    if config:
        parts.append('<h2 id="config">Resolved configuration</h2>')
        parts.append(f"<pre>{html.escape(json.dumps(to_jsonable(config), indent=2))}</pre>")
    if provenance:
        parts.append('<h2 id="provenance">Provenance</h2>')
        prov = dict(provenance)
        versions = prov.pop("versions", None)
        parts.append(_kv_table(prov))
        if versions:
            parts.append("<h3>Package versions</h3>" + _kv_table(versions))

    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    path = out / "report.html"
    write_text_atomic(path, doc)
    return path


# ------------------------------------------------------------------------------------------------
# uncertainty report (issue #14): accuracy and interval coverage of Gaussian networks and the posterior
# ------------------------------------------------------------------------------------------------
def _r2(t, p) -> float:
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    if t.size < 2:
        return float("nan")
    return float(1.0 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))


def _cov(t, p, s, level: str) -> float:
    """Coverage of p ± k s (k of ``level`` "68"/"95" from :data:`specvit.scores.COVERAGE_Z`) over the finite rows."""
    from specvit.scores import coverage_fraction

    ok = np.isfinite(t) & np.isfinite(p) & np.isfinite(s)
    return float(coverage_fraction((p[ok] - t[ok]) / s[ok], level)) if ok.any() else float("nan")


def uncertainty_tables(catalogues: Mapping[str, object], truth, *, label_names, bayes=None):
    """Per model and label: test R², and 68/95 % coverage of the raw and calibrated sigmas (+ the posterior's).

    Parameters
    ----------
    catalogues : {name: DataFrame from ``specvit predict``} with ``row``, ``<label>``, ``<label>_err`` and
        (calibrated models) ``<label>_err_raw``.
    truth : DataFrame of the test set's true labels (the dataset's params), indexed by row.
    label_names : labels to report.
    bayes : optional ``specvit baseline bayes`` catalogue (``row``, ``<label>_mean/_sd/_q2.5/_q16/_q84/_q97.5``,
        ``true_<label>``, ``flag``): its rows (flag ok or low_ess) form the "posterior subset" on which every
        model is also scored.

    Returns ``(table, subset_rows)``: a DataFrame with one row per (model, label); network coverage is
    ``|pred − true| ≤ σ`` (68.3 % target) and ``≤ 1.96 σ`` (95 %; k from :data:`specvit.scores.COVERAGE_Z`); the
    posterior's is the central 68 % / 95 % credible interval (q16–q84, q2.5–q97.5), and ``cov68_sd``/``cov95_sd``
    its mean ± 1 / 1.96 sd intervals.
    """
    import pandas as pd

    names = list(label_names)
    sub = None
    if bayes is not None:
        use = bayes["flag"].isin(["ok", "low_ess"]).to_numpy() if "flag" in bayes.columns else np.ones(len(bayes), bool)
        sub = bayes["row"].to_numpy()[use]
    rows = []
    for model, cat in catalogues.items():
        if "row" not in cat.columns:
            raise InputError("catalogue has no 'row' column (write it with specvit predict)", field=f"{model}/row")
        r = cat["row"].to_numpy()
        for lab in names:
            for col in (lab, f"{lab}_err"):
                if col not in cat.columns:
                    raise InputError("catalogue lacks a column (a Gaussian-head model's specvit predict output?)",
                                     field=f"{model}/{col}")
            t = truth[lab].to_numpy(float)[r]
            p = cat[lab].to_numpy(float)
            s_cal = cat[f"{lab}_err"].to_numpy(float)
            s_raw = cat[f"{lab}_err_raw"].to_numpy(float) if f"{lab}_err_raw" in cat.columns else s_cal
            row = {"model": model, "label": lab, "n": int(np.isfinite(p).sum()), "r2": _r2(t, p),
                   "cov68_raw": _cov(t, p, s_raw, "68"), "cov95_raw": _cov(t, p, s_raw, "95"),
                   "cov68_cal": _cov(t, p, s_cal, "68"), "cov95_cal": _cov(t, p, s_cal, "95"),
                   "sigma_median": float(np.nanmedian(s_cal))}
            if sub is not None:
                m = np.isin(r, sub)
                row["r2_subset"] = _r2(t[m], p[m])
                row["cov68_cal_subset"] = _cov(t[m], p[m], s_cal[m], "68")
                row["cov95_cal_subset"] = _cov(t[m], p[m], s_cal[m], "95")
            rows.append(row)
    if bayes is not None:
        b = bayes[bayes["row"].isin(sub)]
        for lab in names:
            t = b[f"true_{lab}"].to_numpy(float)
            mean, sd = b[f"{lab}_mean"].to_numpy(float), b[f"{lab}_sd"].to_numpy(float)
            c68 = float(np.mean((t >= b[f"{lab}_q16"]) & (t <= b[f"{lab}_q84"])))
            c95 = float(np.mean((t >= b[f"{lab}_q2.5"]) & (t <= b[f"{lab}_q97.5"])))
            rows.append({"model": "bayes posterior", "label": lab, "n": int(len(b)), "r2": _r2(t, mean),
                         "cov68_cal": c68, "cov95_cal": c95, "cov68_sd": _cov(t, mean, sd, "68"),
                         "cov95_sd": _cov(t, mean, sd, "95"), "sigma_median": float(np.nanmedian(sd)),
                         "r2_subset": _r2(t, mean), "cov68_cal_subset": c68, "cov95_cal_subset": c95})
    return pd.DataFrame(rows), sub


def markdown_table(df, *, digits: int = 3) -> str:
    """A DataFrame as a GitHub markdown table (floats to ``digits`` decimals, NaN as an empty cell)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"
