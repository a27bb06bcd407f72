"""Changing a model constant must fail strict nbval on the table that shows it.

Runs nbval on a copy of notebook 01 in a subprocess whose kernel imports a ``sitecustomize``
that halves ``SG_MAX_SINGLE_ALLOC`` (a chain link every 64 entries instead of 128): the
scatterlist bytes in the guarded tables change, so nbval must report a mismatch.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01-storage-size.ipynb"

PERTURB = """
import phyrlab.layouts.scatterlist as sg
sg.SG_MAX_SINGLE_ALLOC = 64
"""


def run_nbval(tmp_path: Path, perturb: bool) -> subprocess.CompletedProcess:
    work = tmp_path / ("perturbed" if perturb else "clean")
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    env = {**os.environ}
    if perturb:
        (work / "sitecustomize.py").write_text(PERTURB)
        env["PYTHONPATH"] = os.pathsep.join([str(work), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-q",
         "-p", "no:cacheprovider", "--nbval-sanitize-with",
         str(ROOT / "tests" / "nbval-sanitize.cfg"), str(work / NOTEBOOK.name)],
        capture_output=True, text=True, env=env, cwd=work, timeout=300)


def test_changed_constant_fails_nbval(tmp_path):
    clean = run_nbval(tmp_path, perturb=False)
    assert clean.returncode == 0, clean.stdout[-2000:]
    bad = run_nbval(tmp_path, perturb=True)
    assert bad.returncode != 0, "nbval passed although SG_MAX_SINGLE_ALLOC changed"
    assert "outputs differ" in bad.stdout and "8,322.25" in bad.stdout  # scatterlist bytes/MiB
