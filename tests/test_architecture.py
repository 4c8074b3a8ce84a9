"""The layers of shared/docs/ARCHITECTURE.md import only downward; io/ knows nothing of torch."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "cryorefine"


def test_import_contracts_are_kept():
    lint_imports = shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (bash scripts/install.sh --test installs it)")
    result = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_is_at_most_400_lines():
    long = {
        str(path.relative_to(REPO)): n
        for path in SRC.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}


def test_the_package_imports_without_torch_in_io():
    code = (
        "import sys, cryorefine.io; "
        "assert 'torch' not in sys.modules, 'cryorefine.io pulled in torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
