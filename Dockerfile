# The API (and the one-shot migrations) image: CPU only. The API never imports torch, but the
# project's dependencies include it, so the small CPU wheel is installed first and satisfies
# `torch>=2.4,<2.15` instead of pip pulling the multi-GB CUDA build from PyPI.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.15"

WORKDIR /app
COPY pyproject.toml alembic.ini README* ./
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/tuneforge tuneforge \
 && install -d -o tuneforge -g tuneforge /var/lib/tuneforge/adapters

USER tuneforge
EXPOSE 8000
ENTRYPOINT ["tuneforge"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
