"""The fixed-point porting path: integer reference (``reference.fixed``) and ``fixed_pt`` models.

* Lava ``fixed_pt`` models of PhaseNeuron, TraceHolder, TokenLinear, TraceMatMul, DelayLine,
  WossNeuron + WossInhibitor (with integer SpikeSource / SpikeSink) equal the integer reference
  bit for bit, every step, over whole windows (random inputs, two codes/seeds), clip counts
  included; a saturation case clips (counted) and never wraps; the whole attention core runs
  fixed_pt, equal to the composed integer reference and close to the float core.
* The integer reference against float: fire steps differ only where the exact membrane lies
  within the derived rounding margin of a threshold (and then by one step); synapse and
  TraceMatMul errors stay within their derived bounds; WOSS likewise.
* Division-free normalisation: the float model's ``divide_free`` option (v ≥ θ·S) fires exactly
  like the dividing model; the integer model (threshold scaling only) is within its margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.fixed_point import FixedFormat, quantize_weights, round_half_up
from lava_spikedattn.procs import dynamics
from lava_spikedattn.procs.delay_line.process import DelayLine
from lava_spikedattn.procs.phase_neuron.process import PhaseNeuron
from lava_spikedattn.procs.spike_source.process import SpikeSource
from lava_spikedattn.procs.token_linear.process import TokenLinear
from lava_spikedattn.procs.trace_holder.process import TraceHolder
from lava_spikedattn.procs.trace_matmul.process import TraceMatMul
from lava_spikedattn.procs.woss_inhibitor.process import WossInhibitor
from lava_spikedattn.procs.woss_neuron.process import WossNeuron
from lava_spikedattn.reference.fixed import (
    FixedPhaseNeuronSim,
    FixedTokenLinearSim,
    FixedTraceMatMulSim,
    FixedWossSim,
    fixed_trace,
)
from lava_spikedattn.reference.stepped import PhaseNeuronSim, WOSSSim
from lava_spikedattn.runtime import LavaRunError, run_processes
from lava_spikedattn.wiring import attention_core, connect_trace, probe

FMT = FixedFormat()
F = FMT.trace_bits
LIMIT = 2**23 - 1
#: (convention, B, T, seed): both conventions, two bases (as tests/test_procs.py).
CODES = [("exact", 1.3, 8, 0), ("official", 1.15, 6, 1)]
CODE_IDS = [c[0] for c in CODES]


def tie(*inports) -> SpikeSource:
    """A silent (1,) source joining independent populations into one graph (adds 0)."""
    source = SpikeSource(data=np.zeros((1, 1)))
    for port in inports:
        source.s_out.connect(port)
    return source


def int_currents(rng, code: PhaseCode, shape, scale, current_exp: int, start: int, steps: int) -> np.ndarray:
    """Integer currents (steps, *shape): each neuron integrates V ≈ u·scale/2^current_exp for
    u = ±B^-U(−1.5, T+1.5) (every fire step, saturated and silent ones), split over the T input
    steps with sign-changing noise; junk outside the input window must be ignored."""
    T, B = code.timesteps, code.base
    scale = np.broadcast_to(scale, shape)
    u = rng.choice([-1.0, 1.0], size=shape) * B ** -rng.uniform(-1.5, T + 1.5, size=shape)
    share = rng.dirichlet(np.ones(T), size=shape)
    noise = rng.standard_normal(share.shape)
    share = share + 0.3 * (noise - noise.mean(-1, keepdims=True))
    target = (u * scale / 2.0**current_exp)[..., None] * share * B ** np.arange(T)
    x = rng.integers(-2**20, 2**20, size=(steps,) + tuple(shape))
    x[start:start + T] = np.moveaxis(np.rint(target), -1, 0)
    return np.clip(x, -LIMIT, LIMIT)


def run_fixed_sim(sim: FixedPhaseNeuronSim, x: np.ndarray, phase: int) -> dict[str, np.ndarray]:
    for t in range(x.shape[0]):
        sim.step(x[t], fixed_trace(sim.code, sim.fmt, t, phase))
    return sim.stacked() if sim.record else {}


def assert_equal(lava: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert lava.shape == ref.shape, (what, lava.shape, ref.shape)
    bad = np.argwhere(lava != ref)
    assert bad.size == 0, (f"{what}: {len(bad)} value(s) differ, first at (step, *index) {tuple(bad[0])}: "
                           f"lava {lava[tuple(bad[0])]} vs reference {ref[tuple(bad[0])]}")


# ------------------------------------------------------------------ Lava fixed_pt == reference

NEURON_CASES = {  # name: (shape, scale_shape, signed, start, extra_wait, normalized, bit_serial_input)
    "bipolar-per-element": ((2, 3, 5, 4), (2, 3, 5, 4), True, 0, 0, False, False),
    "unipolar-per-row-start2-wait+3": ((4, 5, 6), (4, 5, 1), False, 2, 3, False, False),
    "bipolar-scalar-normalized-start1": ((3, 8, 5), (), True, 1, 0, True, False),
    "convert-per-channel": ((2, 4, 4, 6), (6,), True, 0, 0, False, True),
}
ZERO_DIVISOR_ROWS = [(0, 2), (2, 7)]
SAT_SHAPE = (2, 4)
LINEAR_SHAPE_IN, LINEAR_OUT = (2, 3, 5), 7


def saturating_currents(code: PhaseCode, steps: int) -> np.ndarray:
    """+max, +max, −max·c: the running sum leaves the 24-bit range at step 1 (clipped), the
    third input pulls the clipped membrane back inside (a wrapping machine would go negative)."""
    x = np.zeros((steps,) + SAT_SHAPE, np.int64)
    c = np.linspace(0.2, 0.9, SAT_SHAPE[1])
    x[0], x[1] = LIMIT, LIMIT
    x[2] = -np.rint(LIMIT * c)
    x[:, 1] *= -1  # row 1: the mirror image (negative clip)
    return x


@pytest.fixture(scope="module", params=CODES, ids=CODE_IDS)
def fixed_run(request):
    """One fixed_pt graph per code: the NEURON_CASES (own seeds, own TraceHolders), a
    saturating population, TraceHolders (phases 0, 3), TokenLinears (bias exact / official,
    plain, clipping); integer reference sims alongside."""
    convention, base, T, seed = request.param
    code = PhaseCode(base, T, convention)
    steps = 3 * T + 1
    sinks, expected, neurons, ties = {}, {}, {}, []
    for i, (name, (shape, scale_shape, signed, start, extra, normalized, bit_serial)) in enumerate(
            NEURON_CASES.items()):
        rng = np.random.default_rng(1000 * seed + i)
        scale = rng.uniform(0.5, 2.0, size=scale_shape) if scale_shape else 1.3
        wait = T + extra
        current_exp = FMT.current_exponent(scale, headroom_bits=4 if normalized else 2)
        if bit_serial:  # a linear layer of input bits: about a constant ±B^-U(−1, T+1)·scale every step
            level = rng.choice([-1.0, 1.0], size=shape) * code.base ** -rng.uniform(-1, T + 1, size=shape)
            noisy = level + 0.05 * rng.standard_normal((steps,) + shape)
            x = np.rint(noisy * scale / 2.0**current_exp).astype(np.int64)
        else:
            x = int_currents(rng, code, shape, scale, current_exp, start, steps)
        divisor_shape = shape[:-1] + (1,) if normalized else None
        neuron = PhaseNeuron(shape=shape, scale=scale, code=code, signed=signed, start=start, wait=wait,
                             divisor_shape=divisor_shape, bit_serial_input=bit_serial, fixed_format=FMT,
                             current_exp=current_exp)
        sim = FixedPhaseNeuronSim(code, scale, shape, current_exp=current_exp, signed=signed, start=start,
                                  wait=wait, normalized=normalized, bit_serial_input=bit_serial, record=True)
        assert neuron.payload_exp == sim.payload_exp
        SpikeSource(data=x.astype(float)).s_out.connect(neuron.a_in)
        connect_trace(TraceHolder(code=code, phase=neuron.fire_start), neuron)
        ties.append(neuron.trace_in)
        if normalized:  # integer spike sums S (2^-F units) in [0.6, 4), zero rows; junk elsewhere
            divisor = rng.integers(int(0.6 * 2**F), 4 * 2**F, size=divisor_shape)
            for row in ZERO_DIVISOR_ROWS:
                divisor[row] = 0
            div_data = rng.integers(1, 2**20, size=(steps,) + divisor_shape)
            div_data[neuron.fire_start] = divisor
            SpikeSource(data=div_data.astype(float)).s_out.connect(neuron.div_in)
            sim.set_divisor(divisor)
        for port in ("s_out", "v_out", "trace_out"):
            sinks[f"{name}.{port}"] = probe(getattr(neuron, port), steps)
        expected[name] = run_fixed_sim(sim, x, neuron.fire_start)
        expected[f"{name}.sim"] = sim
        neurons[name] = neuron
    # saturation: scale 1, top level 2^20 LSB
    sat = PhaseNeuron(shape=SAT_SHAPE, scale=1.0, code=code, fixed_format=FMT, current_exp=-20)
    x = saturating_currents(code, steps)
    SpikeSource(data=x.astype(float)).s_out.connect(sat.a_in)
    connect_trace(TraceHolder(code=code, phase=sat.fire_start), sat)
    ties.append(sat.trace_in)
    for port in ("s_out", "v_out", "trace_out"):
        sinks[f"sat.{port}"] = probe(getattr(sat, port), steps)
    sim = FixedPhaseNeuronSim(code, 1.0, SAT_SHAPE, current_exp=-20, record=True)
    expected["sat"] = run_fixed_sim(sim, x, sat.fire_start)
    expected["sat.sim"], expected["sat.x"] = sim, x
    neurons["sat"] = sat
    for phase in (0, 3):
        holder = TraceHolder(code=code, phase=phase, fixed_format=FMT)
        sinks[f"holder{phase}"] = probe(holder.s_out, steps)
        ties.append(sinks[f"holder{phase}"].a_in)
        expected[f"holder{phase}"] = np.array([[fixed_trace(code, FMT, t, phase)] for t in range(steps)])
    # TokenLinear: integer payload spikes of a per-element-scale population
    rng = np.random.default_rng(4000 + seed)
    scale_in = rng.uniform(0.5, 2.0, size=LINEAR_SHAPE_IN)
    payload_exp = FMT.payload_exponent(scale_in)
    payload = FMT.payload(scale_in, payload_exp)
    spikes = rng.choice([-1, 0, 0, 1], size=(steps,) + LINEAR_SHAPE_IN) * payload
    weight, bias = rng.normal(scale=0.3, size=(LINEAR_OUT, 5)), rng.normal(size=LINEAR_OUT)
    current_exp = FMT.current_exponent(8.0)  # currents up to ±32 ANN units: no clip
    source = SpikeSource(data=spikes.astype(float))
    linears = {}
    for name, w, exp, kwargs in [
            ("exact", weight, current_exp, dict(bias=bias, code=PhaseCode(base, T, "exact"), bias_start=2)),
            ("official", weight, current_exp, dict(bias=bias, code=PhaseCode(base, T, "official"), bias_start=1)),
            ("plain", weight, current_exp, {}),
            ("clipping", 40.0 * weight, current_exp - 8, dict(bias=1e3 * bias, code=PhaseCode(base, T, "exact")))]:
        linear = TokenLinear(shape_in=LINEAR_SHAPE_IN, weight=w, payload_exp=payload_exp, current_exp=exp, **kwargs)
        source.s_out.connect(linear.s_in)
        sinks[f"linear.{name}"] = probe(linear.a_out, steps)
        lsim = FixedTokenLinearSim(w, payload_exp=payload_exp, current_exp=exp, **kwargs)
        expected[f"linear.{name}"] = np.stack([lsim.step(spikes[t]) for t in range(steps)])
        expected[f"linear.{name}.clips"] = lsim.clips
        linears[name] = linear
    # joins the synapse graph to the rest (through a (1,) port): a neuron fed by one synapse
    joint = PhaseNeuron(shape=LINEAR_SHAPE_IN[:-1] + (LINEAR_OUT,), scale=4.0, code=code, current_exp=current_exp)
    linears["exact"].a_out.connect(joint.a_in)
    ties.append(joint.trace_in)
    tie(*ties)
    records = run_processes(sinks, steps, select_tag="fixed_pt", timeout=120)
    return code, records, expected, neurons, linears


@pytest.mark.parametrize("name", list(NEURON_CASES))
def test_fixed_phase_neuron_equals_integer_reference_every_step(fixed_run, name):
    code, records, expected, neurons, _ = fixed_run
    ref, sim = expected[name], expected[f"{name}.sim"]
    assert_equal(records[f"{name}.s_out"], ref["spikes"], f"{name} spikes")
    assert_equal(records[f"{name}.v_out"], ref["membrane"], f"{name} membrane")
    assert_equal(records[f"{name}.trace_out"], ref["decoded"], f"{name} trace_out")
    np.testing.assert_array_equal(neurons[name].recorded_fire_steps(), sim.fire_step)
    np.testing.assert_array_equal(neurons[name].recorded_clips(), sim.clips)
    np.testing.assert_array_equal(neurons[name].recorded_saturation(), sim.saturated)
    # integers within 24 bits, and the inputs exercise the code
    for port in ("s_out", "v_out", "trace_out"):
        assert np.abs(records[f"{name}.{port}"]).max() <= 2**23
    fire_step = sim.fire_step
    assert len(np.unique(fire_step[fire_step >= 0])) >= code.timesteps - 2, np.unique(fire_step)
    assert (fire_step == -1).any() and (fire_step >= 0).mean() > 0.3
    assert sim.saturated.any() and not sim.saturated.all()
    if NEURON_CASES[name][2]:
        assert (ref["spikes"] < 0).any() and (ref["spikes"] > 0).any()
    else:
        assert (ref["spikes"] >= 0).all() and (ref["membrane"][-1] < 0).any()


def test_fixed_normalized_zero_divisor_rows_stay_silent(fixed_run):
    _, records, expected, _, _ = fixed_run
    name = "bipolar-scalar-normalized-start1"
    for row in ZERO_DIVISOR_ROWS:
        assert (records[f"{name}.s_out"][(slice(None),) + row] == 0).all(), row
        assert (expected[f"{name}.sim"].fire_step[row] == -1).all()
    assert (expected[f"{name}.sim"].fire_step >= 0).mean() > 0.3


def test_fixed_saturation_clips_counts_and_never_wraps(fixed_run):
    """The running sum leaves the 24-bit range: the membrane is clipped (counted once per
    clipped update, as an independent recount shows), the result keeps its sign and
    fires at step 0; a wrapping adder would have flipped the sign."""
    code, records, expected, neurons, _ = fixed_run
    assert_equal(records["sat.s_out"], expected["sat"]["spikes"], "saturated spikes")
    assert_equal(records["sat.v_out"], expected["sat"]["membrane"], "saturated membrane")
    x, G = expected["sat.x"], FMT.input_weights(code)
    v, clips, wrapped = np.zeros(SAT_SHAPE, np.int64), np.zeros(SAT_SHAPE, np.int64), np.zeros(SAT_SHAPE, np.int64)
    for tau in range(code.timesteps):  # independent recount (and a wrapping 24-bit adder)
        add = (x[tau] * G[tau] + 2 ** (F - 1)) >> F
        clips += (v + add > LIMIT) | (v + add < -LIMIT - 1)
        v = np.clip(v + add, -LIMIT - 1, LIMIT)
        wrapped = (wrapped + add + 2**23) % 2**24 - 2**23
    np.testing.assert_array_equal(neurons["sat"].recorded_clips(), clips)
    assert (clips >= 1).all()
    fire_start = neurons["sat"].fire_start
    signs = np.sign(records["sat.s_out"][fire_start])
    np.testing.assert_array_equal(signs, np.array([[1] * 4, [-1] * 4]))  # all fire at step 0, own sign
    assert (np.sign(wrapped) != signs).any()  # wrapping would have flipped some
    assert neurons["sat"].recorded_saturation().all()
    assert np.abs(records["sat.v_out"]).max() <= 2**23


@pytest.mark.parametrize("phase", [0, 3])
def test_fixed_trace_holder_table(fixed_run, phase):
    """round(2^F·trace_start·B^-((t−phase) mod T)), within 2^-(F+1) of the float trace."""
    code, records, expected, _, _ = fixed_run
    assert_equal(records[f"holder{phase}"], expected[f"holder{phase}"], f"holder{phase}")
    t = np.arange(records[f"holder{phase}"].shape[0])
    exact = code.trace_start * code.base ** -((t - phase) % code.timesteps) * 2**F
    assert np.abs(records[f"holder{phase}"][:, 0] - exact).max() <= 0.5


@pytest.mark.parametrize("name", ["exact", "official", "plain", "clipping"])
def test_fixed_token_linear_equals_integer_reference(fixed_run, name):
    _, records, expected, _, linears = fixed_run
    assert_equal(records[f"linear.{name}"], expected[f"linear.{name}"], f"linear.{name}")
    assert linears[name].recorded_clips() == expected[f"linear.{name}.clips"]
    assert (expected[f"linear.{name}.clips"] > 0) == (name == "clipping")
    if name == "clipping":  # the bias itself does not fit (counted once) and currents clip
        assert expected[f"linear.{name}.clips"] > LINEAR_OUT
    assert np.abs(records[f"linear.{name}"]).max() <= 2**23


def test_fixed_pt_model_refuses_a_neuron_without_format():
    code = PhaseCode(1.2, 4)
    neuron = PhaseNeuron(shape=(2,), scale=1.0, code=code)  # no fixed_format
    SpikeSource(data=np.zeros((4, 2))).s_out.connect(neuron.a_in)
    connect_trace(TraceHolder(code=code), neuron)
    with pytest.raises(LavaRunError, match="fixed_format"):
        run_processes([probe(neuron.s_out, 4)], 4, select_tag="fixed_pt", timeout=60)


def test_fixed_pt_source_refuses_non_integer_payloads():
    """Integer payloads only: a fractional value is an error, never silently rounded."""
    code = PhaseCode(1.2, 4)
    neuron = PhaseNeuron(shape=(2,), scale=1.0, code=code, fixed_format=FMT)
    SpikeSource(data=np.full((4, 2), 0.5)).s_out.connect(neuron.a_in)
    connect_trace(TraceHolder(code=code), neuron)
    with pytest.raises(LavaRunError, match="integers"):
        run_processes([probe(neuron.s_out, 4)], 4, select_tag="fixed_pt", timeout=60)


@pytest.mark.parametrize("build, match", [
    (lambda c: PhaseNeuron(shape=(2,), scale=1.0, code=c, fixed_format=16), "FixedFormat"),
    (lambda c: PhaseNeuron(shape=(2,), scale=1.0, code=c, current_exp=-40), "exceeds"),
    (lambda c: PhaseNeuron(shape=(2,), scale=1.0, code=c, current_exp=1.5), "current_exp"),
    (lambda c: PhaseNeuron(shape=(2,), scale=np.array([1.0, 1e-6]), code=c, current_exp=-20), "payload"),
    (lambda c: PhaseNeuron(shape=(2,), scale=1.0, code=c, divide_free=True), "divisor_shape"),
    (lambda c: TokenLinear(shape_in=(2, 3), weight=np.ones((2, 3)), payload_exp=-3), "current_exp"),
    (lambda c: TraceHolder(code=c, fixed_format="F16"), "FixedFormat"),
    (lambda c: FixedFormat(trace_bits=23), "trace_bits"),
    (lambda c: FixedFormat(payload_bits=30), "payload_bits"),
])
def test_bad_fixed_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build(PhaseCode(1.2, 4))


# ----------------------------------------------------------------- TraceMatMul and DelayLine

QK_SHAPES, AV_SHAPE = ((2, 3, 5, 4), (3, 6, 4)), (2, 3, 4, 7)
DELAYS = (1, 3)


def fixed_streams(code: PhaseCode, rng, steps: int) -> dict:
    """q, k, w payload spikes and decoded traces (payload units) of FixedPhaseNeuronSims."""
    streams = {}
    for name, shape in (("q", QK_SHAPES[0]), ("k", QK_SHAPES[1]), ("w", AV_SHAPE)):
        scale = rng.uniform(0.5, 2.0, size=shape[:-1] + (1,))
        current_exp = FMT.current_exponent(scale)
        sim = FixedPhaseNeuronSim(code, scale, shape, current_exp=current_exp, record=True)
        record = run_fixed_sim(sim, int_currents(rng, code, shape, scale, current_exp, 0, steps), code.timesteps)
        streams[name] = {"spikes": record["spikes"], "decoded": record["decoded"], "payload_exp": sim.payload_exp,
                         "scale": scale}
    return streams


@pytest.fixture(scope="module", params=CODES, ids=CODE_IDS)
def matmul_run(request):
    """Fixed streams played into fixed_pt TraceMatMuls (QKᵀ: factor d^-1/2, bias from T, key
    mask; q·w: factor 0.3) and DelayLines, one graph; integer reference alongside."""
    convention, base, T, seed = request.param
    code = PhaseCode(base, T, convention)
    steps = 2 * T + 2
    rng = np.random.default_rng(2000 + seed)
    streams = fixed_streams(code, rng, steps)
    sources = {f"{n}.{kind}": SpikeSource(data=st[kind].astype(float)) for n, st in streams.items()
               for kind in ("spikes", "decoded")}
    bias = rng.normal(size=(3, 5, 6))
    key_mask = np.array([True, False, True, True, False, True])
    current_exp = FMT.current_exponent(16.0)
    configs = {"qk": dict(b="k", transpose_b=True, factor=QK_SHAPES[0][-1] ** -0.5, bias=bias, bias_start=T,
                          key_mask=key_mask),
               "qw": dict(b="w", transpose_b=False, factor=0.3)}
    sinks, expected, products = {}, {}, {}
    for name, cfg in configs.items():
        cfg = dict(cfg)
        b = cfg.pop("b")
        exps = dict(payload_exp_a=streams["q"]["payload_exp"], payload_exp_b=streams[b]["payload_exp"],
                    current_exp=current_exp)
        product = TraceMatMul(shape_a=QK_SHAPES[0], shape_b=streams[b]["spikes"].shape[1:], code=code,
                              fixed_format=FMT, **exps, **cfg)
        sources["q.spikes"].s_out.connect(product.a_in)
        sources["q.decoded"].s_out.connect(product.a_trace_in)
        sources[f"{b}.spikes"].s_out.connect(product.b_in)
        sources[f"{b}.decoded"].s_out.connect(product.b_trace_in)
        sinks[name] = probe(product.a_out, steps)
        mask = cfg.pop("key_mask", None)
        sim = FixedTraceMatMulSim(code, **exps, present=mask, **cfg)
        expected[name] = np.stack([sim.step(streams["q"]["spikes"][t], streams["q"]["decoded"][t],
                                            streams[b]["spikes"][t], streams[b]["decoded"][t]) for t in range(steps)])
        expected[f"{name}.sim"] = sim
        products[name] = product
    for delay in DELAYS:
        line = DelayLine(shape=QK_SHAPES[0], delay=delay)
        sources["q.spikes"].s_out.connect(line.s_in)
        sinks[f"delay{delay}"] = probe(line.a_out, steps)
        shifted = np.zeros_like(streams["q"]["spikes"])
        shifted[delay:] = streams["q"]["spikes"][:-delay]
        expected[f"delay{delay}"] = shifted
    records = run_processes(sinks, steps, select_tag="fixed_pt", timeout=120)
    return code, records, expected, products, streams, current_exp


@pytest.mark.parametrize("name", ["qk", "qw"], ids=["QKT-bias-mask", "QW-factor0.3"])
def test_fixed_trace_matmul_equals_integer_reference(matmul_run, name):
    _, records, expected, products, *_ = matmul_run
    assert_equal(records[name], expected[name], name)
    assert products[name].recorded_clips() == expected[f"{name}.sim"].clips == 0
    assert np.abs(records[name]).max() > 2**16  # not trivially zero
    if name == "qk":  # absent keys get nothing, present ones do
        present = products[name].proc_params["present"]
        assert (~present).any() and (records[name][:, ~present] == 0).all()
        assert (records[name][:, present] != 0).mean() > 0.3


@pytest.mark.parametrize("name", ["qk", "qw"], ids=["QKT-bias-mask", "QW-factor0.3"])
def test_fixed_trace_matmul_error_vs_float_within_derived_bound(matmul_run, name):
    """|Δ_I·I − factor·(a@B̂ + Â@b − Â_new@b)·Δ_aΔ_b − bias/divisor| ≤ Δ_I/2
    + |factor − m_f·2^e_f|·|prod|·Δ_aΔ_b (+ Δ_I/2 for the bias), per step."""
    code, records, expected, products, streams, current_exp = matmul_run
    sim = expected[f"{name}.sim"]
    b = "k" if name == "qk" else "w"
    unit = 2.0 ** (streams["q"]["payload_exp"] + streams[b]["payload_exp"])
    q = streams["q"]
    factor = sim.factor_mantissa * 2.0**sim.factor_exp
    want_factor = QK_SHAPES[0][-1] ** -0.5 if name == "qk" else 0.3
    for t in range(records[name].shape[0]):
        bs, bd = streams[b]["spikes"][t].astype(float), streams[b]["decoded"][t].astype(float)
        if name == "qk":
            bs, bd = np.swapaxes(bs, -1, -2), np.swapaxes(bd, -1, -2)
        a_new = np.where(q["spikes"][t] != 0, np.abs(q["decoded"][t]) if code.official else q["decoded"][t], 0)
        prod = (q["spikes"][t] @ bd + q["decoded"][t] @ bs - a_new @ bs) * unit
        want = want_factor * prod
        bound = 2.0**current_exp / 2 + abs(want_factor - factor) * np.abs(prod)
        if name == "qk" and 0 <= t - code.timesteps < code.timesteps:
            want = want + products["qk"].proc_params["injected_bias"]
            bound = bound + 2.0**current_exp / 2
        got = records[name][t] * 2.0**current_exp
        if name == "qk":
            present = products["qk"].proc_params["present"]
            want, bound = np.where(present, want, 0.0), np.where(present, bound, 0.0)
        assert (np.abs(got - want) <= bound * (1 + 1e-12) + 1e-300).all(), t


@pytest.mark.parametrize("delay", DELAYS)
def test_fixed_delay_line_shifts_integer_payloads(matmul_run, delay):
    _, records, expected, *_ = matmul_run
    assert_equal(records[f"delay{delay}"], expected[f"delay{delay}"], f"delay{delay}")


# ------------------------------------------------------------------------ WOSS (fixed point)

WOSS_SHAPE = (2, 3, 6, 7)
NEVER_ROW, SAME_STEP_NEGATIVE_ROW, SILENT_ROW = (0, 0, 0), (0, 0, 1), (0, 0, 2)


def logit_spikes(code: PhaseCode, rng, steps: int):
    """Payload spikes of a fixed logits population (per-row scale, one-shot input), with the
    special rows of tests/test_procs.py (never fires, all −scale in one step, silent)."""
    logits = 1.5 * rng.standard_normal(WOSS_SHAPE)
    logits[NEVER_ROW] = -20.0 * code.base ** -np.linspace(0.0, 3.0, WOSS_SHAPE[-1])
    logits[SAME_STEP_NEGATIVE_ROW] = -2.0
    logits[SILENT_ROW] = 0.0
    scale = np.abs(logits).max(-1, keepdims=True)
    scale[SILENT_ROW] = 1.0
    current_exp = FMT.current_exponent(scale)
    x = np.zeros((steps,) + WOSS_SHAPE, np.int64)
    x[0] = np.rint(code.unit_gain * logits / 2.0**current_exp)
    sim = FixedPhaseNeuronSim(code, scale, WOSS_SHAPE, current_exp=current_exp, record=True)
    return run_fixed_sim(sim, x, code.timesteps)["spikes"], sim.payload_exp


@pytest.fixture(scope="module", params=CODES, ids=CODE_IDS)
def woss_run(request):
    """Fixed logit spikes into fixed_pt WossNeuron + WossInhibitor (start T, default ramp and
    ramp 0), integer reference alongside."""
    convention, base, T, seed = request.param
    code = PhaseCode(base, T, convention)
    steps = 3 * T + 1
    spikes, payload_exp = logit_spikes(code, np.random.default_rng(3000 + seed), steps)
    source = SpikeSource(data=spikes.astype(float))
    holder = TraceHolder(code=code, phase=2 * T)
    sinks, expected, inhibitors = {}, {"logit_spikes": spikes, "payload_exp": payload_exp}, {}
    for prefix, ramp in (("", None), ("ramp0.", 0.0)):
        woss = WossNeuron(shape=WOSS_SHAPE, code=code, start=T, current_exp=payload_exp, fixed_format=FMT)
        inhibitor = WossInhibitor(shape=WOSS_SHAPE, code=code, start=T, ramp_start=ramp, current_exp=payload_exp)
        source.s_out.connect(woss.a_in)
        source.s_out.connect(inhibitor.a_in)
        inhibitor.shift_out.connect(woss.shift_in)
        inhibitor.theta_out.connect(woss.theta_in)
        woss.trace_out.connect(inhibitor.trace_in)
        connect_trace(holder, woss)
        sinks.update({f"{prefix}s": probe(woss.s_out, steps), f"{prefix}v": probe(woss.v_out, steps),
                      f"{prefix}latched": probe(woss.trace_out, steps),
                      f"{prefix}norm": probe(inhibitor.norm_out, steps)})
        sim = FixedWossSim(code, WOSS_SHAPE, current_exp=payload_exp, start=T, ramp_start=ramp, record=True)
        for t in range(steps):
            sim.step(spikes[t])
        history = sim.stacked()
        expected.update({f"{prefix}s": history["spikes"], f"{prefix}v": history["membrane"],
                         f"{prefix}norm": history["spike_sum"], f"{prefix}sim": sim})
        inhibitors[prefix] = inhibitor
    records = run_processes(sinks, steps, select_tag="fixed_pt", timeout=120)
    return code, records, expected, inhibitors


@pytest.mark.parametrize("prefix", ["", "ramp0."], ids=["ramp-default", "ramp0"])
def test_fixed_woss_equals_integer_reference_every_step(woss_run, prefix):
    code, records, expected, inhibitors = woss_run
    T = code.timesteps
    for what in ("s", "v", "norm"):
        assert_equal(records[f"{prefix}{what}"], expected[f"{prefix}{what}"], f"WOSS {prefix}{what}")
    assert_equal(records[f"{prefix}latched"][-1], expected[f"{prefix}sim"].latched, "WOSS latched")
    assert inhibitors[prefix].recorded_clips() == expected[f"{prefix}sim"].sum_clips == 0
    s = records[f"{prefix}s"]
    fired = s.sum(0) > 0
    assert len(np.unique(np.argmax(s, 0)[fired])) >= 3  # several fire steps
    assert set(np.unique(s)) <= {0, 2**F}
    # special rows: never fires (spike sum 0), all −scale at once (all fire together), silent row
    assert (s[(slice(None),) + NEVER_ROW] == 0).all() and records[f"{prefix}norm"][(-1,) + NEVER_ROW] == 0
    first = np.argmax(s[(slice(None),) + SAME_STEP_NEGATIVE_ROW], 0)
    assert (s[(slice(None),) + SAME_STEP_NEGATIVE_ROW].sum(0) == 2**F).all() and len(set(first)) == 1
    if prefix == "":
        silent_first = np.argmax(s[(slice(None),) + SILENT_ROW], 0) - 2 * T
        assert (silent_first == (1 if code.official else 0)).all()
    else:  # ramp 0: Θ_0 = 0 = the winner's shifted membrane: the tie fires at step 0
        winners = records["ramp0.v"][2 * T] == 0
        winners[NEVER_ROW] = winners[SAME_STEP_NEGATIVE_ROW] = winners[SILENT_ROW] = False
        assert winners.any(axis=-1)[..., 3:].all()
        assert (s[2 * T][winners] == 2**F).all()


@pytest.mark.parametrize("convention, base, T", [("exact", 1.15, 40), ("official", 1.15, 40), ("exact", 1.4, 16)])
def test_fixed_woss_fire_steps_match_float_within_derived_margin(convention, base, T):
    """Float WOSSSim on the same logit spikes (x = payload·2^payload_exp): fire steps differ only
    where Σ B^-τ(x − shift) is within T/2 + 1/2 + 2^-(F+1)·Σ|x − shift| LSB of the ramp, by one step."""
    code = PhaseCode(base, T, convention)
    shape = (300, 32)
    rng = np.random.default_rng(13)
    logits = 2.0 * rng.standard_normal(shape)
    scale = np.abs(logits).max(-1, keepdims=True)
    current_exp = FMT.current_exponent(scale)
    x = np.zeros((3 * T,) + shape, np.int64)
    x[0] = np.rint(code.unit_gain * logits / 2.0**current_exp)
    logit_sim = FixedPhaseNeuronSim(code, scale, shape, current_exp=current_exp, record=True)
    spikes, pe = run_fixed_sim(logit_sim, x, T)["spikes"], logit_sim.payload_exp
    sim, fsim = FixedWossSim(code, shape, current_exp=pe, start=T), WOSSSim(code, shape, start=T)
    for t in range(3 * T):
        sim.step(spikes[t])
        fsim.step(torch.from_numpy(spikes[t] * 2.0**pe))
    k_fix, k_float = sim.fire_step, fsim.fire_step.numpy()
    differ = k_fix != k_float
    # exact integrated shifted input (LSB): the row max is subtracted on every step up to and
    # including the row's first positive one (spec §4.3)
    xs = spikes[T:2 * T]
    m = xs.max(-1, keepdims=True)
    open_rows = np.cumsum(m > 0, axis=0) - (m > 0) == 0
    shifted = xs - m * open_rows
    u = (shifted * code.base ** -np.arange(T).reshape(-1, 1, 1)).sum(0)
    theta = np.log(code.base) * (code.woss_ramp_start - np.arange(T)) / 2.0**pe
    kf, kl = np.where(k_fix < 0, T, k_fix), np.where(k_float < 0, T, k_float)
    assert (np.abs(kf - kl)[differ] == 1).all()
    gap = np.abs(u[differ] - theta[np.minimum(kf, kl)[differ]])
    bound = T / 2 + 1 + 2.0 ** -(F + 1) * np.abs(shifted).sum(0)[differ]
    assert (gap <= bound).all(), (gap, bound)
    assert differ.mean() < 0.01, differ.mean()
    assert (k_fix >= 0).mean() > 0.3 and len(np.unique(k_fix)) > T // 2
    # the probabilities (latched / spike sum) against float
    p_fix = sim.latched / np.maximum(sim.spike_sum, 1)
    p_float = (fsim.latched / fsim.spike_sum.unsqueeze(-1)).numpy()
    assert np.abs(p_fix - p_float)[~differ.any(-1)].max() < 1e-3


# ------------------------------------------------------------- the whole attention core, integer


def fixed_core_units(code: PhaseCode, scales, keys: int) -> dict:
    """current_exp / payload_exp per population of the attention core, as
    ``wiring.attention_core`` chooses them (headroom for the unnormalised attention×V membrane:
    S up to M = ``keys``)."""
    names = ("q", "k", "v", "logits", "out")
    units = {n: {"scale": np.asarray(sc, dtype=np.float64)} for n, sc in zip(names, scales)}
    for n, u in units.items():
        u["current_exp"] = (FMT.attention_output_exponent(u["scale"], keys) if n == "out"
                            else FMT.current_exponent(u["scale"]))
        u["payload_exp"] = FMT.payload_exponent(u["scale"])
    return units


def fixed_core_reference(code: PhaseCode, q, k, v, scales, bias, units) -> dict:
    """The integer attention core composed from the reference sims, stepped like the Lava graph."""
    T, steps = code.timesteps, 5 * code.timesteps
    logit_shape = q.shape[:-1] + (k.shape[-2],)
    out_shape = logit_shape[:-1] + (v.shape[-1],)
    sims = {n: FixedPhaseNeuronSim(code, units[n]["scale"], x.shape, current_exp=units[n]["current_exp"])
            for n, x in (("q", q), ("k", k), ("v", v))}
    sims["logits"] = FixedPhaseNeuronSim(code, units["logits"]["scale"], logit_shape, start=T,
                                         current_exp=units["logits"]["current_exp"])
    sims["out"] = FixedPhaseNeuronSim(code, units["out"]["scale"], out_shape, start=3 * T, normalized=True,
                                      current_exp=units["out"]["current_exp"], record=True)
    woss = FixedWossSim(code, logit_shape, current_exp=units["logits"]["payload_exp"], start=2 * T, record=True)
    qk = FixedTraceMatMulSim(code, transpose_b=True, payload_exp_a=units["q"]["payload_exp"],
                             payload_exp_b=units["k"]["payload_exp"], current_exp=units["logits"]["current_exp"],
                             factor=q.shape[-1] ** -0.5, bias=bias, bias_start=T)
    av = FixedTraceMatMulSim(code, transpose_b=False, payload_exp_a=FMT.woss_payload_exp,
                             payload_exp_b=units["v"]["payload_exp"], current_exp=units["out"]["current_exp"])
    inputs = {n: round_half_up(code.unit_gain * x / 2.0 ** units[n]["current_exp"])
              for n, x in (("q", q), ("k", k), ("v", v))}
    v_fifo = []
    for t in range(steps):
        trace = fixed_trace(code, FMT, t)
        s = {n: sims[n].step(inputs[n] if t == 0 else None, trace) for n in ("q", "k", "v")}
        x_logits = qk.step(s["q"], sims["q"].decoded, s["k"], sims["k"].decoded)
        v_fifo.append((s["v"], sims["v"].decoded))
        s_logits = sims["logits"].step(x_logits, trace)
        s_woss = woss.step(s_logits)
        v_spikes, v_decoded = v_fifo[t - 2 * T] if t >= 2 * T else (np.zeros_like(s["v"]), np.zeros_like(s["v"]))
        x_out = av.step(s_woss, woss.decoded, v_spikes, v_decoded)
        sims["out"].set_divisor(woss.spike_sum)
        sims["out"].step(x_out, trace)
    return {"out": sims["out"].stacked()["spikes"], "woss": woss.stacked()["spikes"], "sims": sims,
            "clips": qk.clips + av.clips + woss.sum_clips + sum(int(x.clips.sum()) for x in sims.values())}


@pytest.mark.parametrize("convention, seed", [("exact", 0), ("official", 1)])
def test_fixed_attention_core_in_lava_equals_integer_chain_and_tracks_float(convention, seed):
    """q/k/v → QKᵀ → logits → WOSS → attention×V (V delayed 2T) → output neuron normalised by
    the integer spike sum through scaled thresholds: every Process fixed_pt. Lava equals the
    integer reference chain bit for bit; the output fires like the float AttentionCoreSim
    except for a few one-step (one-level) differences."""
    from lava_spikedattn.reference.stepped import AttentionCoreSim

    code = PhaseCode(1.15, 12, convention)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 8, 4, dtype=torch.float64, generator=g) for _ in range(3))
    bias = 0.3 * torch.randn(3, 8, 8, dtype=torch.float64, generator=g)
    logits = q @ k.transpose(-1, -2) * 4**-0.5 + bias
    reference = torch.softmax(logits, -1) @ v
    scales = [x.abs().amax(-1, keepdim=True).numpy() for x in (q, k, v, logits, reference)]
    units = fixed_core_units(code, scales, k.shape[-2])
    qn, kn, vn, bn = (x.numpy() for x in (q, k, v, bias))
    chain = fixed_core_reference(code, qn, kn, vn, scales, bn, units)
    core = attention_core(qn, kn, vn, code, *scales, bias=bn, probes=("woss",), fixed_format=FMT)
    decoded, lava = core.run()
    assert_equal(lava["woss"], chain["woss"], "WOSS spikes")
    assert_equal(lava["out"], chain["out"], "output spikes")
    np.testing.assert_array_equal(core.processes["out"].recorded_clips(), chain["sims"]["out"].clips)
    assert chain["clips"] == 0
    float_sim = AttentionCoreSim(q, k, v, code, *(torch.from_numpy(sc) for sc in scales), bias=bias)
    out_float = float_sim.run().numpy()
    k_fix, k_float = chain["sims"]["out"].fire_step, float_sim.populations["out"].fire_step.numpy()
    kf, kl = np.where(k_fix < 0, code.timesteps, k_fix), np.where(k_float < 0, code.timesteps, k_float)
    assert np.abs(kf - kl).max() <= 1 and (kf != kl).mean() < 0.1, (kf != kl).mean()
    out_fix = chain["sims"]["out"].decoded_value()
    # AttentionCore.run decodes the integer payload spikes in float: within the payload and
    # trace roundings (≤ Δ_p·(1/2 + 1/2 + P/2^(F+1)) < 2·Δ_p) of the integer decoded value
    assert np.abs(decoded.numpy() - out_fix).max() <= 2 * 2.0 ** core.processes["out"].payload_exp
    assert np.abs(out_fix - out_float).max() <= (code.base - 1) * scales[4].max()  # at most one level apart
    rel_fix = np.linalg.norm(out_fix - reference.numpy()) / np.linalg.norm(reference.numpy())
    rel_float = np.linalg.norm(out_float - reference.numpy()) / np.linalg.norm(reference.numpy())
    print(f"core {convention}: out fire steps differ {(kf != kl).mean():.3f}; rel. error vs softmax·V "
          f"fixed {rel_fix:.4f} float {rel_float:.4f}")
    assert rel_fix < rel_float + 0.02


# ------------------------------------------------------------------ integer reference vs float


def margin(x: np.ndarray, code: PhaseCode) -> np.ndarray:
    """Derived bound on |V_int − Σ B^-τ I_τ| + |Θ_k − θ_k| (LSB): T/2 shift roundings,
    input-weight rounding 2^-(F+1)·Σ|I|, 1/2 for the threshold, + float64 slack."""
    T = code.timesteps
    return T / 2 + 2.0 ** -(F + 1) * np.abs(x[:T]).sum(0) + 0.5 + 1e-6


@pytest.mark.parametrize("convention, base, T", [("exact", 1.15, 40), ("official", 1.15, 40),
                                                 ("exact", 1.4, 16)])
def test_fixed_neuron_fire_steps_match_float_within_derived_margin(convention, base, T):
    """Integer vs float (same integer currents, x = I·2^e): fire steps differ only where the
    exact membrane is within the derived margin of the threshold, and then by one step; the
    decoded value is within the float code's (B−1)/(B+1) bound plus that margin."""
    code = PhaseCode(base, T, convention)
    rng = np.random.default_rng(7)
    shape = (4000,)
    scale = rng.uniform(0.5, 2.0, size=shape)
    current_exp = FMT.current_exponent(scale)
    x = int_currents(rng, code, shape, scale, current_exp, 0, 2 * T)
    sim = FixedPhaseNeuronSim(code, scale, shape, current_exp=current_exp)
    run_fixed_sim(sim, x, T)
    fsim = PhaseNeuronSim(code, torch.from_numpy(scale), shape)
    for t in range(2 * T):
        fsim.step(torch.from_numpy(x[t] * 2.0**current_exp))
    k_fix, k_float = sim.fire_step, fsim.fire_step.numpy()
    v_exact = (x[:T] * code.base ** -np.arange(T)[:, None]).sum(0)  # Σ B^-τ I_τ, LSB
    theta = code.midpoint * code.base ** -np.arange(T)[:, None] * scale / 2.0**current_exp
    differ = k_fix != k_float
    j = np.minimum(np.where(k_fix < 0, T, k_fix), np.where(k_float < 0, T, k_float))[differ]
    assert (np.abs(np.where(k_fix < 0, T, k_fix) - np.where(k_float < 0, T, k_float))[differ] == 1).all()
    gap = np.abs(np.abs(v_exact[differ]) - theta[j, np.nonzero(differ)[0]])
    assert (gap <= margin(x, code)[differ]).all(), (gap, margin(x, code)[differ])
    assert differ.mean() < 0.01, differ.mean()
    # decoded values (payload units Δ_p): rounding of P and of P·latched/2^F (Δ_p/2 each) and
    # of the trace (2^-(F+1)·scale) on top of the level
    a = v_exact * 2.0**current_exp / code.unit_gain  # ANN value whose integrated membrane is v_exact
    q_float = code.quantize(torch.from_numpy(a), torch.from_numpy(scale)).numpy()
    fixed_value = sim.decoded_value()
    same = ~differ
    assert np.abs(fixed_value - q_float)[same].max() <= 2.0**sim.payload_exp + 2.0 ** -(F + 1) * scale.max()
    in_range = (np.abs(a) <= scale * code.max_level) & (np.abs(a) >= scale * code.fire_thresholds[-1].item())
    rel = np.abs(fixed_value - a)[in_range] / np.abs(a)[in_range]
    rel_margin = (margin(x, code) * 2.0**current_exp / scale / code.fire_thresholds[-1].item())[in_range]
    rounding = (2.0**sim.payload_exp + 2.0 ** -(F + 1) * scale)[in_range] / np.abs(a)[in_range]  # as above
    assert (rel <= code.relative_error_bound + code.base * rel_margin + rounding).all()
    assert rel.max() > 0.5 * code.relative_error_bound  # the float code's error dominates


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_fixed_convert_neuron_fires_like_float_convert_neuron(convention):
    """The bit-serial convert neuron (input weights unit_gain·2^-(τ+1)): integer vs float
    ``ConvertNeuronSim`` on the same currents fire at the same step except within the margin
    (T/2 shift roundings + 2^-(F+1)·Σ|I| weight rounding and dropped low bits + 1/2), then one
    step apart."""
    from lava_spikedattn.reference.stepped import ConvertNeuronSim

    code = PhaseCode(1.29, 24, convention)
    T = code.timesteps
    rng = np.random.default_rng(11)
    shape = (4000,)
    scale = rng.uniform(0.5, 2.0, size=shape)
    current_exp = FMT.current_exponent(scale)
    x = np.rint(rng.uniform(-1.2, 1.2, size=(T,) + shape) * scale / 2.0**current_exp).astype(np.int64)
    sim = FixedPhaseNeuronSim(code, scale, shape, current_exp=current_exp, bit_serial_input=True)
    run_fixed_sim(sim, np.concatenate([x, np.zeros_like(x)]), T)
    fsim = ConvertNeuronSim(code, torch.from_numpy(scale), shape)
    for t in range(2 * T):
        fsim.step(torch.from_numpy(x[t] * 2.0**current_exp) if t < T else None)
    k_fix = np.where(sim.fire_step < 0, T, sim.fire_step)
    k_float = np.where(fsim.fire_step.numpy() < 0, T, fsim.fire_step.numpy())
    differ = k_fix != k_float
    v_exact = code.unit_gain * (x * 2.0 ** -(np.arange(T)[:, None] + 1)).sum(0)  # LSB
    j = np.minimum(k_fix, k_float)[differ]
    theta = code.midpoint * code.base ** -np.arange(T)[:, None] * scale / 2.0**current_exp
    gap = np.abs(np.abs(v_exact[differ]) - theta[j, np.nonzero(differ)[0]])
    assert (np.abs(k_fix - k_float)[differ] == 1).all()
    assert (gap <= margin(x, code)[differ]).all()
    assert differ.mean() < 0.01 and len(np.unique(k_fix)) == T + 1, differ.mean()


