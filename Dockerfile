# The one SceneRec image: Faust workers, the Ray head/workers running the Serve apps, and
# the CLI tools (`scenerec load`, `scenerec tail`, ...). Built from the README's own steps:
# `pip install -r requirements.lock`, then the code on PYTHONPATH.
#
#   docker build -t scenerec:0.1.0 .
#
# No Kafka broker and no JRE in here: Compose and Kubernetes run Kafka from its own image.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="scenerec" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="SceneRec: real-time multi-scene recommender (Faust workers, Ray Serve encoder and pull API)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# wget: KubeRay's readiness/liveness probes run `bash -c "wget ..."` inside Ray containers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# Into the image's own interpreter, not a venv: KubeRay starts Ray with `bash -lc`, and
# Debian's /etc/profile resets PATH, so a venv's `ray` would not be found there.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --upgrade pip && pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock

RUN useradd --create-home --uid 1000 scenerec \
    && mkdir -p /var/lib/scenerec \
    && chown scenerec:scenerec /var/lib/scenerec

WORKDIR /app
COPY --chown=scenerec:scenerec . /app

# The code runs from /app (the README's `PYTHONPATH=.`); state goes to one writable folder:
# the embedded vector store and logs (SCENEREC_VAR_DIR) and Faust's data dir.
# FAUST_LOOP: the worker runs on uvloop (deploy/worker.py says why; "aio" for asyncio's).
ENV PYTHONPATH=/app \
    SCENEREC_VAR_DIR=/var/lib/scenerec \
    FAUST_DATADIR=/var/lib/scenerec/faust-data \
    FAUST_LOOP=uvloop

USER scenerec

# worker web (/metrics, /ready), Ray Serve HTTP, Ray metrics export, Ray dashboard
EXPOSE 16066 18000 9188 8265

CMD ["python", "-m", "faust", "-A", "streams.app", "worker", "-l", "info"]
