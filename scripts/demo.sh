#!/usr/bin/env bash
# The whole pipeline on synthetic data: generate -> train -> export -> bulk-index -> serve -> search over HTTP.
# Steps whose output already exists are skipped (FORCE=1 redoes them). Runs on CPU in about 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${DATA:-data/synth}
CKPT=${CKPT:-checkpoints/demo}
ARTIFACT=${ARTIFACT:-artifacts/demo}
GALLERY_DIR=${GALLERY_DIR:-galleries/demo}
PORT=${PORT:-8000}
FORCE=${FORCE:-0}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need() { [ "$FORCE" = 1 ] || [ ! -e "$1" ]; }

if need "$DATA/bounding_box_train"; then
  step "1/5 synthetic data set -> $DATA"
  rm -rf "$DATA"
  $PY -m training.synth "$DATA" --ids 200 --cams 6 --seed 0
else step "1/5 synthetic data set: $DATA exists"; fi

if need "$CKPT/meta.json"; then
  step "2/5 train (configs/demo.yaml) -> $CKPT"
  $PY -m training.train --config configs/demo.yaml data_root="$DATA" out_dir="$CKPT"
  $PY -m training.baseline "$DATA"
else step "2/5 train: $CKPT exists"; fi

if need "$ARTIFACT/spec.json"; then
  step "3/5 export -> $ARTIFACT"
  rm -rf "$ARTIFACT"
  $PY -m export "$CKPT" --out "$ARTIFACT" --data "$DATA"
else step "3/5 export: $ARTIFACT exists"; fi

step "4/5 bulk-index $DATA/bounding_box_test -> $GALLERY_DIR"
[ "$FORCE" = 1 ] && rm -rf "$GALLERY_DIR"
$PY -m ingestion.bulk "$DATA/bounding_box_test" --gallery "$GALLERY_DIR" --artifact "$ARTIFACT"

step "5/5 serve on 127.0.0.1:$PORT and search with a query crop"
REID_ARTIFACT="$ARTIFACT" REID_GALLERY_DIR="$GALLERY_DIR" \
  $PY -m server --host 127.0.0.1 --port "$PORT" --log-level warning &
server=$!
stop_server() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the server exited" >&2; exit 1; }
  sleep 0.5
done
query=$(ls "$DATA"/query/*.jpg | head -n 1)
echo "query: $query (person $(basename "$query" | cut -c1-4))"
.venv/bin/reid --url "http://127.0.0.1:$PORT" search "$query" -k 5
.venv/bin/reid --url "http://127.0.0.1:$PORT" stats
stop_server
trap - EXIT
echo "demo: done"
