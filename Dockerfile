# One image for every StreamFed service (aggregator, sites, simulator, one-shot jobs); the service is
# the command: `docker run streamfed:local site -t fraud --site bank-north --bootstrap kafka:9092`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A non-root user; /state (checkpoints, ledgers, keys) is owned by it so a named volume mounted
# there starts out writable.
RUN groupadd --system --gid 10001 streamfed \
    && useradd --system --create-home --uid 10001 --gid 10001 streamfed \
    && mkdir /state \
    && chown 10001:10001 /state

WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamfed/ streamfed/
COPY schemas/ schemas/
COPY topologies/ topologies/

# torch is pinned in pyproject.toml; the CPU index makes pip take the CPU build (no CUDA libraries).
# Editable, so topologies/ and schemas/ are found next to the package as in a checkout.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e . \
    && streamfed --help > /dev/null

USER 10001:10001
VOLUME ["/state"]
EXPOSE 9400-9409
ENTRYPOINT ["streamfed"]
CMD ["--help"]
