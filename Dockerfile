# petvault service image: runtime dependencies only (no moto, no mongomock, no test tools).
# Build:  docker build -t petvault .
# Run:    docker run -p 8443:8443 -v /path/to/pki:/pki:ro -e PETVAULT_ENV=production ... petvault

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY device_sim ./device_sim
COPY certs/*.py ./certs/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# Must match [project].version in pyproject.toml; the wheel is built from this checkout.
ARG PETVAULT_VERSION=0.1.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PETVAULT_HOST=0.0.0.0 \
    PETVAULT_CERTS_DIR=/pki
RUN groupadd --system --gid 10001 petvault \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent \
        --shell /usr/sbin/nologin petvault
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels "petvault==${PETVAULT_VERSION}" \
    && rm -rf /wheels
USER 10001:10001
# 8443: device API (mutual TLS). 8444: admin API (mutual TLS, bind it to a private
# address with PETVAULT_ADMIN_HOST). The health port 8080 listens on 127.0.0.1 only.
EXPOSE 8443 8444
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["petvault"]
CMD ["serve"]
