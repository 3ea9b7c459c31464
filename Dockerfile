# callhub as a container image: docker-compose.yml builds it.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /var/lib/callhub --shell /usr/sbin/nologin callhub \
 && mkdir -p /var/lib/callhub/spool /etc/callhub \
 && chown -R callhub:callhub /var/lib/callhub

WORKDIR /opt/callhub
COPY pyproject.toml README.md ./
COPY callhub ./callhub
RUN pip install --no-cache-dir . && rm -rf /opt/callhub/build

USER callhub
WORKDIR /var/lib/callhub
ENV CALLHUB_CONFIG=/etc/callhub/callhub.toml \
    PYTHONUNBUFFERED=1
# HTTP API and /metrics, FastAGI
EXPOSE 8080 4573
ENTRYPOINT ["callhub"]
CMD ["run"]
