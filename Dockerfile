# syntax=docker/dockerfile:1
# One image for every brigade process: `brigade ingress`, `brigade worker --class <c>`, `brigade topics create`.
#   docker build -t brigade .                        # CPU (onnxruntime)
#   docker build --build-arg EXTRAS=gpu -t brigade:gpu .   # + onnxruntime-gpu and nvidia-ml-py; run with the
#                                                            NVIDIA container runtime, which supplies the driver
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Metadata first, then sources: the dependency layer is only rebuilt when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY brigade ./brigade
COPY schemas ./schemas
COPY producer ./producer
COPY consumer ./consumer
COPY deploy ./deploy
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

# Numeric non-root user: the Kubernetes manifests set runAsNonRoot/runAsUser 10001.
RUN useradd --uid 10001 --user-group --create-home brigade \
 && mkdir -p /var/cache/brigade/models \
 && chown -R 10001:10001 /var/cache/brigade
USER 10001
ENV BRIGADE_MODEL_CACHE_DIR=/var/cache/brigade/models

# 8080: ingress HTTP (BRIGADE_PORT); 9100: worker /healthz /readyz /metrics (BRIGADE_METRICS_PORT)
EXPOSE 8080 9100
ENTRYPOINT ["brigade"]
CMD ["--help"]
