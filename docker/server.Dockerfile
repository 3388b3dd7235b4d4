# The retrieval API without torch: formats/ + embedders/ + index/ + ingestion/ + server/, installed with the
# project's `server` extra at the versions of requirements.lock. The server reads the exported artifact only.
# Build from the repository root:  docker build -f docker/server.Dockerfile -t apnet-reid-server .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md requirements.lock ./
COPY formats ./formats
COPY embedders ./embedders
COPY index ./index
COPY ingestion ./ingestion
COPY server ./server
RUN pip install -c requirements.lock ".[server]" \
    && python -c "import server.main, ingestion.bulk, sys; assert not {'torch', 'training'} & set(sys.modules)"

RUN useradd --uid 10001 --create-home reid && mkdir -p /data/gallery && chown reid /data/gallery
USER reid
ENV REID_GALLERY_DIR=/data/gallery
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
# One process (the embedded gallery has one writer); uvicorn with the deadlines and limits of the REID_* settings.
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
