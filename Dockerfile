FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kling ./kling
COPY worker ./worker
COPY webhook ./webhook
COPY chainctl ./chainctl
RUN pip install --no-cache-dir .
RUN useradd --create-home app && mkdir /archive && chown app /archive
USER app