def test_fixed_token_linear_error_vs_float_within_derived_bound():
    """|Δ_I·I − Σ w·x| ≤ Δ_I/2 + 2^(e_w−1)·Σ|x| + 2^e_w·Σ|m|·Δ_p/2 (+ Δ_I/2 with a bias)."""
    code = PhaseCode(1.15, 8)
    rng = np.random.default_rng(11)
    scale = rng.uniform(0.5, 2.0, size=(6, 32))
    payload_exp = FMT.payload_exponent(scale)
    signs = rng.choice([-1, 0, 1], size=(8,) + scale.shape)
    weight, bias = rng.normal(scale=0.2, size=(12, 32)), rng.normal(size=12)
    current_exp = FMT.current_exponent(4.0)
    sim = FixedTokenLinearSim(weight, payload_exp=payload_exp, current_exp=current_exp, bias=bias, code=code)
    mantissa, weight_exp = quantize_weights(weight)
    payload = FMT.payload(scale, payload_exp)
    worst = 0.0
    for t in range(8):
        got = sim.step(signs[t] * payload) * 2.0**current_exp
        x = signs[t] * scale
        want = x @ weight.T + bias / code.bias_divisor
        bound = (2.0**current_exp + 2.0 ** (weight_exp - 1) * np.abs(x).sum(-1, keepdims=True)
                 + 2.0**weight_exp * (np.abs(signs[t])[..., None, :] * np.abs(mantissa)).sum(-1)
                 * 2.0 ** (payload_exp - 1))
        assert (np.abs(got - want) <= bound * (1 + 1e-12)).all()
        worst = max(worst, float((np.abs(got - want) / bound).max()))
    assert worst > 0.05, worst  # the bound is not vacuous
    assert sim.clips == 0 and sim.needed_accumulator_bits() == 8 + 16 + 5 - 1


