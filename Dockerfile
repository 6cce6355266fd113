# Metronome: the API (`metronome serve`), the shipper (`metronome worker`) and every other
# `metronome ...` command, in one image. Used by docker-compose.yml; on its own:
#
#   docker build -t metronome .
#   docker run -p 8080:8080 -v metronome-data:/var/lib/metronome metronome
#
# Settings are METRONOME_* environment variables: `metronome settings` lists them, and the
# docs site's settings reference describes each.
# The data directory holds the spool (and the embedded store when no Elasticsearch URL is
# set): keep it on a volume, shared by the API and its shipper.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY metronome ./metronome
RUN pip install . && cd / && rm -rf /src

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/metronome --create-home \
        metronome
USER metronome
WORKDIR /var/lib/metronome
ENV METRONOME_HOST=0.0.0.0 \
    METRONOME_DATA_DIR=/var/lib/metronome
VOLUME ["/var/lib/metronome"]
# 8080: the HTTP API; 24224: the Fluentd forward-protocol input (METRONOME_FORWARD=on)
EXPOSE 8080 24224

ENTRYPOINT ["metronome"]
CMD ["serve"]
