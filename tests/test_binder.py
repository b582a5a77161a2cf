"""Binder: a fresh virtual environment built from the binder/ files alone runs the quickstart and the course.

repo2docker installs `binder/requirements.txt` from the repository root into Python
`binder/runtime.txt`; this test does the same with venv and pip (download.pytorch.org, the
CPU index the file names, is out of reach here: pip warns and takes the CPU wheel it finds),
then executes the two notebooks a Binder visitor opens in that environment's own kernel and
reports the kernel's peak memory against Binder's limit (about 2 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER_MEMORY = 2 * 1024**3

RUNNER = r"""
import json, resource, sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient

out = {}
for name in sys.argv[2:]:
    nb = nbformat.read(Path(sys.argv[1]) / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
    errors = [o.get("ename") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    out[name] = {"errors": errors}
out["kernel_peak_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
import torch, neuronwidgets
out["torch"] = torch.__version__
out["neuronwidgets"] = neuronwidgets.__file__
print(json.dumps(out))
"""


def test_binder_files_are_complete():
    req = (ROOT / "binder" / "requirements.txt").read_text().split("\n")
    lines = [line.strip() for line in req if line.strip() and not line.startswith("#")]
    assert "torch==2.13.0" in lines and "." in lines and any(line.startswith("jupyterlab") for line in lines)
    assert (ROOT / "binder" / "runtime.txt").read_text().strip().startswith("python-3.")
    readme = (ROOT / "README.md").read_text()
    assert "mybinder.org/v2/gh/" in readme and "urlpath=lab/tree/notebooks/01_quickstart.ipynb" in readme


@pytest.mark.slow
def test_fresh_binder_environment_runs_the_notebooks(tmp_path):
    env_dir = tmp_path / "binder-env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_RETRIES": "0", "PIP_TIMEOUT": "10", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"],
                   cwd=ROOT, env=env, check=True, timeout=1800)
    work = tmp_path / "home"  # the notebooks write their runs/ here, as in a Binder home folder
    work.mkdir()
    env["NEURONWIDGETS_CACHE"] = str(tmp_path / "cache")
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run([str(python), "-c", RUNNER, str(ROOT), "01_quickstart.ipynb", "02_course_neurons_in_vlms.ipynb"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nbinder env: torch {report['torch']}, kernel peak RSS {report['kernel_peak_rss'] / 2**20:.0f} MiB")
    assert report["01_quickstart.ipynb"]["errors"] == [] and report["02_course_neurons_in_vlms.ipynb"]["errors"] == []
    assert report["torch"].startswith("2.13.0") and str(env_dir) in report["neuronwidgets"]
    assert report["kernel_peak_rss"] < BINDER_MEMORY
