#!/usr/bin/env bash
# LiteLLM's proxy for bench/run.py's "litellm" target, in a venv of its own under bench/out/:
# litellm[proxy] pins its own uvicorn, uvloop, starlette and fastapi, which must not change
# what the other targets run on. 1.100.5 is the newest release whose "proxy" extra installs
# from PyPI alone (the newer ones need a litellm-proxy package that is not published there).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
python3 -m venv bench/out/litellm-venv
bench/out/litellm-venv/bin/python -m pip install --quiet --upgrade pip
bench/out/litellm-venv/bin/python -m pip install --quiet 'litellm[proxy]==1.100.5'
bench/out/litellm-venv/bin/litellm --version
