# Training and export on a GPU host (CUDA build of torch, TensorRT for model.plan).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t apnet-reid-trainer .
# A TensorRT plan only runs on the TensorRT version that built it: match TRT_VERSION to the Triton image in compose.yml.
FROM nvcr.io/nvidia/pytorch:25.08-py3

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /workspace/apnet-reid
COPY . .
# The container's own torch, CUDA and TensorRT stay; the rest comes from the lock.
RUN pip install -c requirements.lock --no-deps . \
 && pip install -c requirements.lock onnx onnxscript onnxruntime-gpu pyyaml tqdm pillow pydantic pydantic-settings \
        "opencv-python-headless" "tritonclient[all]"
ENTRYPOINT ["python"]
CMD ["-m", "training.train", "--help"]