# ------------------------------------------------------ division-free normalisation (float, fixed)


def _normalised_float_runs(code, shape, scale, x, divisor, divide_free):
    params = dynamics.PhaseParams(scale=scale, gain=code.base, timesteps=code.timesteps, start=0,
                                  wait=code.timesteps, thresholds=np.full(code.timesteps,
                                                                          code.neuron_threshold(code.timesteps)),
                                  saturation=code.saturation_membrane(code.timesteps), signed=True, normalized=True,
                                  divide_free=divide_free)
    state = dynamics.PhaseState(np.zeros(shape), np.zeros(shape, bool), np.zeros(shape), np.zeros(shape),
                                np.full(shape, -1), np.zeros(shape, bool), np.zeros(shape), np.zeros(shape))
    spikes = [dynamics.phase_step(state, params, t, x[t], 1.0, divisor) for t in range(2 * code.timesteps)]
    return np.stack([np.zeros(shape) if step is None else step for step in spikes]), state


@pytest.mark.parametrize("base, T", [(1.15, 40), (1.3, 8), (2.0, 6)])
def test_divide_free_normalisation_fires_like_division(base, T):
    """v ≥ θ_k·S fires exactly like v/S ≥ θ_k (float64): the derived gap (2k+4)·2^-53 is far
    below any random input's distance to a threshold. B = 2 with S a power of two makes both
    exact, so inputs on the threshold tie identically too."""
    code = PhaseCode(base, T)
    rng = np.random.default_rng(3)
    shape = (64, 30)
    scale = rng.uniform(0.5, 2.0, size=(64, 1))
    x = np.zeros((2 * T,) + shape)
    divisor = rng.uniform(0.3, 5.0, size=(64, 1))
    if base == 2.0:  # powers of two: every operation exact
        scale = 2.0 ** rng.integers(-1, 2, size=(64, 1)).astype(float)
        divisor = 2.0 ** rng.integers(-2, 3, size=(64, 1)).astype(float)
        k_on = rng.integers(0, T, size=shape)
        x[0] = scale * divisor * 0.75 * 2.0**-k_on  # on the threshold of step k_on
        x[0, :32] = np.nextafter(x[0, :32], 0.0)  # one ulp below: fires a step later
    else:
        x[:T] = rng.normal(size=(T,) + shape) * scale * divisor / T
    divisor[5] = 0.0
    s_div, st_div = _normalised_float_runs(code, shape, scale, x, divisor, False)
    s_free, st_free = _normalised_float_runs(code, shape, scale, x, divisor, True)
    np.testing.assert_array_equal(s_free, s_div)
    np.testing.assert_array_equal(st_free.fire_step, st_div.fire_step)
    np.testing.assert_array_equal(st_free.saturated, st_div.saturated)
    assert (st_div.fire_step[5] == -1).all()
    live = divisor[:, 0] != 0
    np.testing.assert_allclose(st_free.v[live] / divisor[live], st_div.v[live], rtol=1e-13)
    assert len(np.unique(st_div.fire_step)) >= min(T, 6)
    if base == 2.0:
        on = np.ones(shape, bool)
        on[:32] = on[5] = False
        np.testing.assert_array_equal(st_free.fire_step[on], k_on[on])
        below = ~on
        below[5] = False
        np.testing.assert_array_equal(st_free.fire_step[below], np.where(k_on + 1 < T, k_on + 1, -1)[below])


