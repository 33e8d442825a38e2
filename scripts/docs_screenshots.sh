#!/usr/bin/env bash
# Build the documentation site, serve it on localhost and take headless-Chromium screenshots of the main pages, to
# look at after changing the docs (the PNGs go to the git-ignored output/docs-screenshots/).
#   bash scripts/docs_screenshots.sh [PAGE ...]     pages without .html (default: the main ones)
# Needs the docs extra (pip install -e '.[docs]') and Chromium (Debian: apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[[ -n "$CHROMIUM" ]] || { echo "docs_screenshots: no chromium found; set CHROMIUM=/path/to/chromium" >&2; exit 2; }
OUT=output/docs-screenshots
PORT="${PORT:-8765}"
pages=("$@")
[[ ${#pages[@]} -gt 0 ]] || pages=(index getting-started models attaching training analysis export fidelity developing api changelog)

work="$(mktemp -d)"
server=""
cleanup() { [[ -n "$server" ]] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

NO_MKDOCS_2_WARNING=1 PYTHONPATH="$PWD" "$PYTHON" -m mkdocs build --strict --quiet --site-dir "$work/site"
"$PYTHON" -m http.server "$PORT" --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" 2>/dev/null && break
  sleep 0.1
done

mkdir -p "$OUT"
for page in "${pages[@]}"; do
  # a fresh profile per page, and nothing that reaches beyond localhost
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/profile-$page" \
    --window-size=1280,1600 --screenshot="$OUT/$page.png" "http://127.0.0.1:$PORT/$page.html" >/dev/null 2>&1
  echo "$OUT/$page.png"
done
