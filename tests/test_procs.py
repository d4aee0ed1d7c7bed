"""Each Lava Process of ``procs/`` alone against the time-stepped reference (``reference.stepped``).

Lava delivers a message sent at step t to the receiver's ``recv()`` in the same step t, so every
Process lines up with its reference step for step (0-based step t = Lava ``time_step`` − 1): the
inputs played by a SpikeSource at step t are the reference's inputs at step t.

Tolerances (float64):
* spikes (fire steps, signs, payloads) must be identical: both engines perform the same IEEE
  operations in the same order, so a threshold decision cannot differ;
* membranes to ``SAME`` = 1e-9 ("same dynamics"; in practice they are bitwise equal);
* traces, products and biases to ``TIGHT`` = 1e-12: the TraceHolder's expected values decay by
  repeated division while the models use B^-k, and numpy/torch may sum a matmul in another order.

Each Lava run costs ~70 ms per Process to start on 2 cores, so each fixture puts several
independent populations (their own seeds and configurations) into ONE graph and runs it once;
the tests then read their part of the records. Lava compiles one connected graph: independent
populations are tied together by a silent (1,)-shaped SpikeSource connected to (1,)-shaped
InPorts (trace_in, holder sinks), which adds exactly 0.0 to what they receive.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from dataclasses import dataclass

import numpy as np
import psutil
import pytest
import torch

# tests/ has no __init__.py: make the test-only Process package `lava_faulty` importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from lava_faulty.process import Faulty  # noqa: E402

from lava_spikedattn.coding import PhaseCode  # noqa: E402
from lava_spikedattn.procs.delay_line.process import DelayLine  # noqa: E402
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron  # noqa: E402
from lava_spikedattn.procs.spike_sink.process import SpikeSink  # noqa: E402
from lava_spikedattn.procs.spike_source.process import SpikeSource  # noqa: E402
from lava_spikedattn.procs.token_linear.process import TokenLinear  # noqa: E402
from lava_spikedattn.procs.trace_holder.process import TraceHolder  # noqa: E402
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul  # noqa: E402
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor  # noqa: E402
from lava_spikedattn.procs.woss_neuron.process import WossNeuron  # noqa: E402
from lava_spikedattn.reference.stepped import PhaseNeuronSim, WOSSSim, trace_product  # noqa: E402
from lava_spikedattn.runtime import LavaRunError, run_processes  # noqa: E402
from lava_spikedattn.wiring import connect, connect_product, connect_trace, probe  # noqa: E402

SAME = 1e-9  # float64, same dynamics
TIGHT = 1e-12  # traces/products: repeated division vs B^-k, matmul summation order

#: (convention, B, T, seed) of the per-convention fixtures: both conventions, two bases.
CODES = [("exact", 1.3, 8, 0), ("official", 1.15, 6, 1)]
CODE_IDS = [c[0] for c in CODES]


# ------------------------------------------------------------------------------------- helpers


def _lava_children() -> list:
    """Child processes except Python's shared-memory resource tracker (an interpreter
    singleton that lives until exit)."""
    kids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.Error:  # exited meanwhile
            continue
        kids.append(p)
    return kids


def _assert_no_lava_children(wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while _lava_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _lava_children()
    assert not left, f"Lava workers left behind: {left}"


@pytest.fixture(scope="module", autouse=True)
def no_workers_left_after_module():
    yield
    _assert_no_lava_children()


def tie(*inports) -> SpikeSource:
    """A silent (1,) source connected to ``inports``: joins independent populations into one
    connected Lava graph (one compile, one run) and adds exactly 0.0 to what they receive."""
    source = SpikeSource(data=np.zeros((1, 1)))
    for port in inports:
        source.s_out.connect(port)
    return source


def currents(rng: np.random.Generator, code: PhaseCode, shape, scale, start: int, steps: int) -> np.ndarray:
    """Per-step input currents (steps, *shape) in ANN units spread over the T input steps.

    Each neuron integrates u = Σ_τ B^-τ x_τ / scale = unit_gain·a/scale for a target
    a = ±scale·B^-U(−1.5, T+1.5): the fire steps cover the whole window, with saturated and
    silent neurons. The per-step shares are a Dirichlet split plus zero-sum noise (sign
    changes between steps). Steps outside the input window carry junk that must be ignored.
    """
    T, B = code.timesteps, code.base
    scale = np.broadcast_to(scale, shape)
    a = rng.choice([-1.0, 1.0], size=shape) * B ** -rng.uniform(-1.5, T + 1.5, size=shape) * scale
    share = rng.dirichlet(np.ones(T), size=shape)
    noise = rng.standard_normal(share.shape)
    share = share + 0.3 * (noise - noise.mean(-1, keepdims=True))
    x = rng.standard_normal((steps,) + tuple(shape)) * scale  # junk outside the window
    x[start:start + T] = np.moveaxis(code.unit_gain * a[..., None] * share * B ** np.arange(T), -1, 0)
    return x


def run_neuron_sim(sim: PhaseNeuronSim, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Step ``sim`` through ``inputs`` (steps, *shape); spikes, membranes and decoded per step."""
    decoded = []
    for x in inputs:
        sim.step(torch.from_numpy(x))
        decoded.append(sim.decoded.numpy().copy())
    history = sim.history.stacked()
    return {"spikes": history["spikes"].numpy(), "membrane": history["membrane"].numpy(),
            "decoded": np.stack(decoded)}


