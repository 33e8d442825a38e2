#!/usr/bin/env bash
# Set up plugattn in ./.venv: pinned torch/torchvision, the package (editable) and its extras, and, where apt-get
# is available and we are root, Debian's Fashion-MNIST package (the offline default dataset).
#   bash scripts/setup.sh          runtime + data, viz and tensorboard extras
#   bash scripts/setup.sh --dev    also the test tools and every optional extra the tests exercise (docs included)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="data,viz,tensorboard"
[[ "${1:-}" == "--dev" ]] && extras="dev,data,viz,tensorboard,onnx,timm,docs"

PYTHON="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch/torchvision are pinned (their wheels are on this kind of machine's disk); pip, not uv, finds them.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[${extras}]"

if [[ ! -d /usr/share/datasets/fashion-mnist ]] && command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist; plugattn will try to download Fashion-MNIST" >&2
fi
echo "setup: done (.venv ready)"
