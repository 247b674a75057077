# syntax=docker/dockerfile:1
# The jobgate operator image: `docker build -t jobgate:0.1.0 .` at the repository root.
# Python packages come only from requirements*.lock (pinned, hash-checked; `make lock` regenerates them).

# One base for both stages: the venv built in the first runs on the second's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Two venvs: /opt/build holds the build backend and pip; /opt/jobgate, without pip, is all the image ships.
# Dependencies first, so this layer is reused until a lock file changes.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r requirements-build.lock \
 && python -m venv --without-pip /opt/jobgate \
 && /opt/build/bin/pip --python /opt/jobgate/bin/python install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator/ operator/
# --no-index: installing the wheel may not fetch anything; it fails if the lock misses a dependency.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/build/bin/pip --python /opt/jobgate/bin/python install --no-index /tmp/dist/jobgate-*.whl

FROM ${PYTHON_IMAGE}
# The chart's securityContext runs as this UID/GID (charts/jobgate/values.yaml: podSecurityContext).
ARG JOBGATE_UID=65532
RUN groupadd --system --gid "${JOBGATE_UID}" jobgate \
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
