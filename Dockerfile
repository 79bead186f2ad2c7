# syntax=docker/dockerfile:1
# One image for every role: `meshcast up | origin | transcoder | edge`. FFmpeg (libx264,
# libopus, ...) comes inside the PyAV wheel, so the runtime image needs no system FFmpeg.
#
# NVENC variant (hosts with an NVIDIA GPU + NVIDIA Container Toolkit): build with
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 --build-arg PYTHON=python3.11 .
# and run with `--gpus all -e NVIDIA_DRIVER_CAPABILITIES=video,compute,utility`; the encoder
# probe picks h264_nvenc when it opens and falls back to libx264 otherwise (`--encoder nvenc`
# makes a missing NVENC a start-up error instead).
ARG BASE=python:3.11-slim-bookworm

FROM node:22-bookworm-slim AS player
WORKDIR /src/player-demo
COPY player-demo/package.json player-demo/package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshcast meshcast
COPY origin origin
COPY transcoder transcoder
COPY edge edge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE} AS runtime
ARG PYTHON=python3
RUN useradd --system --uid 10001 --create-home --home-dir /home/meshcast meshcast \
 && mkdir -p /data /cache && chown meshcast /data /cache
COPY --from=wheels /wheels /wheels
RUN ${PYTHON} -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --chown=meshcast player-demo /opt/meshcast/player-demo
COPY --from=player --chown=meshcast /src/player-demo/node_modules /opt/meshcast/player-demo/node_modules
ENV PYTHONUNBUFFERED=1 MESHCAST_PLAYER_DIR=/opt/meshcast/player-demo
USER meshcast
WORKDIR /home/meshcast
VOLUME ["/data", "/cache"]
EXPOSE 8080 8081 1935 7000 7001
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["meshcast"]
CMD ["up", "--host", "0.0.0.0", "--data", "/data", "--demo"]
