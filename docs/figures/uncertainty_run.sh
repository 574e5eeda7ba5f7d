#!/bin/bash
# the uncertainty experiment (docs/uncertainty.md); run from the repository root: bash docs/figures/uncertainty_run.sh
set -e
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src
PY=${PY:-python}  # the Python that has specvit installed, e.g. PY=.venv/bin/python
S="$PY -m specvit.cli"
for s in train:8000:1 val:1000:2 test:2000:3; do
  IFS=: read split n seed <<< "$s"
  [ -f data/unc/$split.h5 ] || $S simulate --out data/unc/$split.h5 --n $n --seed $seed
done
for m in specvit:specvit_p32_h64_l3 cnn:cnn_small mlp:mlp_small; do
  IFS=: read name arch <<< "$m"
  [ -f runs/unc/$name/metrics.json ] || /usr/bin/time -v $S train --config configs/uncertainty.yaml \
      --set model.name=$arch --set run.out_dir=runs/unc/$name 2> runs_unc_$name.time.log
done