#: Value of the global trace at the first step of a window (spec §2 and §6: 1/B in the released
#: code's convention, 1 in the clean one), written out rather than taken from PhaseCode.
TRACE_START = {"exact": lambda base: 1.0, "official": lambda base: 1.0 / base}


def holder_expected(convention: str, base: float, timesteps: int, phase: int, steps: int) -> np.ndarray:
    """The global trace step by step, as spec §2 defines it: it starts a window at the trace
    start, decays by 1/B per step (repeated division, not the closed form B^-k the model uses)
    and starts again every T steps. The windows start at phase, phase ± T, ...; the loop starts
    in the window that contains step 0, at its first step (≤ 0)."""
    value = None
    out = []
    for t in range(phase - timesteps * -(-phase // timesteps), steps):
        if (t - phase) % timesteps == 0:
            value = TRACE_START[convention](base)
        else:
            value = value / base
        if t >= 0:
            out.append(value)
    return np.array(out).reshape(steps, 1)


def test_holder_expected_by_hand():
    """The step loop above on hand-written numbers: B = 2, T = 3."""
    np.testing.assert_array_equal(holder_expected("exact", 2.0, 3, 0, 7)[:, 0], [1, .5, .25, 1, .5, .25, 1])
    np.testing.assert_array_equal(holder_expected("exact", 2.0, 3, 1, 5)[:, 0], [.25, 1, .5, .25, 1])
    np.testing.assert_array_equal(holder_expected("official", 2.0, 3, 5, 7)[:, 0],
                                  [.25, .125, .5, .25, .125, .5, .25])


def assert_spikes_equal(lava: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert lava.shape == ref.shape, (what, lava.shape, ref.shape)
    bad = np.argwhere(lava != ref)
    assert bad.size == 0, (f"{what}: {len(bad)} spike(s) differ, first at (step, *index) "
                           f"{tuple(bad[0])}: lava {lava[tuple(bad[0])]} vs reference {ref[tuple(bad[0])]}")


def assert_close(lava: np.ndarray, ref: np.ndarray, tol: float, what: str) -> None:
    np.testing.assert_allclose(lava, ref, rtol=tol, atol=tol, err_msg=what)


# ------------------------------------------------------------------------------- PhaseNeuron


@dataclass(frozen=True)
class NeuronCase:
    name: str
    shape: tuple
    scale_shape: tuple  # () scalar, (..., 1) per row, shape per element
    signed: bool
    start: int
    extra_wait: int  # wait = T + extra_wait
    divisor: bool  # divisor_shape = shape[:-1] + (1,), fed through div_in


NEURON_CASES = [
    NeuronCase("bipolar-per-element", (2, 3, 5, 4), (2, 3, 5, 4), True, 0, 0, False),
    NeuronCase("unipolar-per-row-start2-wait+3", (4, 5, 6), (4, 5, 1), False, 2, 3, False),
    NeuronCase("bipolar-scalar-divisor-start1", (3, 8, 5), (), True, 1, 0, True),
]
NEURON_IDS = [c.name for c in NEURON_CASES]
ZERO_DIVISOR_ROWS = [(0, 2), (2, 7)]
TIE_T, TIE_SCALE = 5, 0.5  # the on-threshold population: B = 2, T = 5, scale a power of 2
HOLDER_PHASES = (0, 3)


@pytest.fixture(scope="module", params=CODES, ids=CODE_IDS)
def neuron_run(request):
    """One graph per convention: every NeuronCase (its own seed) with its TraceHolder, plus
    stand-alone TraceHolders for phases 0 and 3; run 3T+1 steps; reference sims alongside."""
    convention, base, T, seed = request.param
    code = PhaseCode(base, T, convention)
    steps = 3 * T + 1
    sinks, expected, fire_starts, ties = {}, {}, {}, []
    for i, case in enumerate(NEURON_CASES):
        rng = np.random.default_rng(1000 * seed + i)
        scale = rng.uniform(0.5, 2.0, size=case.scale_shape) if case.scale_shape else 1.3
        wait = T + case.extra_wait
        x = currents(rng, code, case.shape, scale, case.start, steps)
        neuron = PhaseNeuron(shape=case.shape, scale=scale, code=code, signed=case.signed,
                             start=case.start, wait=wait,
                             divisor_shape=case.shape[:-1] + (1,) if case.divisor else None)
        sim = PhaseNeuronSim(code, torch.as_tensor(scale, dtype=torch.float64), case.shape, signed=case.signed,
                             start=case.start, wait=wait, record=True)
        assert neuron.fire_start == sim.start + sim.wait and neuron.end == sim.end
        source = SpikeSource(data=x)
        source.s_out.connect(neuron.a_in)
        holder = TraceHolder(code=code, phase=neuron.fire_start)
        connect_trace(holder, neuron)
        ties.append(neuron.trace_in)
        if case.divisor:
            divisor = rng.uniform(0.5, 3.0, size=case.shape[:-1] + (1,))
            for row in ZERO_DIVISOR_ROWS:
                divisor[row] = 0.0
            # junk on every other step: only the value at the fire-window start may count
            div_data = rng.uniform(0.1, 5.0, size=(steps,) + divisor.shape)
            div_data[neuron.fire_start] = divisor
            SpikeSource(data=div_data).s_out.connect(neuron.div_in)
            sim.set_divisor(torch.from_numpy(divisor))
        for port in ("s_out", "v_out", "trace_out"):
            sinks[f"{case.name}.{port}"] = probe(getattr(neuron, port), steps)
        if case.extra_wait:  # record this holder too: a phase > T
            sinks[f"{case.name}.holder"] = probe(holder.s_out, steps)
            expected[f"{case.name}.holder"] = holder_expected(convention, base, T, neuron.fire_start, steps)
        expected[case.name] = run_neuron_sim(sim, x)
        expected[f"{case.name}.fire_step"] = sim.fire_step.numpy()
        fire_starts[case.name] = neuron.fire_start
    # Ties: B = 2 makes membranes and thresholds exact binary fractions, so inputs can sit
    # exactly on a fire threshold (fires at that step: v ≥ θ) or one ulp below it (next step).
    tie_code = PhaseCode(2.0, TIE_T, convention)
    on = 0.75 * 2.0 ** -np.arange(TIE_T)  # u·B^k = (1+1/B)/2 at fire step k
    below = np.nextafter(on, 0.0)
    values = np.stack([on, -on, below, -below])  # (4, TIE_T)
    x = np.zeros((steps,) + values.shape)
    x[0] = TIE_SCALE * values
    neuron = PhaseNeuron(shape=values.shape, scale=TIE_SCALE, code=tie_code)
    sim = PhaseNeuronSim(tie_code, TIE_SCALE, values.shape, record=True)
    SpikeSource(data=x).s_out.connect(neuron.a_in)
    connect_trace(TraceHolder(code=tie_code, phase=neuron.fire_start), neuron)
    ties.append(neuron.trace_in)
    for port in ("s_out", "v_out", "trace_out"):
        sinks[f"ties.{port}"] = probe(getattr(neuron, port), steps)
    expected["ties"] = run_neuron_sim(sim, x)
    expected["ties.fire_step"] = sim.fire_step.numpy()
    for phase in HOLDER_PHASES:
        holder = TraceHolder(code=code, phase=phase)
        sinks[f"holder{phase}"] = probe(holder.s_out, steps)
        ties.append(sinks[f"holder{phase}"].a_in)
        expected[f"holder{phase}"] = holder_expected(convention, base, T, phase, steps)
    tie(*ties)
    records = run_processes(sinks, steps, timeout=120)
    return code, records, expected, fire_starts


@pytest.mark.parametrize("case", NEURON_CASES, ids=NEURON_IDS)
def test_phase_neuron_spikes_and_membranes_equal_reference(neuron_run, case):
    code, records, expected, _ = neuron_run
    ref = expected[case.name]
    assert_spikes_equal(records[f"{case.name}.s_out"], ref["spikes"], f"{case.name} spikes")
    assert_close(records[f"{case.name}.v_out"], ref["membrane"], SAME, f"{case.name} membrane")
    # the inputs exercise the code: many fire steps, silent and (bipolar) negative neurons
    fire_step = expected[f"{case.name}.fire_step"]
    assert len(np.unique(fire_step[fire_step >= 0])) >= code.timesteps - 2, np.unique(fire_step)
    assert (fire_step == -1).any() and (fire_step >= 0).mean() > 0.3
    if case.signed:
        assert (ref["spikes"] < 0).any() and (ref["spikes"] > 0).any()
    else:
        assert (ref["spikes"] >= 0).all() and (ref["membrane"][-1] < 0).any()


@pytest.mark.parametrize("case", NEURON_CASES, ids=NEURON_IDS)
def test_phase_neuron_latched_trace_equals_reference_decoded(neuron_run, case):
    """trace_out (sign·scale·latched global trace) per step equals the reference's ``decoded``
    (which latches trace_start·B^-k directly), and at the end decodes the spike train."""
    code, records, expected, fire_starts = neuron_run
    trace = records[f"{case.name}.trace_out"]
    assert_close(trace, expected[case.name]["decoded"], TIGHT, f"{case.name} trace_out")
    decoded = code.decode_spike_train(records[f"{case.name}.s_out"], fire_starts[case.name]).numpy()
    assert_close(trace[-1], decoded, TIGHT, f"{case.name} final trace_out vs decoded spikes")


def test_phase_neuron_zero_divisor_row_is_silent_without_nan(neuron_run):
    _, records, expected, _ = neuron_run
    case = next(c for c in NEURON_CASES if c.divisor)
    for port in ("s_out", "v_out", "trace_out"):
        assert np.isfinite(records[f"{case.name}.{port}"]).all(), port
    fire_step = expected[f"{case.name}.fire_step"]
    for row in ZERO_DIVISOR_ROWS:
        assert (records[f"{case.name}.s_out"][(slice(None),) + row] == 0).all(), row
        assert (records[f"{case.name}.trace_out"][(-1,) + row] == 0).all(), row
        assert (fire_step[row] == -1).all()
    # the other rows did fire: the division let values through
    assert (fire_step >= 0).sum() > fire_step.size // 4


def test_phase_neuron_membrane_on_the_threshold_fires_at_that_step(neuron_run):
    """v = ±θ exactly fires (v ≥ θ, v ≤ −θ); one ulp below fires a step later; Lava agrees."""
    _, records, expected, _ = neuron_run
    assert_spikes_equal(records["ties.s_out"], expected["ties"]["spikes"], "on-threshold spikes")
    assert_close(records["ties.v_out"], expected["ties"]["membrane"], SAME, "on-threshold membrane")
    assert_close(records["ties.trace_out"], expected["ties"]["decoded"], TIGHT, "on-threshold trace_out")
    k = np.arange(TIE_T)
    fire_step = expected["ties.fire_step"]
    np.testing.assert_array_equal(fire_step[:2], np.stack([k, k]))  # on the threshold: step k
    later = np.where(k + 1 < TIE_T, k + 1, -1)
    np.testing.assert_array_equal(fire_step[2:], np.stack([later, later]))  # just below: k+1


@pytest.mark.parametrize("name", [f"holder{p}" for p in HOLDER_PHASES] + [f"{NEURON_CASES[1].name}.holder"])
def test_trace_holder_decays_and_restarts_with_its_phase(neuron_run, name):
    """s_out[t] equals the step-by-step global trace of spec §2 (``holder_expected``) over 3T+1
    steps, to 1e-12 (repeated division against the model's closed form)."""
    _, records, expected, _ = neuron_run
    assert_close(records[name], expected[name], TIGHT, name)


# ------------------------------------------------------------------------------- TraceMatMul

QK_SHAPES = ((2, 3, 5, 4), (3, 6, 4))  # q (windows, heads, N, d), k (heads, M, d): batch broadcast
AV_SHAPE = (2, 3, 4, 7)  # b of A·V: (windows, heads, d, dv), contracted with q's d


@pytest.fixture(scope="module", params=CODES, ids=CODE_IDS)
def matmul_run(request):
    """q, k and a third stream w from PhaseNeuronSims (per-step inputs, per-row scales); their
    spikes and per-step decoded traces played by SpikeSources into QKᵀ (transpose_b=True,
    factor d^-1/2, bias from step T) and q·w (transpose_b=False). One graph: the q sources
    feed both products."""
    convention, base, T, seed = request.param
    code = PhaseCode(base, T, convention)
    steps = 2 * T + 2
    rng = np.random.default_rng(2000 + seed)
    streams = {}
    for name, shape in (("q", QK_SHAPES[0]), ("k", QK_SHAPES[1]), ("w", AV_SHAPE)):
        scale = rng.uniform(0.5, 2.0, size=shape[:-1] + (1,))
        sim = PhaseNeuronSim(code, torch.from_numpy(scale), shape, record=True)
        streams[name] = run_neuron_sim(sim, currents(rng, code, shape, scale, 0, steps))
    sources = {f"{n}.{kind}": SpikeSource(data=s[kind]) for n, s in streams.items()
               for kind in ("spikes", "decoded")}
    factor = QK_SHAPES[0][-1] ** -0.5
    bias = rng.normal(size=(3, 5, 6))
    qk = TraceMatMul(shape_a=QK_SHAPES[0], shape_b=QK_SHAPES[1], code=code, transpose_b=True,
                     factor=factor, bias=bias, bias_start=T)
    qw = TraceMatMul(shape_a=QK_SHAPES[0], shape_b=AV_SHAPE, code=code, transpose_b=False)
    for product, b in ((qk, "k"), (qw, "w")):
        sources["q.spikes"].s_out.connect(product.a_in)
        sources["q.decoded"].s_out.connect(product.a_trace_in)
        sources[f"{b}.spikes"].s_out.connect(product.b_in)
        sources[f"{b}.decoded"].s_out.connect(product.b_trace_in)
    records = run_processes({"qk": probe(qk.a_out, steps), "qw": probe(qw.a_out, steps)}, steps, timeout=120)

    def product(b: str, transpose: bool, rule: PhaseCode) -> np.ndarray:
        q, other = streams["q"], streams[b]
        out = []
        for t in range(steps):
            bs, bd = (torch.from_numpy(other[kind][t]) for kind in ("spikes", "decoded"))
            if transpose:
                bs, bd = bs.transpose(-1, -2), bd.transpose(-1, -2)
            out.append(trace_product(torch.from_numpy(q["spikes"][t]), torch.from_numpy(q["decoded"][t]),
                                     bs, bd, rule).numpy())
        return np.stack(out)

    in_window = ((np.arange(steps) >= T) & (np.arange(steps) < 2 * T)).reshape(-1, 1, 1, 1, 1)
    expected = {"qk": factor * product("k", True, code) + in_window * bias / code.bias_divisor,
                "qw": product("w", False, code)}
    exact_rule = PhaseCode(base, T, "exact")
    alternative = {"qk": factor * product("k", True, exact_rule) + in_window * bias / code.bias_divisor,
                   "qw": product("w", False, exact_rule)}
    return code, records, expected, alternative


@pytest.mark.parametrize("name", ["qk", "qw"], ids=["QKT-transpose_b", "QW-no-transpose"])
def test_trace_matmul_equals_trace_product(matmul_run, name):
    code, records, expected, alternative = matmul_run
    assert records[name].shape == expected[name].shape
    assert_close(records[name], expected[name], TIGHT, name)
    assert np.abs(expected[name]).max() > 0.1  # the product is not trivially zero
    # The official convention keeps the release's third-term slip |Â|: with bipolar streams it
    # must differ from the exact rule, so this test tells the two conventions apart.
    gap = np.abs(expected[name] - alternative[name]).max()
    assert gap > 1e-3 if code.official else gap == 0.0, gap


# ------------------------------------------------------------------------ WOSS neuron + inhibitor

WOSS_SHAPE = (2, 3, 6, 7)  # (windows, heads, N, M)
NEVER_ROW, SAME_STEP_NEGATIVE_ROW, SILENT_ROW = (0, 0, 0), (0, 0, 1), (0, 0, 2)


@pytest.fixture(scope="module", params=CODES, ids=CODE_IDS)
def woss_run(request):
    """Logit spikes of a PhaseNeuronSim (per-row scale, one-shot input, fire window [T, 2T))
    played into WossNeuron + WossInhibitor (start T, fire window [2T, 3T)) with a TraceHolder.

    Special rows: NEVER_ROW (all logits strongly negative at different steps: no WOSS spike
    ever, spike sum 0), SAME_STEP_NEGATIVE_ROW (all entries spike −scale in one step: the
    spec's pathological max < 0 case, §4.3), SILENT_ROW (no logit spike at all)."""
    convention, base, T, seed = request.param
    code = PhaseCode(base, T, convention)
    steps = 3 * T + 1
    rng = np.random.default_rng(3000 + seed)
    logits = 1.5 * rng.standard_normal(WOSS_SHAPE)
    M = WOSS_SHAPE[-1]
    logits[NEVER_ROW] = -20.0 * base ** -np.linspace(0.0, 3.0, M)
    logits[SAME_STEP_NEGATIVE_ROW] = -2.0
    logits[SILENT_ROW] = 0.0
    scale = np.abs(logits).max(-1, keepdims=True)
    scale[SILENT_ROW] = 1.0
    logit_sim = PhaseNeuronSim(code, torch.from_numpy(scale), WOSS_SHAPE, record=True)
    one_shot = np.zeros((steps,) + WOSS_SHAPE)
    one_shot[0] = code.unit_gain * logits
    logit_spikes = run_neuron_sim(logit_sim, one_shot)["spikes"]

    source = SpikeSource(data=logit_spikes)
    woss = WossNeuron(shape=WOSS_SHAPE, code=code, start=T)
    inhibitor = WossInhibitor(shape=WOSS_SHAPE, code=code, start=T)
    holder = TraceHolder(code=code, phase=2 * T)
    source.s_out.connect(woss.a_in)
    source.s_out.connect(inhibitor.a_in)
    inhibitor.shift_out.connect(woss.shift_in)
    inhibitor.theta_out.connect(woss.theta_in)
    woss.trace_out.connect(inhibitor.trace_in)
    connect_trace(holder, woss)
    sinks = {"s": probe(woss.s_out, steps), "v": probe(woss.v_out, steps),
             "latched": probe(woss.trace_out, steps), "norm": probe(inhibitor.norm_out, steps)}
    # A second pair with ramp_start = 0: the threshold at step 0 is exactly 0, the membrane of
    # a row's winner after the shift too (x − m = 0), so the tie v = θ is exercised.
    woss0 = WossNeuron(shape=WOSS_SHAPE, code=code, start=T)
    inhibitor0 = WossInhibitor(shape=WOSS_SHAPE, code=code, start=T, ramp_start=0.0)
    source.s_out.connect(woss0.a_in)
    source.s_out.connect(inhibitor0.a_in)
    inhibitor0.shift_out.connect(woss0.shift_in)
    inhibitor0.theta_out.connect(woss0.theta_in)
    woss0.trace_out.connect(inhibitor0.trace_in)
    connect_trace(holder, woss0)
    sinks.update({"ramp0.s": probe(woss0.s_out, steps), "ramp0.norm": probe(inhibitor0.norm_out, steps)})
    records = run_processes(sinks, steps, timeout=120)

    expected = {"logit_spikes": logit_spikes}
    for prefix, ramp_start in (("", None), ("ramp0.", 0.0)):
        sim = WOSSSim(code, WOSS_SHAPE, start=T, ramp_start=ramp_start, record=True)
        spike_sum = []
        for t in range(steps):
            sim.step(torch.from_numpy(logit_spikes[t]))
            spike_sum.append(sim.spike_sum.numpy()[..., None].copy())
        history = sim.history.stacked()
        expected.update({f"{prefix}s": history["spikes"].numpy(), f"{prefix}v": history["membrane"].numpy(),
                         f"{prefix}latched": sim.decoded.numpy(), f"{prefix}norm": np.stack(spike_sum),
                         f"{prefix}spike_sum": sim.spike_sum.numpy()[..., None]})
    return code, records, expected


def test_woss_spikes_and_membranes_equal_reference(woss_run):
    code, records, expected = woss_run
    assert_spikes_equal(records["s"], expected["s"], "WOSS spikes")
    assert_close(records["v"], expected["v"], SAME, "WOSS membrane")
    fired = expected["s"].sum(0)
    assert len(np.unique(np.argmax(expected["s"], 0)[fired > 0])) >= 3  # several fire steps


def test_woss_latched_and_norm_equal_reference_spike_sum(woss_run):
    code, records, expected = woss_run
    assert_close(records["latched"][-1], expected["latched"], TIGHT, "WOSS latched traces")
    assert_close(records["norm"], expected["norm"], TIGHT, "norm_out per step")
    assert_close(records["norm"][-1], expected["spike_sum"], TIGHT, "norm_out vs WOSSSim.spike_sum")


def test_woss_threshold_tie_with_ramp_start_zero(woss_run):
    """ramp_start = 0: θ_0 = 0 = the winner's shifted membrane, which fires at step 0."""
    code, records, expected = woss_run
    assert_spikes_equal(records["ramp0.s"], expected["ramp0.s"], "WOSS (ramp 0) spikes")
    assert_close(records["ramp0.norm"], expected["ramp0.norm"], TIGHT, "WOSS (ramp 0) norm_out")
    winners = expected["ramp0.v"][2 * code.timesteps] == 0.0
    winners[NEVER_ROW] = winners[SAME_STEP_NEGATIVE_ROW] = winners[SILENT_ROW] = False
    assert winners.any(axis=-1)[..., 3:].all()  # every random row has a winner on the tie ...
    assert (records["ramp0.s"][2 * code.timesteps][winners] == 1).all()  # ... and it fires at 0


def test_woss_special_rows(woss_run):
    code, records, expected = woss_run
    T = code.timesteps
    logit_spikes = expected["logit_spikes"]
    # a row whose logits all spike negative (at several steps) never fires: spike sum 0, no NaN
    assert (logit_spikes[(slice(None),) + NEVER_ROW] < 0).sum() == WOSS_SHAPE[-1]
    assert len(np.unique(np.nonzero(logit_spikes[(slice(None),) + NEVER_ROW])[0])) > 1
    assert (records["s"][(slice(None),) + NEVER_ROW] == 0).all()
    assert records["norm"][(-1,) + NEVER_ROW] == 0.0
    assert np.isfinite(records["norm"]).all() and np.isfinite(records["v"]).all()
    # all entries −scale in one step: the "subtraction" adds scale (spec §4.3), all fire at once
    first = np.argmax(records["s"][(slice(None),) + SAME_STEP_NEGATIVE_ROW], 0)
    assert (records["s"][(slice(None),) + SAME_STEP_NEGATIVE_ROW].sum(0) == 1).all()
    assert len(set(first)) == 1
    # no logit spike at all: every entry fires at the ramp's first usable step
    silent_first = np.argmax(records["s"][(slice(None),) + SILENT_ROW], 0) - 2 * T
    assert (silent_first == (1 if code.official else 0)).all()


# ------------------------------------------------------------------- TokenLinear and DelayLine

LINEAR_SHAPE_IN = (2, 3, 5)
BIAS_START = 2
DELAYS = (1, 3)


@pytest.fixture(scope="module")
def plumbing_run():
    """One source of random graded spikes (steps, 2, 3, 5) into TokenLinears (bias exact,
    bias official, no bias) and DelayLines."""
    rng = np.random.default_rng(4000)
    steps = 12
    x = rng.normal(size=(steps,) + LINEAR_SHAPE_IN)
    x[rng.random(x.shape) < 0.5] = 0.0
    weight, bias = rng.normal(size=(7, 5)), rng.normal(size=7)
    codes = {"exact": PhaseCode(1.15, 4, "exact"), "official": PhaseCode(1.3, 5, "official")}
    source = SpikeSource(data=x)
    sinks, expected = {}, {}
    window = np.zeros((steps, 1, 1, 1))
    for name, code in codes.items():
        linear = TokenLinear(shape_in=LINEAR_SHAPE_IN, weight=weight, bias=bias, code=code, bias_start=BIAS_START)
        source.s_out.connect(linear.s_in)
        sinks[f"linear.{name}"] = probe(linear.a_out, steps)
        window[:] = 0.0
        window[BIAS_START:BIAS_START + code.timesteps] = 1.0
        expected[f"linear.{name}"] = x @ weight.T + window * bias / code.bias_divisor
    plain = TokenLinear(shape_in=LINEAR_SHAPE_IN, weight=weight[:3])
    source.s_out.connect(plain.s_in)
    sinks["linear.plain"] = probe(plain.a_out, steps)
    expected["linear.plain"] = x @ weight[:3].T
    for delay in DELAYS:
        line = DelayLine(shape=LINEAR_SHAPE_IN, delay=delay)
        source.s_out.connect(line.s_in)
        sinks[f"delay{delay}"] = probe(line.a_out, steps)
        shifted = np.zeros_like(x)
        shifted[delay:] = x[:-delay]
        expected[f"delay{delay}"] = shifted
    timings: dict = {}
    records = run_processes(sinks, steps, timeout=120, timings=timings)
    return records, expected, timings


@pytest.mark.parametrize("name", ["linear.exact", "linear.official", "linear.plain"])
def test_token_linear_equals_matmul_plus_windowed_bias(plumbing_run, name):
    records, expected, _ = plumbing_run
    assert records[name].shape == expected[name].shape
    assert_close(records[name], expected[name], TIGHT, name)


@pytest.mark.parametrize("delay", DELAYS)
def test_delay_line_shifts_by_delay(plumbing_run, delay):
    records, expected, _ = plumbing_run
    np.testing.assert_array_equal(records[f"delay{delay}"], expected[f"delay{delay}"])


def test_run_processes_reports_phase_timings(plumbing_run):
    *_, timings = plumbing_run
    assert set(timings) == {"compile_s", "init_s", "run_s", "stop_s"}
    assert all(0.0 <= seconds < 120.0 for seconds in timings.values()), timings


# ------------------------------------------------------------------------------- bad input

CODE = PhaseCode(1.15, 4)


@pytest.mark.parametrize("base, timesteps, convention, match", [
    (1.0, 4, "exact", "base"), (2.5, 4, "exact", "base"), (float("nan"), 4, "exact", "base"),
    (-1.2, 4, "exact", "base"), (True, 4, "exact", "base"), (1.15, 0, "exact", "timesteps"),
    (1.15, -3, "exact", "timesteps"), (1.15, 2.0, "exact", "timesteps"), (1.15, 4, "paper", "convention"),
])
def test_phase_code_out_of_range(base, timesteps, convention, match):
    with pytest.raises(ValueError, match=match):
        PhaseCode(base, timesteps, convention)


BAD_PROCESSES = {
    "matmul-qk-inner": (lambda: TraceMatMul(shape_a=(2, 5, 4), shape_b=(2, 6, 3), code=CODE, transpose_b=True),
                        "do not multiply"),
    "matmul-av-inner": (lambda: TraceMatMul(shape_a=(2, 5, 4), shape_b=(2, 6, 3), code=CODE, transpose_b=False),
                        "do not multiply"),
    "matmul-batch": (lambda: TraceMatMul(shape_a=(2, 5, 4), shape_b=(3, 6, 4), code=CODE, transpose_b=True),
                     "do not broadcast"),
    "matmul-1d": (lambda: TraceMatMul(shape_a=(4,), shape_b=(6, 4), code=CODE, transpose_b=True), "2 axes"),
    "matmul-bias-shape": (lambda: TraceMatMul(shape_a=(2, 5, 4), shape_b=(2, 6, 4), code=CODE, transpose_b=True,
                                              bias=np.zeros((5, 5))), "bias"),
    "matmul-code": (lambda: TraceMatMul(shape_a=(5, 4), shape_b=(6, 4), code=(1.15, 4), transpose_b=True),
                    "PhaseCode"),
    "linear-weight": (lambda: TokenLinear(shape_in=(2, 3, 5), weight=np.zeros((7, 4))), "weight"),
    "linear-weight-1d": (lambda: TokenLinear(shape_in=(2, 3, 5), weight=np.zeros(5)), "weight"),
    "linear-bias-shape": (lambda: TokenLinear(shape_in=(2, 3, 5), weight=np.zeros((7, 5)), bias=np.zeros(6),
                                              code=CODE), "bias"),
    "linear-bias-no-code": (lambda: TokenLinear(shape_in=(2, 3, 5), weight=np.zeros((7, 5)), bias=np.zeros(7)),
                            "code"),
    "linear-code": (lambda: TokenLinear(shape_in=(2, 3, 5), weight=np.zeros((7, 5)), bias=np.zeros(7),
                                        code={"base": 1.15}), "PhaseCode"),
    "neuron-scale-broadcast": (lambda: PhaseNeuron(shape=(2, 3), scale=np.ones((3, 2)), code=CODE),
                               "does not broadcast"),
    "neuron-scale-enlarges": (lambda: PhaseNeuron(shape=(3,), scale=np.ones((2, 3)), code=CODE), "enlarge"),
    "neuron-scale-negative": (lambda: PhaseNeuron(shape=(2, 3), scale=np.array([1.0, -0.5, 2.0]), code=CODE),
                              "> 0"),
    "neuron-scale-zero": (lambda: PhaseNeuron(shape=(2, 3), scale=0.0, code=CODE), "> 0"),
    "neuron-scale-nan": (lambda: PhaseNeuron(shape=(2, 3), scale=np.nan, code=CODE), "finite"),
    "neuron-wait-below-T": (lambda: PhaseNeuron(shape=(2, 3), scale=1.0, code=CODE, wait=3), "wait"),
    "neuron-start-negative": (lambda: PhaseNeuron(shape=(2, 3), scale=1.0, code=CODE, start=-1), "start"),
    "neuron-shape": (lambda: PhaseNeuron(shape=(2, 0), scale=1.0, code=CODE), "shape"),
    "neuron-divisor-shape": (lambda: PhaseNeuron(shape=(2, 3, 4), scale=1.0, code=CODE, divisor_shape=(2, 2, 1)),
                             "divisor_shape"),
    "neuron-code": (lambda: PhaseNeuron(shape=(2, 3), scale=1.0, code="B=1.15,T=4"), "PhaseCode"),
    "holder-code": (lambda: TraceHolder(code=None), "PhaseCode"),
    "holder-phase": (lambda: TraceHolder(code=CODE, phase=-2), "phase"),
    "woss-wait-below-T": (lambda: WossNeuron(shape=(3, 4), code=CODE, wait=2), "wait"),
    "woss-code": (lambda: WossNeuron(shape=(3, 4), code=1.15), "PhaseCode"),
    "inhibitor-wait-below-T": (lambda: WossInhibitor(shape=(3, 4), code=CODE, wait=1), "wait"),
    "inhibitor-code": (lambda: WossInhibitor(shape=(3, 4), code=object()), "PhaseCode"),
    "delay-zero": (lambda: DelayLine(shape=(3, 4), delay=0), "delay"),
}


@pytest.mark.parametrize("name", list(BAD_PROCESSES))
def test_bad_process_arguments_raise_value_error(name):
    build, match = BAD_PROCESSES[name]
    with pytest.raises(ValueError, match=match):
        build()


def test_mismatched_connect_raises_at_connect_time():
    """Lava 0.10.0 checks shapes in ``connect``: it raises AssertionError (a plain ``raise``,
    not an ``assert`` statement, so it also holds under ``python -O``) naming both shapes,
    long before any compile or run. Transposed and flattened shapes are rejected too."""
    neuron = PhaseNeuron(shape=(2, 3), scale=1.0, code=CODE)
    for shape in ((3, 2), (6,), (2, 3, 1)):
        sink = SpikeSink(shape=shape, num_steps=2)
        with pytest.raises(AssertionError, match=r"Shapes \(2, 3\) and .* are incompatible"):
            neuron.s_out.connect(sink.a_in)


def test_wiring_helpers_reject_populations_that_do_not_fit_the_product():
    q = PhaseNeuron(shape=(2, 5, 4), scale=1.0, code=CODE)
    k = PhaseNeuron(shape=(2, 6, 3), scale=1.0, code=CODE)  # head dim 3, the product expects 4
    product = TraceMatMul(shape_a=(2, 5, 4), shape_b=(2, 6, 4), code=CODE, transpose_b=True)
    with pytest.raises(ValueError, match=r"PhaseNeuron\(.*\)\.s_out of shape \(2, 6, 3\).*TraceMatMul\(.*\)\.b_in"):
        connect_product(product, q, k)


# --------------------------------------------------------------------- no leaked workers


def test_no_workers_left_after_a_run_that_raises_mid_run():
    """A real graph (source → PhaseNeuron with its TraceHolder → failing hop → sink) whose
    third Process raises at step T+1, inside the neuron's fire window: the run raises
    LavaRunError with the model's traceback and no Lava worker survives."""
    code = PhaseCode(1.15, 4)
    shape = (2, 3, 4)
    x = np.zeros((3 * code.timesteps,) + shape)
    x[0] = np.random.default_rng(5).normal(size=shape)
    neuron = PhaseNeuron(shape=shape, scale=3.0, code=code)
    connect_trace(TraceHolder(code=code), neuron)
    SpikeSource(data=x).s_out.connect(neuron.a_in)
    bad = Faulty(shape=shape, fail_at=code.timesteps + 1, mode="raise", message="procs-fault-4321")
    neuron.s_out.connect(bad.a_in)
    sink = probe(bad.s_out, 3 * code.timesteps)
    timings: dict = {}
    with pytest.raises(LavaRunError) as info:
        run_processes([sink], 3 * code.timesteps, timeout=60, timings=timings)
    assert "procs-fault-4321" in str(info.value) and "run_spk" in str(info.value)
    assert set(timings) == {"compile_s", "init_s", "stop_s"}  # the run phase never completed
    _assert_no_lava_children()
    # the recorded steps before the failure are real, the rest never ran (NaN)
    record = sink.data()
    assert np.isfinite(record[:code.timesteps]).all()
    assert math.isnan(record[-1].flat[0])


@pytest.mark.parametrize("base,timesteps", [(1.15, 16), (1.4, 16), (1.25, 40)])
def test_phase_neuron_saturation_record_equals_the_closed_form(base, timesteps):
    """Values exactly at the top level (every calibrated maximum) are not saturated, values one
    part in 10^6 above it are; Lava's record agrees with PhaseCode.saturated value by value."""
    from lava_spikedattn.wiring import inject

    code = PhaseCode(base, timesteps)
    scale = np.array([1.0, 0.37, 2.5, 1.0, 0.37, 2.5])
    x = scale * np.array([1.0, -1.0, 1.0, 1.0 + 1e-6, -(1.0 + 1e-6), 0.5])
    steps = 2 * timesteps
    neuron = PhaseNeuron(shape=x.shape, scale=scale, code=code)
    source = inject(x, code, steps)
    connect(source.s_out, neuron.a_in)
    sink = probe(neuron.s_out, steps)
    run_processes([sink], steps)
    expected = code.saturated(torch.from_numpy(x), torch.from_numpy(scale)).numpy()
    np.testing.assert_array_equal(expected, [False, False, False, True, True, False])
    np.testing.assert_array_equal(neuron.recorded_saturation(), expected)
