#!/bin/sh
# Small folders trained with widths in blocks of 16 channels (generator.keep_multiple = 16) against free widths
# rounded up to the CPU's block at the build (keep_multiple = 1, the earlier default), configs/folder.toml's
# ResNet and hypersan.adapt with a small CNN (mynets.py). Choices on val/ (v10x30: its own val/; fm10x300: a tenth
# of train/), final figures on test/. Folders: docs/ablation-runs/zen4-2026-12-08b/small-folders/make_folders.py
# (or: hypersan data fashion-mnist-png --per-class 30 --val-per-class 100 ...). Run from this folder, the venv
# active, with U set to the folder holding v10x30/ and fm10x300/.
U=${U:-/tmp/small-folders}; W=${W:-/tmp/block-widths}; mkdir -p $W
ev() { # run split [eval options]
  r=$1; s=$2; shift 2
  PYTHONPATH=. hypersan eval --checkpoint $W/runs/$r --split $s --subtasks size=2,n=10 size=3,n=3 --json "$@"
}
for f in v10x30 fm10x300; do
  for km in 1 16; do
    hypersan train --config folder --set data.data_dir=$U/$f --set train.progress=false \
      --set generator.keep_multiple=$km --out $W/runs/${f}_k$km
    ev ${f}_k$km val > ${f}_k$km.val.json; ev ${f}_k$km test > ${f}_k$km.test.json
  done
  ev ${f}_k1 val --round-to 0 > ${f}_k1_exact.val.json
  ev ${f}_k1 val --round-to 16 --round-mode nearest > ${f}_k1_near.val.json
  for g in 0.5 0.25; do
    hypersan train --config folder --set data.data_dir=$U/$f --set train.progress=false \
      --set generator.keep_multiple=16 --set loss.gamma=$g --out $W/runs/${f}_k16g$g
    ev ${f}_k16g$g val > ${f}_k16g$g.val.json
  done
done
PYTHONPATH=. python adapt_run.py $U/v10x30 $W/runs/adapt_v10x30_k1 1 0.05      # the dataclass default weight, before
PYTHONPATH=. python adapt_run.py $U/v10x30 $W/runs/adapt_v10x30_k16 16 0.05
PYTHONPATH=. python adapt_run.py $U/v10x30 $W/runs/adapt_v10x30_k16g0.02 16 0.02
for r in adapt_v10x30_k1 adapt_v10x30_k16 adapt_v10x30_k16g0.02; do ev $r val > $r.val.json; done
for r in adapt_v10x30_k1 adapt_v10x30_k16g0.02; do ev $r test > $r.test.json; done
# a second seed of the small CNN, and the MobileNetV2-style test net at width 32 (adapt_any.py: FACTORY FOLDER OUT
# KEEP_MULTIPLE GAMMA SEED KWARGS; PYTHONPATH holds this folder and the checkout, for tests.models)
for a in "adapt_v10x30_k1_s1 mynets:build 1 0.05 1 {}" "adapt_v10x30_k16g0.02_s1 mynets:build 16 0.02 1 {}" \
         "mobilenet32_k1 tests.models.mobilenet:build 1 0.05 0 {\"width\":32}" \
         "mobilenet32_k16g0.02 tests.models.mobilenet:build 16 0.02 0 {\"width\":32}"; do
  set -- $a; n=$1; shift
  PYTHONPATH=.:../../../.. python adapt_any.py $1 $U/v10x30 $W/runs/$n $2 $3 $4 "$5"
  PYTHONPATH=.:../../../.. ev $n val > $n.val.json; PYTHONPATH=.:../../../.. ev $n test > $n.test.json
done
for r in mobilenet32_k1 mobilenet32_k16g0.02; do
  PYTHONPATH=.:../../../.. hypersan bench --checkpoint $W/runs/$r --runtime onnxruntime --batches 1,256 --threads 2 \
    --subtasks "Sneaker,Bag" "Coat,Shirt" "Sandal,Ankle boot" > $r.bench.txt
done
# a second seed on v10x30
for km in 1 16; do
  hypersan train --config folder --set data.data_dir=$U/v10x30 --set train.progress=false --set train.seed=1 \
    --set generator.keep_multiple=$km --out $W/runs/v10x30_k${km}_s1
  ev v10x30_k${km}_s1 val > v10x30_k${km}_s1.val.json; ev v10x30_k${km}_s1 test > v10x30_k${km}_s1.test.json
done
# the 3-class folder with the config as it ships (test/; before: ../../zen4-2026-12-08b/small-folders/test/)
hypersan train --config folder --set data.data_dir=$U/v3x30 --set train.progress=false --out $W/runs/v3x30_k16
ev v3x30_k16 test > v3x30_k16.test.json
# latency, each alone: onnxruntime, 2 threads, three pairs
for r in fm10x300_k1 fm10x300_k16 adapt_v10x30_k1 adapt_v10x30_k16g0.02; do
  PYTHONPATH=. hypersan bench --checkpoint $W/runs/$r --runtime onnxruntime --batches 1,256 --threads 2 \
    --subtasks "Sneaker,Bag" "Coat,Shirt" "Sandal,Ankle boot" > $r.bench.txt
done
for r in fm10x300_k1 fm10x300_k16; do
  hypersan bench --isa avx2 --checkpoint $W/runs/$r --runtime onnxruntime --batches 1,256 --threads 2 \
    --subtasks "Sneaker,Bag" "Coat,Shirt" "Sandal,Ankle boot" > $r.avx2.bench.txt
done
python summ.py *.val.json; python summ.py *.test.json