def test_divide_free_lava_float_model_equals_dividing_model():
    """The float PhaseNeuron with divide_free=True, in Lava, fires like the dividing one and like
    the reference (PhaseNeuronSim with set_divisor)."""
    code = PhaseCode(1.15, 8)
    T, steps = 8, 2 * 8 + 1
    rng = np.random.default_rng(5)
    shape, dshape = (3, 6, 5), (3, 6, 1)
    scale = rng.uniform(0.5, 2.0, size=dshape)
    divisor = rng.uniform(0.5, 3.0, size=dshape)
    divisor[1, 2] = 0.0
    x = np.zeros((steps,) + shape)
    x[:T] = rng.normal(size=(T,) + shape) * scale * divisor / 3
    div_data = rng.uniform(0.1, 5.0, size=(steps,) + dshape)
    div_data[T] = divisor
    sinks, source, div_source, holder = {}, SpikeSource(data=x), SpikeSource(data=div_data), TraceHolder(code=code)
    for name, free in (("div", False), ("free", True)):
        neuron = PhaseNeuron(shape=shape, scale=scale, code=code, divisor_shape=dshape, divide_free=free)
        source.s_out.connect(neuron.a_in)
        div_source.s_out.connect(neuron.div_in)
        connect_trace(holder, neuron)
        sinks[name] = probe(neuron.s_out, steps)
        sinks[f"{name}.trace"] = probe(neuron.trace_out, steps)
    records = run_processes(sinks, steps, timeout=120)
    sim = PhaseNeuronSim(code, torch.from_numpy(scale), shape, record=True)
    sim.set_divisor(torch.from_numpy(divisor))
    for t in range(steps):
        sim.step(torch.from_numpy(x[t]))
    ref = sim.history.stacked()["spikes"].numpy()
    np.testing.assert_array_equal(records["free"], ref)
    np.testing.assert_array_equal(records["div"], ref)
    np.testing.assert_allclose(records["free.trace"][-1], sim.decoded.numpy(), rtol=1e-12, atol=1e-12)
    assert (ref[:, 1, 2] == 0).all() and (ref != 0).mean() > 0.01


