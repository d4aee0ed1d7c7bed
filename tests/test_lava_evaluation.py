"""Lava vs reference over a data set (lava_spikedattn.lava_evaluation), in one process and under
torchrun: N ranks must report exactly what one process reports."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lava_spikedattn.lava_evaluation import LavaEvaluation

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_LAVA = ["run-lava", "weights/swin_fashion_mnist", "--data", "fashion-mnist", "--limit", "5", "--batch-size", "2",
            "--no-progress"]


def test_shards_add_up_exactly():
    a = LavaEvaluation(samples=4, same_class=4, max_relative_difference=1e-12, labeled=4, correct=3,
                       steps_simulated=3072, fixed_point=True, equal_to_simulation=4, clips={"x": 2})
    b = LavaEvaluation(samples=1, same_class=0, max_relative_difference=3e-12, labeled=1, correct=1,
                       steps_simulated=768, fixed_point=True, equal_to_simulation=1, clips={"x": 1, "y": 5})
    a.add(b)
    assert (a.samples, a.same_class, a.labeled, a.correct, a.steps_simulated, a.equal_to_simulation) == (
        5, 4, 5, 4, 3840, 5)
    assert a.max_relative_difference == 3e-12 and a.clips == {"x": 3, "y": 5}
    assert "clips" not in LavaEvaluation(samples=1).to_json()  # float runs report no integer fields


def _run(command: list[str], out: pathlib.Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, *RUN_LAVA, "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_run_lava_under_torchrun_equals_one_process(tmp_path):
    """5 shipped-Swin images in batches of 2 (the last one partial) through Lava fused: two
    torchrun ranks (batches 0, 2 and 1) give the one-process counts, graph size included."""
    one = _run([sys.executable, "-m", "lava_spikedattn.cli"], tmp_path / "one.json")
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "lava_spikedattn.cli"], tmp_path / "two.json")
    assert (one.pop("ranks"), two.pop("ranks")) == (1, 2)
    assert one["samples"] == 5 and one["same_class"] == 5
    assert two == one
