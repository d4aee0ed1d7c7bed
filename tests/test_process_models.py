"""Every Process is complete: a floating_pt and a fixed_pt model, both declaring exactly the
Process's ports and Vars (once, in the Process's abstract base model), and the fused stepper
knows how to step it in both precisions. No Process is float-only by design.

The Processes are found by scanning ``procs/*/process.py`` and checked against what
``lava_spikedattn.procs`` exports, so a new Process is checked without editing this file beyond
giving it a small instance in ``INSTANCES`` (the first test requires one)."""

import importlib
import inspect
import pathlib

import numpy as np
import pytest
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.process import AbstractProcess

import lava_spikedattn.procs as procs
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.procs import (
    Circuit,
    DelayLine,
    PhaseNeuron,
    SpikeSink,
    SpikeSource,
    TokenLinear,
    TraceHolder,
    TraceMatMul,
    WossInhibitor,
    WossNeuron,
    fused,
)
from lava_spikedattn.procs.model_types import TypedProcessModel

PROCS = pathlib.Path(__file__).resolve().parent.parent / "procs"
CODE = PhaseCode(1.5, 4)
FMT = FixedFormat()


def _discover() -> list[type]:
    """Process classes defined in procs/<folder>/process.py."""
    found = []
    for path in sorted(PROCS.glob("*/process.py")):
        module = importlib.import_module(f"lava_spikedattn.procs.{path.parent.name}.process")
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, AbstractProcess) and cls.__module__ == module.__name__]
    return found


PROCESSES = _discover()
# What a Circuit can hold (and LavaNetwork.simulate steps): every leaf. A Circuit is not a leaf:
# Circuits are not nested, and graph.flatten expands a top-level one into its members.
LEAVES = [process for process in PROCESSES if process is not Circuit]


def _circuit() -> Circuit:
    line = DelayLine(shape=(2, 3), delay=2)
    return Circuit(members=[line], shape_in=(2, 3), shape_out=(2, 3), feeds=[line.s_in], trace_feeds=[],
                   output=line.a_out)


# A small instance of each Process, float and fixed point (``fixed`` True builds its units).
INSTANCES = {
    PhaseNeuron: lambda fixed: PhaseNeuron(shape=(2, 3), scale=1.0, code=CODE, fixed_format=FMT if fixed else None),
    WossNeuron: lambda fixed: WossNeuron(shape=(2, 3), code=CODE, **({"fixed_format": FMT, "current_exp": -10}
                                                                      if fixed else {})),
    WossInhibitor: lambda fixed: WossInhibitor(shape=(2, 3), code=CODE, **({"fixed_format": FMT, "current_exp": -10}
                                                                            if fixed else {})),
    TokenLinear: lambda fixed: TokenLinear(shape_in=(2, 3), weight=np.ones((4, 3)), bias=np.zeros(4), code=CODE,
                                           **({"fixed_format": FMT, "payload_exp": -8, "current_exp": -8}
                                              if fixed else {})),
    TraceMatMul: lambda fixed: TraceMatMul(shape_a=(2, 3), shape_b=(4, 3), code=CODE, transpose_b=True,
                                           **({"fixed_format": FMT, "payload_exp_a": -8, "payload_exp_b": -8,
                                               "current_exp": -8} if fixed else {})),
    TraceHolder: lambda fixed: TraceHolder(code=CODE),
    DelayLine: lambda fixed: DelayLine(shape=(2, 3), delay=2),
    SpikeSource: lambda fixed: SpikeSource(data=np.zeros((4, 2, 3))),
    SpikeSink: lambda fixed: SpikeSink(shape=(2, 3), num_steps=4),
    Circuit: lambda fixed: _circuit(),
}


def _models(process: type) -> dict[str, list[type]]:
    """Python ProcessModels registered for ``process`` in its models.py, by tag. Circuit's
    SubProcessModel is left out: it declares no ports or Vars (its members' models run)."""
    module = importlib.import_module(process.__module__.rsplit(".", 1)[0] + ".models")
    by_tag: dict[str, list[type]] = {}
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if getattr(cls, "implements_process", None) is process and issubclass(cls, TypedProcessModel):
            for tag in cls.tags:
                by_tag.setdefault(tag, []).append(cls)
    return by_tag


def _declared(model: type) -> set[str]:
    return {name for name in dir(model) if isinstance(getattr(model, name), LavaPyType)}


def test_every_process_is_found_exported_and_has_an_instance():
    exported = {obj for obj in vars(procs).values() if isinstance(obj, type) and issubclass(obj, AbstractProcess)}
    assert set(PROCESSES) == exported
    assert set(INSTANCES) == exported


@pytest.mark.parametrize("process", PROCESSES, ids=lambda cls: cls.__name__)
def test_both_precisions_have_one_model(process):
    tags = _models(process)
    assert len(tags.get("floating_pt", [])) == 1 and len(tags.get("fixed_pt", [])) == 1, tags


@pytest.mark.parametrize("process", PROCESSES, ids=lambda cls: cls.__name__)
def test_models_declare_exactly_the_ports_and_vars_of_the_process(process):
    """One abstract base declares them; both concrete models carry the same names, which are
    the Process's ports and Vars (Lava would refuse a model missing one at compile time)."""
    instance = INSTANCES[process](False)
    expected = {port.name for port in (*instance.in_ports, *instance.out_ports)} | {var.name for var in instance.vars}
    models = [_models(process)[tag][0] for tag in ("floating_pt", "fixed_pt")]
    for model in models:
        assert issubclass(model, TypedProcessModel)
        assert _declared(model) == expected, model.__name__
    float_model, fixed_model = models
    assert float_model.ports == fixed_model.ports and float_model.variables == fixed_model.variables
    assert float_model.precision != fixed_model.precision


@pytest.mark.parametrize("process", LEAVES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("fixed", [False, True], ids=["float", "fixed"])
def test_the_fused_stepper_steps_every_leaf_process(process, fixed):
    """Any leaf can be a Circuit member (or run in LavaNetwork.simulate): the fused stepper has
    its update in both precisions."""
    stages = fused.stages(INSTANCES[process](fixed), fixed)
    assert stages and all(isinstance(stage, fused.Stage) for stage in stages)


def test_an_unknown_process_is_refused_by_the_fused_stepper():
    class Stranger(AbstractProcess):
        pass

    with pytest.raises(ValueError, match="no fused update for Stranger"):
        fused.stages(Stranger(), False)
