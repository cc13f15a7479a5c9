# One image for every jetdag service (registry, scheduler, gateway, worker); compose.yaml picks the
# service with its command, e.g. `python -m services.gateway`.
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Install the project itself (non-editable) into site-packages, then drop the sources, so the
# services import the installed packages whatever the working directory.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY jetdag ./jetdag
RUN pip install --no-cache-dir . \
    && cd / \
    && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin jetdag \
    && mkdir /home/jetdag/auth && chown jetdag:jetdag /home/jetdag/auth
# compose.yaml mounts its nats-auth volume here: a new volume takes this directory's owner, so the services
# (this user) can write and read their 0600 credentials in it.
USER jetdag
WORKDIR /home/jetdag

ENV PYTHONUNBUFFERED=1 \
    JETDAG_LOG_FORMAT=json

CMD ["jetdag", "--help"]
