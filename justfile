# jetdag tasks. `just --list` shows them all.

[doc("run the whole stack in the foreground (embedded nats-server unless NATS_URL is set)")]
up:
    @# `exec`: the launcher itself receives the signals just forwards (no shell in between to die instead).
    exec python -m jetdag up

# run the test suite (what CI runs)
test *args:
    python -m pytest {{args}}

# ruff and mypy
lint:
    ruff check .
    ruff format --check .
    mypy

# format the code
fmt:
    ruff format .
    ruff check --fix .

# run the example pipeline (preprocess → train → evaluate) on the running stack
demo:
    python -m examples.demo

# benchmark W1-W4 on a private embedded stack against the raw JetStream floor (`--quick`: CI smoke version)
bench *args:
    python -m jetdag.bench {{args}}

# copy the dashboard's browser libraries from node_modules (after `npm ci`) into the package data
vendor:
    npm run -s vendor