def test_fixed_normalized_neuron_matches_dividing_float_within_margin():
    """Integer V ≥ round(Θ_k·S/2^F) vs float (V/S' ≥ θ_k, S' = S/2^F, the release's division):
    fire steps differ only within the derived margin (membrane margin + 1/2 + S'/2 LSB)."""
    code = PhaseCode(1.15, 16)
    T = code.timesteps
    rng = np.random.default_rng(9)
    shape, dshape = (200, 20), (200, 1)
    scale = rng.uniform(0.5, 2.0, size=dshape)
    S = rng.integers(2**F, 6 * 2**F, size=dshape)
    current_exp = FMT.current_exponent(scale * 6)
    x = int_currents(rng, code, shape, scale * S / 2**F, current_exp, 0, 2 * T)
    sim = FixedPhaseNeuronSim(code, scale, shape, current_exp=current_exp, normalized=True)
    sim.set_divisor(S)
    run_fixed_sim(sim, x, T)
    fsim = PhaseNeuronSim(code, torch.from_numpy(scale), shape)
    fsim.set_divisor(torch.from_numpy(S / 2.0**F))
    for t in range(2 * T):
        fsim.step(torch.from_numpy(x[t] * 2.0**current_exp))
    k_fix, k_float = sim.fire_step, fsim.fire_step.numpy()
    differ = k_fix != k_float
    v_exact = (x[:T] * code.base ** -np.arange(T)[:, None, None]).sum(0)
    theta_s = (code.midpoint * code.base ** -np.arange(T)[:, None, None] * scale / 2.0**current_exp
               * (S / 2.0**F))
    kk = np.minimum(np.where(k_fix < 0, T, k_fix), np.where(k_float < 0, T, k_float))
    rows = np.nonzero(differ)[0]
    gap = np.abs(np.abs(v_exact[differ]) - theta_s[kk[differ], rows, 0])
    bound = (margin(x, code) + 0.5 + 0.5 * (S / 2.0**F))[differ]
    assert (gap <= bound).all()
    assert differ.mean() < 0.01 and (k_fix >= 0).mean() > 0.5
