# vectorhive container image. Not built on the development machines (they cannot pull base
# images); see docs/deploy.md. Keep the Python version and the entrypoint in step with
# pyproject.toml (requires-python, [project.scripts]): tests/test_dockerfile.py checks both.

# --- builder: compiles llama.cpp (through llama-cpp-python) and installs vectorhive into a venv ---
FROM python:3.11-slim AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*

# Portable CPU flags: the image runs on any x86-64 node with AVX2, not only on the build host.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/vectorhive
ENV PATH=/opt/vectorhive/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
# A wheel (not an editable install): it carries migrations/ inside the package.
RUN pip install --upgrade pip \
 && pip install .

# --- runtime: the venv alone, as a non-root user, read-only friendly ---
FROM python:3.11-slim AS runtime

# libgomp1: llama.cpp's OpenMP threads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vectorhive \
 && useradd --system --uid 10001 --gid vectorhive --home-dir /var/lib/vectorhive --shell /usr/sbin/nologin vectorhive \
 && mkdir -p /var/lib/vectorhive/data /var/lib/vectorhive/models /etc/vectorhive \
 && chown -R vectorhive:vectorhive /var/lib/vectorhive

COPY --from=builder /opt/vectorhive /opt/vectorhive
ENV PATH=/opt/vectorhive/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VECTORHIVE_SERVER__HOST=0.0.0.0 \
    VECTORHIVE_DATABASE__DATA_DIR=/var/lib/vectorhive/data/postgres

USER 10001:10001
WORKDIR /var/lib/vectorhive
EXPOSE 8000

# /healthz needs no key and no database (liveness); the chart's probes do the same over HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["vectorhive"]
CMD ["serve"]
