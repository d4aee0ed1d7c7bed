"""The installed environment matches requirements.lock, and a built wheel works outside the source tree."""

import json
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def locked_versions() -> dict[str, str]:
    """{normalised name: version} of every ``name==version`` line of requirements.lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_lock_pins_the_packages_the_numbers_depend_on():
    pins = locked_versions()
    for name in ("torch", "timm", "transformers", "numpy", "numba", "llvmlite", "lava-nc", "safetensors", "pytest",
                 "pip", "setuptools"):
        assert re.fullmatch(r"\d+(\.\d+)+\S*", pins[name]), name


def test_installed_packages_are_the_locked_versions():
    """`make venv` installs with the lock as constraints; a drifted environment fails here, not in
    a numeric test far away (e.g. after a hand-made `pip install -U`)."""
    drifted = {}
    for name, version in locked_versions().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drifted[name] = (version, installed)
    assert not drifted, f"(locked, installed): {drifted}; rebuild with `make clean venv`"


TUTORIAL_01 = ROOT / "tutorials" / "01_phase_coding.ipynb"


@pytest.mark.slow
def test_built_wheel_runs_the_lava_processes_and_tutorial_01(tmp_path):
    """`pip install .` (not editable) carries procs/ (a symlink in the source tree) and runs a Lava
    process: build the wheel, install it without dependencies into a fresh venv that sees this
    venv's packages but not the source tree, and run tutorial 01's code there."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("lava_spikedattn-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # A plain path entry, not a site dir: this venv's editable-install hook (a .pth) is not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    cells = [cell["source"] for cell in json.loads(TUTORIAL_01.read_text())["cells"] if cell["cell_type"] == "code"]
    script = tmp_path / "tutorial_01.py"
    script.write_text("import lava_spikedattn, lava_spikedattn.procs\n"
                      f"assert lava_spikedattn.__file__.startswith({str(site)!r}), lava_spikedattn.__file__\n"
                      f"assert lava_spikedattn.procs.__file__.startswith({str(site)!r})\n"
                      + "\n".join("".join(source) if isinstance(source, list) else source for source in cells)
                      + "\nprint('tutorial 01 ran from the wheel')\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([python, str(script)], cwd=tmp_path, env={**env, "MPLBACKEND": "Agg"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Lava == reference" in result.stdout and "tutorial 01 ran from the wheel" in result.stdout
