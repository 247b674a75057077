# syntax=docker/dockerfile:1
# The jobgate operator image: `docker build -t jobgate:0.1.0 .` at the repository root, or `make image`
# (Docker where its engine answers, else buildah on a base made from Debian's packages).
# Python packages come only from requirements*.lock (pinned, hash-checked; `make lock` regenerates them).
#
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret; it reaches pip only, never the image:
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt -t jobgate:0.1.0 .

# One base for both stages: the venv built in the first runs on the second's interpreter. Any image
# with python3 (3.11+) and its venv module will do: `make image` passes a Debian bookworm root filesystem.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Two venvs: /opt/build holds the build backend and pip; /opt/jobgate, without pip, is all the image ships.
# Dependencies first, so this layer is reused until a lock file changes.
COPY requirements.lock requirements-build.lock ./
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r requirements-build.lock \
 && python3 -m venv --without-pip /opt/jobgate \
 && /opt/build/bin/pip --python /opt/jobgate/bin/python install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator/ operator/
# --no-index: installing the wheel may not fetch anything; it fails if the lock misses a dependency.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/build/bin/pip --python /opt/jobgate/bin/python install --no-index /tmp/dist/jobgate-*.whl

FROM ${PYTHON_IMAGE}
# Kept in step with pyproject.toml by tests/test_image.py, which compares it with `jobgate --version`.
ARG JOBGATE_VERSION=0.1.0
# Where the image was built from; `make image` passes the repository's origin URL when it has one.
ARG JOBGATE_SOURCE=""
LABEL org.opencontainers.image.title="jobgate" \
      org.opencontainers.image.description="Limit how many Kubernetes Jobs run at once per value of a label." \
      org.opencontainers.image.version="${JOBGATE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${JOBGATE_SOURCE}"
# The chart's securityContext runs as this UID/GID (charts/jobgate/values.yaml: podSecurityContext).
ARG JOBGATE_UID=65532
# The operator needs no package installer at run time: the base's own pip goes (the slim image has one).
RUN if python3 -m pip --version >/dev/null 2>&1; then \
      python3 -m pip uninstall --yes --no-cache-dir --root-user-action=ignore pip setuptools wheel; \
    fi \
 && groupadd --system --gid "${JOBGATE_UID}" jobgate \
 && useradd --system --uid "${JOBGATE_UID}" --gid jobgate --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin jobgate
COPY --from=builder /opt/jobgate /opt/jobgate
# Bytecode was compiled at install time; the root filesystem is read-only at run time.
ENV PATH=/opt/jobgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${JOBGATE_UID}:${JOBGATE_UID}
# metrics, health (/healthz), webhook: the defaults of `jobgate run` and of the chart.
EXPOSE 8080 8081 9443
ENTRYPOINT ["jobgate"]
CMD ["run"]
