"""The Lava network builder: a converted tiny Swin run as Lava processes vs the reference engine."""

import weakref

import pytest
import torch
from synthetic import grey_task, sentences

from lava_spikedattn import builder
from lava_spikedattn.builder import LavaBuildError, build_lava_network
from lava_spikedattn.coding import NonFiniteInputError, PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.runtime import live_workers

# Lava and the stepped reference run the same float64 dynamics; the logits differ by summation
# order only (measured 1e-16), the bound is 1e-6.
RELATIVE = 1e-6


# lava_swin (the tiny 4-class grey Swin, trained) and tiny_bert: tests/conftest.py


@pytest.fixture(scope="module")
def inputs():
    return grey_task(8, 100)[0]


@pytest.fixture(scope="module")
def exact_runs(lava_swin, inputs):
    """The same 8 images through the fused and the decomposed network (exact convention)."""
    cm = convert(lava_swin, [grey_task(32, 50)[0]], PhaseCode(1.25, 12))
    runs = {}
    for mode in builder.MODES:
        net = build_lava_network(cm, mode=mode)
        logits = net.run(inputs.double())
        fire_steps = {name: p.recorded_fire_steps() for name, p in net.last_graph.populations.items()}
        runs[mode] = (logits, net.stats(), fire_steps)
    return cm, runs


def check_against_reference(cm, x, logits, stats):
    reference = cm.to_reference("stepped").double()
    expected = reference(x)
    assert expected.abs().max() > 0.1  # real logits, not a silent read-out
    assert ((logits - expected).norm() / expected.norm()).item() < RELATIVE
    closed = cm.to_reference("closed").double()(x)
    assert torch.equal(logits.argmax(-1), closed.argmax(-1))
    for name, layer in reference.stats.items():  # spike and saturation counts, every layer
        assert stats["layers"][name] == layer, name
    for name, histogram in stats["fire_histograms"].items():  # one bin per fire step
        assert histogram.shape == (cm.code.timesteps,) and histogram.sum() == stats["layers"][name].spikes
    assert stats["steps_per_sample"] == cm.steps_per_inference == cm.n_layers * cm.code.timesteps


@pytest.mark.parametrize("mode", builder.MODES)
def test_lava_swin_equals_the_stepped_reference(exact_runs, inputs, mode):
    cm, runs = exact_runs
    logits, stats, _ = runs[mode]
    check_against_reference(cm, inputs.double(), logits, stats)


def test_fused_and_decomposed_blocks_fire_identically(exact_runs):
    _, runs = exact_runs
    fused, decomposed = runs["fused"], runs["decomposed"]
    assert torch.equal(fused[0], decomposed[0])
    assert fused[2].keys() == decomposed[2].keys()
    for name, steps in fused[2].items():
        assert (steps == decomposed[2][name]).all(), name
    # 4 blocks: one OS process each when fused, ~22 populations and synapses each when decomposed.
    assert fused[1]["processes"] < 20 < 80 < decomposed[1]["processes"] < builder.MAX_PROCESSES
    assert fused[1]["neurons"] == decomposed[1]["neurons"] and fused[1]["synapses"] == decomposed[1]["synapses"]


def test_official_convention_runs_in_lava(lava_swin, inputs):
    cm = convert(lava_swin, [grey_task(32, 50)[0]], PhaseCode(1.25, 12, "official"))
    net = build_lava_network(cm)
    check_against_reference(cm, inputs[:3].double(), net.run(inputs[:3]), net.stats())


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_lava_bert_equals_the_stepped_reference_in_both_modes(tiny_bert, convention):
    cm = convert(tiny_bert, [sentences(32, 100)], PhaseCode(1.25, 12, convention))
    x = sentences(8, 200)
    reference = cm.to_reference("stepped").double()
    expected = reference(x)
    assert expected.abs().max() > 0.1
    closed = cm.to_reference("closed").double()(x)
    runs = {}
    for mode in builder.MODES if convention == "exact" else ("fused",):
        net = build_lava_network(cm, mode=mode)
        logits = net.run(x)
        assert ((logits - expected).norm() / expected.norm()).item() < RELATIVE, mode
        assert torch.equal(logits.argmax(-1), closed.argmax(-1))
        stats = net.stats()
        assert stats["layers"] == reference.stats  # spikes and saturation of every layer
        runs[mode] = {name: p.recorded_fire_steps() for name, p in net.last_graph.populations.items()}
    if len(runs) == 2:
        for name, steps in runs["fused"].items():
            assert (steps == runs["decomposed"][name]).all(), name
    with pytest.raises(LavaBuildError, match="dict with 'input_ids'"):
        build_lava_network(cm).run(torch.zeros(2, 8))
    with pytest.raises(LavaBuildError, match="attention_mask"):
        build_lava_network(cm).run({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:, :4]})
    # Padded keys never fire: layer 0's WOSS entries for absent keys stay silent.
    woss = runs["fused"]["layers.0.softmax_if"]  # (batch, heads, N, N)
    padded = (x["attention_mask"] == 0)[:, None, None, :].expand_as(torch.as_tensor(woss))
    assert (woss[padded.numpy()] == -1).all()


