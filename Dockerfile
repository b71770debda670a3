# The churn service (`churnlab serve`) in a container: docs/serving.md, "Container".
# Build with `make image` (docker where its daemon answers, else podman). The base image is a
# minimal Debian bookworm with its python3 (3.11), built from Debian's packages by
# deploy/base-image.sh, so no container registry is needed.
#
# The model is baked in from build/image/model/ (`make image` exports the registry's champion
# there as models/model.skops and metrics/test.json, the project's own layout) or mounted at
# run time over /app/models and /app/metrics (docs/serving.md).

# ---- builder: the locked serving dependencies and churnlab itself in a venv ----
FROM churnlab-base:bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
COPY deploy/requirements-serving.txt /tmp/requirements-serving.txt
# Behind a TLS-inspecting proxy pip needs the host's CA bundle: passed as a build secret
# (`--secret id=ca_bundle,src=...`), so it is in no layer of either stage.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/venv/bin/pip install --no-deps --only-binary=:all: -r /tmp/requirements-serving.txt
COPY pyproject.toml README.md /tmp/churnlab/
COPY src /tmp/churnlab/src
# --no-deps: the dependencies are exactly the locked ones above. Only the build of churnlab's
# own wheel needs setuptools (build isolation fetches it), nothing of it reaches the venv.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/venv/bin/pip install --no-deps /tmp/churnlab \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/pip /opt/venv/lib/python3.11/site-packages/setuptools

# ---- runtime: Python, the venv, the project's params and the model; nothing else ----
FROM churnlab-base:bookworm
RUN groupadd --system --gid 10001 churnlab \
    && useradd --system --uid 10001 --gid churnlab --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin churnlab
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# churnlab finds its project by dvc.yaml and params/ (the service reads params/serve.yaml and
# the data schema in params/data.yaml); the model file and its operating threshold (in
# metrics/test.json) are where the project keeps them
COPY dvc.yaml /app/dvc.yaml
COPY params /app/params
COPY build/image/model /app
# HOME and every cache in /tmp: the root filesystem may be read-only (a tmpfs on /tmp)
ENV PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    DO_NOT_TRACK=1 \
    CHURNLAB_SERVE_HOST=0.0.0.0 \
    CHURNLAB_SERVE_PORT=8000 \
    CHURNLAB_SERVE_MODEL=models/model.skops
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["churnlab", "serve"]
