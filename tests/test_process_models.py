"""Every Process is complete: a floating_pt and a fixed_pt model, both declaring exactly the
Process's ports and Vars (once, in the Process's abstract base model), and the fused stepper
knows how to step it in both precisions.

The Processes are found by scanning ``procs/*/process.py``, so a new Process is checked without
editing this file (it only needs a small instance in ``INSTANCES``, which the first test
requires)."""

import importlib
import inspect
import pathlib

import numpy as np
import pytest
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.process import AbstractProcess

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


def _discover() -> dict[str, type]:
    """Process classes defined in procs/<folder>/process.py, by folder."""
    found = {}
    for path in sorted(PROCS.glob("*/process.py")):
        module = importlib.import_module(f"lava_spikedattn.procs.{path.parent.name}.process")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, AbstractProcess) and cls.__module__ == module.__name__:
                found[path.parent.name] = cls
    return found


PROCESSES = _discover()

# A small instance of each leaf Process, float and fixed point (``fixed`` True builds its units).
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
}


def _models(process: type) -> dict[str, list[type]]:
    """ProcessModels registered for ``process`` in its models.py, by tag."""
    module = importlib.import_module(process.__module__.rsplit(".", 1)[0] + ".models")
    by_tag: dict[str, list[type]] = {}
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if getattr(cls, "implements_process", None) is process:
            for tag in cls.tags:
                by_tag.setdefault(tag, []).append(cls)
    return by_tag


def _declared(model: type) -> set[str]:
    return {name for name in dir(model) if isinstance(getattr(model, name), LavaPyType)}


def test_every_process_is_found_and_has_an_instance():
    assert set(PROCESSES.values()) == {Circuit, DelayLine, PhaseNeuron, SpikeSink, SpikeSource, TokenLinear,
                                       TraceHolder, TraceMatMul, WossInhibitor, WossNeuron}
    assert set(PROCESSES.values()) - {Circuit} == set(INSTANCES)  # Circuit: built from members


@pytest.mark.parametrize("folder", sorted(PROCESSES))
def test_both_precisions_have_a_model(folder):
    tags = _models(PROCESSES[folder])
    assert len(tags.get("floating_pt", [])) >= 1 and len(tags.get("fixed_pt", [])) >= 1, tags


@pytest.mark.parametrize("process", sorted(INSTANCES, key=lambda cls: cls.__name__), ids=lambda cls: cls.__name__)
def test_models_declare_exactly_the_ports_and_vars_of_the_process(process):
    """One abstract base declares them; both concrete models carry the same names, which are
    the Process's ports and Vars (Lava would refuse a model missing one at compile time)."""
    instance = INSTANCES[process](False)
    expected = {port.name for port in (*instance.in_ports, *instance.out_ports)} | {var.name for var in instance.vars}
    models = [models[0] for tag, models in sorted(_models(process).items())]
    assert len(models) == 2
    for model in models:
        assert issubclass(model, TypedProcessModel)
        assert _declared(model) == expected, model.__name__
    float_model, fixed_model = sorted(models, key=lambda model: "fixed_pt" in model.tags)
    assert float_model.ports == fixed_model.ports and float_model.variables == fixed_model.variables
    assert float_model.precision != fixed_model.precision


@pytest.mark.parametrize("process", sorted(INSTANCES, key=lambda cls: cls.__name__), ids=lambda cls: cls.__name__)
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
