#!/usr/bin/env bash
# Quiet-machine timings of the README's command table, from a folder outside the checkout.
set -u
export HYPERSAN_CACHE=$(mktemp -d)
HS=/work/main/.venv/bin/hypersan
OUT=/tmp/measure; rm -rf $OUT; mkdir -p $OUT; cd $OUT
t() { local s=$(date +%s.%N); "$@" > $OUT/last.out 2> $OUT/last.err; local rc=$?; local e=$(date +%s.%N); echo "$(echo "$e - $s" | bc) s rc=$rc: $*"; }
t $HS resolve "shoes and handbags"
t $HS eval --subtasks "Sneaker,Bag" --json
cp last.out eval1.json
t $HS eval --subtasks "Coat,Shirt" --json
cp last.out eval2.json
t $HS prune --classes Sneaker,Bag --out $OUT/pair --format safetensors,onnx
t $HS bench --runtime onnxruntime --batches 1,256 --threads 2 --json
cp last.out bench.json
t $HS demo --out $OUT/demo
cp last.out demo.txt
