# The retrieval API (server/ + index/ + client/), without torch: the server reads the exported artifact only.
# Build from the repository root:  docker build -f docker/server.Dockerfile -t apnet-reid-server .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Runtime packages of the serving side only, at the versions pinned in requirements.lock.
COPY requirements.lock ./
RUN pip install -c requirements.lock \
        numpy opencv-python-headless pillow onnxruntime faiss-cpu fastapi "uvicorn[standard]" \
        python-multipart pydantic pydantic-settings "tritonclient[all]" httpx prometheus-client tqdm

COPY pyproject.toml README.md ./
COPY server ./server
COPY index ./index
COPY client ./client
COPY export ./export
COPY training ./training
# --no-deps: the project's torch pin is for training and export, never loaded by the server.
RUN pip install --no-deps . && python -c "import server.main, index.gallery, sys; assert 'torch' not in sys.modules"

RUN useradd --uid 10001 --create-home reid && mkdir -p /data/gallery && chown reid /data/gallery
USER reid
ENV REID_GALLERY_DIR=/data/gallery
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["uvicorn", "server.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]
