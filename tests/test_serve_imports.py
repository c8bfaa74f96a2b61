"""The serving path imports no training, no offline job and no data preparation (issue #14): checked in a fresh
interpreter, since this test process has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def modules_after(statement: str) -> list[str]:
    """The ``twotower`` modules in ``sys.modules`` after running ``statement`` in a new interpreter."""
    report = "print(json.dumps(sorted(m for m in sys.modules if m.startswith('twotower'))))"
    code = f"import json, sys\n{statement}\n{report}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.fixture(scope="module")
def serving_modules() -> list[str]:
    return modules_after("from twotower.serve.app import create_app")


def test_the_app_factory_imports_no_training_and_no_job(serving_modules):
    assert "twotower.serve.app" in serving_modules
    forbidden = {"train", "jobs", "evaluate", "cli", "cli_model"}  # twotower.<layer>, its submodules included
    bad = [m for m in serving_modules if m.split(".")[1:2] and m.split(".")[1] in forbidden]
    assert bad == []


def test_the_app_factory_imports_no_data_preparation(serving_modules):
    preparing = ("twotower.data.prepare", "twotower.data.writer", "twotower.data.encoding", "twotower.data.splits")
    assert [m for m in serving_modules if m.startswith(preparing)] == []


def test_serve_settings_import_without_torch():
    """``from twotower.serve import ServeSettings`` (the CLI's first step) loads neither torch nor the model."""
    mods = modules_after("from twotower.serve import ServeSettings\nassert 'torch' not in sys.modules")
    assert "twotower.serve.settings" in mods and "twotower.model" not in mods
