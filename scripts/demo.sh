#!/usr/bin/env bash
# The whole pipeline on synthetic data: generate -> train -> export -> bulk-index -> serve -> search over HTTP.
# Steps whose output already exists are skipped (FORCE=1 redoes them); each step prints its time and a summary
# lists them at the end. Runs on CPU: a few minutes on two cores, after make setup's installation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${DATA:-data/synth}
CKPT=${CKPT:-checkpoints/demo}
ARTIFACT=${ARTIFACT:-artifacts/demo}
GALLERY_DIR=${GALLERY_DIR:-galleries/demo}
PORT=${PORT:-8000}
TARGET_FAR=${TARGET_FAR:-0.1}  # the verdict's operating point: the demo model can support 10 %, not 1 %
FORCE=${FORCE:-0}
# OpenMP threads that wait passively: with every core in use, spinning threads stall whenever another process
# takes a core (a training step 5-10x slower on a busy 2-core machine, measured), and sleeping ones do not.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need() { [ "$FORCE" = 1 ] || [ ! -e "$1" ]; }
now() { date +%s.%N; }
STAGES=() DEMO_START=$(now) STAGE_START=""
# begin NAME HEADING / end: one timed stage; skip NAME WHAT: a stage whose output WHAT exists
begin() { STAGE_NAME=$1; STAGE_START=$(now); step "$2"; }
end() {
  local took
  took=$(awk -v a="$STAGE_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  STAGES+=("$(printf '%-24s %7s s' "$STAGE_NAME" "$took")")
  printf '\033[1m-- %s: %s s\033[0m\n' "$STAGE_NAME" "$took"
}
skip() { STAGES+=("$(printf '%-24s %9s' "$1" "skipped")"); step "$1: $2 exists (FORCE=1 redoes it)"; }
summary() {
  printf '\n\033[1m== demo: time per stage\033[0m\n'
  printf '%s\n' "${STAGES[@]}"
  printf '%-24s %7s s  (make setup'"'"'s installation not included)\n' total \
    "$(awk -v a="$DEMO_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
}
BUILT=0  # a stage rebuilt the model: the gallery must be rebuilt with it

if need "$DATA/bounding_box_train"; then
  begin "1/5 data" "1/5 synthetic data set -> $DATA"
  rm -rf "$DATA"
  $PY -m training.synth "$DATA" --ids 200 --cams 6 --seed 0
  end
else skip "1/5 data" "$DATA"; fi

if need "$CKPT/meta.json"; then
  begin "2/5 train" "2/5 train (configs/demo.yaml) -> $CKPT"
  $PY -m training.train --config configs/demo.yaml data_root="$DATA" out_dir="$CKPT"
  end
  begin "2/5 baseline" "2/5 colour-histogram baseline (what training must beat)"
  $PY -m training.baseline "$DATA"
  end
  BUILT=1
else skip "2/5 train" "$CKPT"; fi
if ! grep -q '"operating_points"' "$CKPT/meta.json"; then
  # A checkpoint trained before training recorded the verdict's operating points: evaluate it once more to add
  # them (open set: DIR at FAR 0.1 / 0.01 / 0.001) and dir_far.png.
  $PY -m training.evaluate "$CKPT" --data "$DATA" --write-meta
fi

if [ "$BUILT" = 1 ] || need "$ARTIFACT/spec.json" || ! grep -q '"operating_points"' "$ARTIFACT/spec.json"; then
  begin "3/5 export" "3/5 export -> $ARTIFACT"
  rm -rf "$ARTIFACT"
  $PY -m export "$CKPT" --out "$ARTIFACT" --data "$DATA"
  end
  BUILT=1
else skip "3/5 export" "$ARTIFACT"; fi

# The gallery holds the artifact's embeddings: rebuilt when the artifact was, kept otherwise (with what was added
# to it through the API since).
if [ "$BUILT" = 1 ] || need "$GALLERY_DIR"; then
begin "4/5 index" "4/5 bulk-index $DATA/bounding_box_test -> $GALLERY_DIR, a fifth of the people left out"
# Who is left out is a seeded draw, not a choice: their queries must come back "unknown". Distractors (person 0)
# go in without a person id, so they take places among the hits but are never an identity.
rm -rf "$GALLERY_DIR"
$PY - "$DATA" <<'EOF'
import csv
import random
import sys
from pathlib import Path

from formats.names import JUNK_PERSON, parse_dataset_name

root = Path(sys.argv[1])
crops = [(p, parse_dataset_name(p.stem)) for p in sorted((root / "bounding_box_test").glob("*.jpg"))]
people = sorted({n.person_id for _, n in crops if n and n.person_id not in ("0000", JUNK_PERSON)})
left_out = sorted(random.Random(0).sample(people, len(people) // 5))
with open(root / "demo_gallery.csv", "w", newline="") as f:
    rows = csv.writer(f)
    rows.writerow(["path", "person_id", "camera_id"])
    for path, name in crops:
        if name and name.person_id not in left_out and name.person_id != JUNK_PERSON:
            rows.writerow([f"bounding_box_test/{path.name}", "" if name.person_id == "0000" else name.person_id, name.camera_id])
(root / "demo_left_out.txt").write_text("\n".join(left_out) + "\n")
print(f"{len(people) - len(left_out)} people enrolled, {len(left_out)} left out: {' '.join(left_out)}")
EOF
# --keep-crops: the gallery keeps its images (GALLERY_DIR/crops), to show (reid search --show) and to rebuild for
# another model (reid gallery reembed).
$PY -m ingestion.bulk "$DATA/demo_gallery.csv" --gallery "$GALLERY_DIR" --artifact "$ARTIFACT" --keep-crops
# What the gallery's own people say (leave one identity out; a dry run: the searches below use the artifact's).
.venv/bin/reid calibrate "$GALLERY_DIR" --far "$TARGET_FAR" --dry-run
end
else skip "4/5 index" "$GALLERY_DIR"; fi

begin "5/5 serve + search" "5/5 serve on 127.0.0.1:$PORT at target FAR $TARGET_FAR; search an enrolled person and one left out"
REID_TARGET_FAR="$TARGET_FAR" REID_ARTIFACT="$ARTIFACT" REID_GALLERY_DIR="$GALLERY_DIR" REID_KEEP_CROPS=true \
  $PY -m server --host 127.0.0.1 --port "$PORT" --log-level warning &
server=$!
stop_server() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the server exited" >&2; exit 1; }
  sleep 0.5
done
person() { basename "$1" | cut -c1-4; }
enrolled="" absent=""
for query in "$DATA"/query/*.jpg; do
  if grep -qx "$(person "$query")" "$DATA/demo_left_out.txt"; then absent=${absent:-$query}; else enrolled=${enrolled:-$query}; fi
done
for query in "$enrolled" "$absent"; do
  if [ "$query" = "$enrolled" ]; then who="enrolled"; else who="left out of the gallery"; fi
  printf '\n\033[1mquery %s: person %s, %s\033[0m\n' "$query" "$(person "$query")" "$who"
  .venv/bin/reid --url "http://127.0.0.1:$PORT" search "$query" -k 5
done
# Every query through the API: the false-alarm rate on the left-out people, the DIR on the enrolled ones.
$PY - "$DATA" "http://127.0.0.1:$PORT" <<'EOF'
import sys
from pathlib import Path

from client import ReIDClient

root, url = Path(sys.argv[1]), sys.argv[2]
left_out = set((root / "demo_left_out.txt").read_text().split())
alarms, found, absent_people = [], [], set()
with ReIDClient(url) as reid:
    for query in sorted((root / "query").glob("*.jpg")):
        person = query.name[:4]
        result = reid.search(query)
        top = result.identities[0].person_id if result.identities else None
        if person in left_out:
            alarms.append(result.verdict == "match")
            absent_people.add(person)
        else:
            found.append(result.verdict == "match" and top == person)
c = result.calibration
print(
    f"\noperating point: target FAR {result.target_far:g}, threshold {result.threshold:.4f}, calibrated on the "
    f"{c.source} ({c.method}, {c.gallery_identities} identities): DIR {c.dir:.3f}, FAR {c.measured_far:.3f}"
)
print(
    f"measured here: FAR {sum(alarms) / len(alarms):.3f} ({sum(alarms)} of {len(alarms)} queries of the "
    f"{len(absent_people)} people left out), DIR {sum(found) / len(found):.3f} ({sum(found)} of {len(found)} "
    "queries of enrolled people)"
)
EOF
.venv/bin/reid --url "http://127.0.0.1:$PORT" stats
stop_server
trap - EXIT
end
summary
echo "demo: done. make serve starts the same server (target FAR $TARGET_FAR, crops kept) on this gallery."
