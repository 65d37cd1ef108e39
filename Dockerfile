# syntax=docker/dockerfile:1
# One image for every service (the Helm chart runs `python -m helicone_<component>` in it):
#   docker build -t ghcr.io/helicone-stack/helicone:0.1.0 .
# A smaller image with fewer services: --build-arg SERVICES="gateway".
# The base is pinned by digest; refresh it with `docker buildx imagetools inspect python:3.11-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ARG SERVICES="gateway ingest api prompts"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY libs/protos libs/protos
COPY libs/core libs/core
COPY services services
RUN python -m venv /opt/helicone \
    && /opt/helicone/bin/pip install -c constraints.txt ./libs/protos ./libs/core \
       $(for s in $SERVICES; do printf ' ./services/%s' "$s"; done) \
    && /opt/helicone/bin/python -m compileall -q /opt/helicone

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/helicone/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HELICONE_HOST=0.0.0.0 \
    HELICONE_DATA_DIR=/var/lib/helicone
RUN groupadd --gid 10001 helicone \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin helicone \
    && mkdir -p /var/lib/helicone && chown 10001:10001 /var/lib/helicone
COPY --from=build /opt/helicone /opt/helicone
USER 10001:10001
EXPOSE 8787 8788 8585 8789 50051
CMD ["python", "-m", "helicone_gateway"]
