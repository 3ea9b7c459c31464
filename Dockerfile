# callhub as a container image: docker-compose.yml builds it.
#
# Two stages. The first builds callhub's wheel with setup.py, which compiles the AMI hot
# path (callhub/ami/parser.py and correlator.py, mypyc: a third less CPU an event) and
# needs a C compiler; the image gets the wheel, not the compiler. The build fails when
# the wheel came out as plain Python: it would run, at a third more CPU, without saying
# so (a build without setup.py or gcc does that).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY callhub ./callhub
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --home-dir /var/lib/callhub --shell /usr/sbin/nologin callhub \
 && mkdir -p /var/lib/callhub/spool /etc/callhub \
 && chown -R callhub:callhub /var/lib/callhub
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
RUN python -c 'from callhub.ami import native; c = native.CHOSEN; print("AMI hot path:", c.runs, "-", c.reason); raise SystemExit(c.runs != "compiled")'

USER callhub
WORKDIR /var/lib/callhub
ENV CALLHUB_CONFIG=/etc/callhub/callhub.toml \
    PYTHONUNBUFFERED=1
# HTTP API and /metrics, FastAGI
EXPOSE 8080 4573
ENTRYPOINT ["callhub"]
CMD ["run"]
