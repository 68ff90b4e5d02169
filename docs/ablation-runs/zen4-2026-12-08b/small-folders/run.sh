#!/bin/sh
# Small folders: the steps a run takes, chosen on val/ (train.epochs stands in for train.min_steps: 90 training
# images make 2 steps an epoch, 300 make 5), then configs/folder.toml as it ships against train.min_steps = 0 on
# test/. Run from the repository root with the venv active, after make_folders.py in $W.
W=${W:-/tmp/small-folders}; C=configs/folder.toml; mkdir -p $W/logs
cd_run() { # folder tag train-overrides... ; then eval on split $SPLIT
  f=$1; tag=$2; shift 2
  /usr/bin/time -f "%e s wall" -o $W/logs/${f}_$tag.time hypersan train --config $C --set data.data_dir=$W/$f \
    --set train.progress=false "$@" --out $W/runs/${f}_$tag > $W/logs/${f}_$tag.log 2>&1
  hypersan eval --checkpoint $W/runs/${f}_$tag --split $SPLIT --subtasks size=2,n=10 size=3,n=3 --json \
    > $W/logs/${f}_$tag.$SPLIT.json
}
SPLIT=val
for e in 30 125 250 500 1000; do cd_run v3x30 e$e --set train.epochs=$e --set train.eval_every=0 --set train.min_steps=0; done
for e in 30 100 200 400; do cd_run v10x30 e$e --set train.epochs=$e --set train.eval_every=0 --set train.min_steps=0; done
SPLIT=test
for f in v3x30 v10x30; do cd_run $f before --set train.min_steps=0; cd_run $f after; done
# a 3,000-image folder, 30 and 60 epochs (val: the tenth held out of train/)
SPLIT=val
for e in 30 60; do cd_run fm10x300 e$e --set train.epochs=$e --set train.eval_every=0; done
