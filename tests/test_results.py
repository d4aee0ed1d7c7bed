"""The README's measured numbers are the ones in docs/results.json, made on the locked install."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from test_install import locked_versions

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_results", ROOT / "benchmarks" / "make_results.py")
make_results = sys.modules["make_results"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(make_results)


@pytest.fixture(scope="module")
def results():
    return json.loads(make_results.RESULTS_JSON.read_text())


def test_every_step_was_run_with_the_command_the_script_names(results):
    assert set(results["steps"]) == set(make_results.STEPS)
    for name, step in make_results.STEPS.items():
        recorded = results["steps"][name]
        assert (recorded["command"], recorded["engine"], recorded["dtype"], recorded["data"]) == \
            (step.command, step.engine, step.dtype, step.data), f"{name}: re-run `make results`"


def test_results_were_made_with_the_locked_versions(results):
    """A new lock changes what pip installs, so the numbers must be re-made with it."""
    locked = locked_versions()
    recorded = results["environment"]["versions"]
    assert set(recorded) == set(make_results.VERSIONED)
    assert {name: locked[name] for name in recorded} == recorded, "re-run `make results` on the new lock"


@pytest.mark.parametrize("block", sorted(make_results.BLOCKS))
def test_readme_block_is_rendered_from_the_results(results, block):
    readme = make_results.readme_blocks(make_results.README.read_text())
    assert readme.get(block) == make_results.render(results)[block], \
        f"README block {block!r} differs from docs/results.json: run `python benchmarks/make_results.py --render-only`"


def test_rendered_blocks_name_their_command_and_date(results):
    made = {step["date"] for step in results["steps"].values()}
    for block, text in make_results.render(results).items():
        dates = set(re.findall(r"\d{4}-\d{2}-\d{2}", text.split("Made by `")[-1]))
        assert "Made by `" in text and dates and dates <= made, block


def test_a_caption_names_the_dates_its_steps_were_made(results):
    """A step re-made alone (``--only``) does not re-date the blocks of the others."""
    steps = {"demo": dict(results["steps"]["demo"], date="2026-01-02"),
             "text": dict(results["steps"]["text"], date="2026-01-01")}
    assert make_results._caption({"steps": steps}, "demo").endswith(" on 2026-01-02; re-made by `make results`.")
    assert make_results._caption({"steps": steps}, "demo", "text").endswith(
        " on 2026-01-01 and 2026-01-02; re-made by `make results`.")


@pytest.mark.slow
def test_the_demo_reproduces_the_readme_numbers_of_the_shipped_swin(results):
    """`make demo`'s whole-test-set evaluation on this install gives exactly the recorded numbers
    (closed-form engine, float32, one torch thread as the demo runs it)."""
    import torch

    from lava_spikedattn.checkpoint import load_ann_checkpoint
    from lava_spikedattn.converted_model import ConvertedModel
    from lava_spikedattn.data import fit_images, load_image_dataset
    from lava_spikedattn.demo import DATASET, DEFAULT_ANN, DEFAULT_MODEL, DemoSettings, _report_summary
    from lava_spikedattn.evaluate import evaluate

    settings, threads = DemoSettings(), torch.get_num_threads()
    cm, (ann, _) = ConvertedModel.load(DEFAULT_MODEL), load_ann_checkpoint(DEFAULT_ANN)
    images, labels = load_image_dataset(DATASET, "test")
    images = fit_images(images, cm.config["architecture"]["img_size"], cm.config["architecture"]["in_chans"])
    torch.set_num_threads(settings.threads)
    try:
        report = evaluate(ann, cm.to_reference("closed"), list(zip(images.split(settings.batch_size),
                                                                   labels.split(settings.batch_size))),
                          progress=False, compare_layers=False)
    finally:
        torch.set_num_threads(threads)
    assert _report_summary(report) == results["steps"]["demo"]["result"]["reference"]
