#!/usr/bin/env bash
# Install cryorefine into the current Python environment.
#   bash scripts/install.sh          the package
#   bash scripts/install.sh --test   the package and what its tests need (Chromium included)
# An existing torch (a CUDA build, say) is kept; where none is installed, the
# CPU build torch==2.13.0 is installed first, so that pip never picks a
# multi-GB CUDA wheel by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "cryorefine install: no torch found; installing torch==2.13.0 (CPU)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".${extras}"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
if [ "${1:-}" = "--test" ]; then
    # The report's browser test needs Debian's Chromium; without it that test skips, saying why.
    bash scripts/install_chromium.sh || echo "cryorefine install: Chromium not installed; the browser test will skip"
fi
"$PYTHON" -c "import cryorefine, torch; print(f'cryorefine {cryorefine.__version__} installed (torch {torch.__version__})')"