def test_start_offsets_follow_the_layer_indices(lava_swin, inputs):
    """Spec §1.5 with W = T: layer n integrates in [nT, (n+1)T) and fires in [(n+1)T, (n+2)T)."""
    cm = convert(lava_swin, [grey_task(16, 51)[0]], PhaseCode(1.25, 12))
    graph, _, readout_index = build_lava_network(cm).build(inputs[:1])
    T, indices = cm.code.timesteps, {layer.name: layer.index for layer in cm.layers}
    for name, population in graph.populations.items():
        assert population.proc_params["start"] == indices[name] * T, name
        if isinstance(population, PhaseNeuron):
            assert population.fire_start == (indices[name] + 1) * T
    # exact: 7 layers per block, the q/k/v neurons one layer after the block input.
    block = "layers.0.blocks.1"
    assert indices[f"{block}.q_if"] == indices["layers.0.blocks.0.final_if"] + 1
    assert indices[f"{block}.final_if"] - indices[f"{block}.q_if"] == 6
    assert readout_index == cm.n_layers - 1


def test_errors_come_before_any_worker_starts(lava_swin, inputs, monkeypatch):
    cm = convert(lava_swin, [grey_task(16, 52)[0]], PhaseCode(1.25, 12))
    net = build_lava_network(cm)
    with pytest.raises(LavaBuildError, match=r"images \(batch, 1, 16, 16\), got \(2, 3, 16, 16\)"):
        net.run(torch.zeros(2, 3, 16, 16))
    with pytest.raises(LavaBuildError, match="float tensor"):
        net.run(torch.zeros(2, 1, 16, 16, dtype=torch.long))
    with pytest.raises(NonFiniteInputError, match="NaN/inf"):  # the same error as every engine
        net.run(torch.full((1, 1, 16, 16), float("nan")))
    monkeypatch.setattr(builder, "MAX_PROCESSES", 20)
    with pytest.raises(LavaBuildError, match="in decomposed mode, more than the simulator limit of 20"):
        build_lava_network(cm, mode="decomposed").run(inputs[:1])
    with pytest.raises(LavaBuildError, match="expected a ConvertedModel"):
        build_lava_network("weights/")
    with pytest.raises(LavaBuildError, match="mode must be one of"):
        build_lava_network(cm, mode="fast")
    cm.config["family"] = "unknown"
    with pytest.raises(Exception, match="unknown"):
        build_lava_network(cm)
    assert not live_workers()


def test_circuit_ports_must_belong_to_its_members():
    from lava_spikedattn.procs.circuit.process import Circuit
    code = PhaseCode(1.25, 4)
    inside, outside = (PhaseNeuron(shape=(2, 3), scale=1.0, code=code) for _ in range(2))
    with pytest.raises(ValueError, match="not to a member"):
        Circuit(members=[inside], shape_in=(2, 3), shape_out=(2, 3), feeds=[outside.a_in], trace_feeds=[],
                output=inside.s_out)
    with pytest.raises(ValueError, match="does not match shape_out"):
        Circuit(members=[inside], shape_in=(2, 3), shape_out=(3, 2), feeds=[inside.a_in], trace_feeds=[],
                output=inside.s_out)


def test_old_graphs_are_freed(lava_swin, inputs, monkeypatch):
    """Lava's ProcessServer and VarServer keep every Process and Var ever created: a network
    drops each graph it replaces (simulate, run with a new layout, a refused build), so a long
    session holds at most its last graph, and the graph itself is freed."""
    from lava.magma.core.process.process import ProcessServer
    from lava.magma.core.process.variable import VarServer

    cm = convert(lava_swin, [grey_task(16, 52)[0]], PhaseCode(1.25, 12))
    net = build_lava_network(cm)
    registered = len(ProcessServer().processes), len(VarServer().vars)
    net.simulate(inputs[:2].double())
    one_graph = len(ProcessServer().processes) - registered[0], len(VarServer().vars) - registered[1]
    first = weakref.ref(net.last_graph.created[-1])
    for start in (2, 4):
        net.simulate(inputs[start:start + 2].double())
    assert first() is None
    net.run(inputs[:1].double())  # a new layout (batch 1): its own graph, compiled
    net.run(inputs[1:2].double())  # the same layout: the compiled graph again
    net.close()
    assert (len(ProcessServer().processes) - registered[0], len(VarServer().vars) - registered[1]) == one_graph
    monkeypatch.setattr(builder, "MAX_PROCESSES", 5)
    with pytest.raises(LavaBuildError, match="more than the simulator limit"):
        net.simulate(inputs[:1].double())
    assert len(ProcessServer().processes) - registered[0] == one_graph[0]  # the refused graph is gone too


def test_a_converted_model_runs_without_the_ann_libraries(lava_swin, tiny_bert, inputs, tmp_path):
    """Loading a converted Swin or BERT and building its Lava graph imports neither timm nor
    transformers (they are needed to convert an ANN): Lava forks every worker from this process,
    and a fork costs time in proportion to the memory the process holds (timm and transformers
    add about 250 MB)."""
    import subprocess
    import sys

    cms = {"swin": convert(lava_swin, [grey_task(16, 52)[0]], PhaseCode(1.25, 12)),
           "bert": convert(tiny_bert, [sentences(16, 100)], PhaseCode(1.25, 12))}
    torch.save({"swin": inputs[:1].double(), "bert": sentences(1, 200)}, tmp_path / "inputs.pt")
    for name, cm in cms.items():
        cm.save(tmp_path / name)
    script = ("import sys, torch\n"
              "from lava_spikedattn.builder import build_lava_network\n"
              "from lava_spikedattn.converted_model import ConvertedModel\n"
              f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
              "for name, x in inputs.items():\n"
              f"    cm = ConvertedModel.load({str(tmp_path)!r} + '/' + name)\n"
              "    build_lava_network(cm).build(x)\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'transformers'}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
