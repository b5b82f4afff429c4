# The REST service and forecast page: `mmf serve` on port 8080.
#   docker build -t mmf-serve .
#   docker run -p 8080:8080 -e MMF_LAKEHOUSE=/data/lakehouse -v "$PWD/lakehouse:/data/lakehouse:ro" mmf-serve
# MMF_LAKEHOUSE (a folder, abfss://, az:// or s3://), MLFLOW_TRACKING_URI and MMF_API_KEY
# configure it; see deploy/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY forecasting ./forecasting
COPY training ./training
COPY registry ./registry
COPY conf ./conf
RUN pip install ".[serve]" \
    && useradd --system --uid 10001 --create-home --home-dir /home/mmf mmf

USER 10001
ENV HOME=/home/mmf \
    MMF_LAKEHOUSE=/data/lakehouse \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["mmf", "serve", "--host", "0.0.0.0", "--port", "8080"]
