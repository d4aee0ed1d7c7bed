"""Reference engine: spec §11 vectors on both engines, stepped == closed, dynamics, errors."""

import math

import pytest
import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.reference import closed
from lava_spikedattn.reference import functional as F
from lava_spikedattn.reference.stepped import PhaseNeuronSim, WOSSSim

ENGINES = ["closed", "stepped"]
SPEC_TOL = 1e-6  # the spec prints 6 decimals
SAME = 1e-9  # "same dynamics" in float64: only summation order differs between the engines
SWIN = PhaseCode(1.15, 40, "official")


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def close(a, b, tol):
    torch.testing.assert_close(a.double(), t(b) if isinstance(b, list) else b.double(), atol=tol, rtol=0)


# --- spec §11 test vectors ----------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_t1b_bit_serial_input_and_convert_neuron(engine):
    pixels = t([2.0, 1.5, 1.0, 0.4, 0.05, -0.8, -1.9])
    decoded, bits = F.encode_input(pixels, SWIN, 2.0, engine=engine)
    assert bits.tolist() == [40, 2, 1, 20, 18, 20, 22]
    close(decoded, [1.73913, 1.512287, 0.994353, 0.373814, 0.052831, -0.751874, -1.73913], SPEC_TOL)
    value, _ = closed.bit_serial(pixels, 40, 2.0)
    assert SWIN.fire_step(value, 2.0).tolist() == [0, 1, 4, 11, 25, 6, 0]


def test_t1_bias_injection_over_t_steps_gives_the_same_code():
    values = t([1.0, 0.95, 0.8696, 0.8, 0.5, 0.3, 0.1, 0.05, 0.01, 0.003, 0.002, 0, -0.3, -0.7])
    neuron = PhaseNeuronSim(SWIN, 1.0, values.shape)
    for step in range(neuron.end):
        neuron.step(values / SWIN.bias_divisor if step < SWIN.timesteps else None)
    assert torch.equal(neuron.fire_step, SWIN.fire_step(values, 1.0))
    close(neuron.decoded, SWIN.quantize(values, 1.0), SAME)


@pytest.mark.parametrize("engine", ENGINES)
def test_t2_trace_driven_qk(engine):
    q = t([[0.9, -0.4, 0.25], [0.1, 0.7, -0.95]])
    k = t([[0.5, 0.8, -0.3], [-0.6, 0.2, 0.45]])
    close(SWIN.quantize(q, 1.0), [[0.869565, -0.375937, 0.247185], [0.106865, 0.657516, -0.869565]], SPEC_TOL)
    close(SWIN.quantize(k, 1.0), [[0.497177, 0.756144, -0.284262], [-0.571753, 0.186907, 0.432328]], SPEC_TOL)
    close(F.trace_matmul(q, k, SWIN, 1.0, 1.0, engine=engine), [[0.077800, -0.460577], [0.797492, -0.314143]], SPEC_TOL)


@pytest.mark.parametrize("engine", ENGINES)
def test_t2b_official_sign_slip_and_exact_fix(engine):
    q = t([[-0.5, 0.3, 0.5], [0.5, -0.3, 0.2]])
    k = t([[0.5, 0.3, -0.5], [0.4, 0.3, 0.2]])
    exact_value = [[-0.413564, -0.013176], [0.073454, 0.141036]]
    close(F.trace_matmul(q, k, SWIN, 1.0, 1.0, engine=engine), [[-0.907934, -0.013176], [-0.088157, -0.020574]],
          SPEC_TOL)
    close(SWIN.quantize(q, 1.0) @ SWIN.quantize(k, 1.0).T, exact_value, SPEC_TOL)
    # The exact convention's levels are B·(official levels): the same pairs, times B², corrected.
    exact = PhaseCode(1.15, 40, "exact")
    close(F.trace_matmul(q, k, exact, 1.0, 1.0, engine=engine),
          exact.quantize(q, 1.0) @ exact.quantize(k, 1.0).T, SAME)


@pytest.mark.parametrize("engine", ENGINES)
def test_t3_woss_swin(engine):
    logits = t([[2.0, 1.0, 0.5, -1.0], [0.3, 0.1, -0.2, -0.25]])
    close(SWIN.quantize(logits[0], 2.0), [1.73913, 0.994353, 0.494369, -0.994353], SPEC_TOL)
    result = closed.woss(logits, SWIN, 2.0)
    assert result.fire_step.tolist() == [[1, 7, 11, 23], [1, 2, 5, 5]]
    close(result.decoded[0], [0.756144, 0.326902, 0.186907, 0.034934], SPEC_TOL)
    close(result.spike_sum[0:1], [1.304887], SPEC_TOL)
    p = F.woss_softmax(logits, SWIN, 2.0, engine=engine)
    close(p, [[0.579471, 0.250521, 0.143236, 0.026772], [0.331887, 0.288598, 0.189758, 0.189758]], SPEC_TOL)


@pytest.mark.parametrize("engine", ENGINES)
def test_t3_woss_release_bert(engine):
    bert = PhaseCode(1.4, 16, "exact")  # the release's BERT levels are B^-k with the ramp at +1
    logits = t([[2.0, 1.0, 0.5, -1.0], [0.3, 0.1, -0.2, -0.25]])
    close(bert.quantize(logits[0], 2.0), [2, 1.020408, 0.520616, -1.020408], SPEC_TOL)
    assert closed.woss(logits, bert, 2.0, ramp_start=1.0).fire_step.tolist() == [[1, 4, 6, 10], [1, 2, 3, 3]]
    p = F.woss_softmax(logits, bert, 2.0, engine=engine, ramp_start=1.0)
    close(p, [[0.625482, 0.227945, 0.116299, 0.030274], [0.365672, 0.261194, 0.186567, 0.186567]], SPEC_TOL)


@pytest.mark.parametrize("engine", ENGINES)
def test_t3b_woss_attention_values(engine):
    logits = t([[2.0, 1.0, 0.5, -1.0]])
    values = t([[0.5, -0.2], [0.1, 0.4], [-0.3, 0.3], [0.8, -0.6]])
    close(SWIN.quantize(values, 0.8), [[0.526013, -0.197748], [0.098316, 0.397741], [-0.30075, 0.30075],
                                       [0.695652, -0.604915]], SPEC_TOL)
    out = F.woss_attention(logits, values, SWIN, 2.0, 0.8, 1.0, engine=engine)
    close(out, [[0.284262, 0.011420]], SPEC_TOL)
    p_v = F.woss_softmax(logits, SWIN, 2.0) @ SWIN.quantize(values, 0.8)
    close(p_v, [[0.304985, 0.011937]], SPEC_TOL)


# --- the exact convention's WOSS temperature ----------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_woss_temperature_exact_vs_official(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 16, dtype=torch.float64, generator=g)
    scale = logits.abs().amax(-1, keepdim=True)
    for code, temperature in ((PhaseCode(1.15, 40, "exact"), 1.0), (SWIN, 1.15)):
        l_hat = code.quantize(logits, scale)
        p = F.woss_softmax(logits, code, scale)
        target, other = torch.softmax(temperature * l_hat, -1), torch.softmax(l_hat * (2.15 - temperature), -1)
        # Each fired entry's ratio to the winner is exp(l̂_j − m̂) rounded to the nearest step of
        # the log-B grid: within a factor B^(1/2) of the target softmax's ratio.
        fired = p > 0
        ratio = (p / p.amax(-1, keepdim=True)) / (target / target.amax(-1, keepdim=True))
        assert ratio[fired].log().abs().max() <= 0.5 * math.log(1.15) + 1e-9
        assert (p - target).abs().mean() < (p - other).abs().mean()


def test_silent_row_gives_zeros_not_nan():
    code = PhaseCode(1.15, 8, "exact")
    # Row 1 has no positive logit (nothing is subtracted) and all of it lies beyond the ramp's
    # reach of (T − 1/2)·ln B: no entry ever fires.
    logits = t([[0.5, 0.2, 0.1], [-5.0, -5.5, -6.0]])
    scale = t([[1.0], [6.0]])
    for engine in ENGINES:
        p = F.woss_softmax(logits, code, scale, engine=engine)
        assert torch.isfinite(p).all() and p[1].abs().sum() == 0 and p[0].sum() == pytest.approx(1.0)
        out = F.woss_attention(logits, torch.ones(3, 2), code, scale, 1.0, 1.0, engine=engine)
        assert torch.isfinite(out).all() and out[1].abs().sum() == 0


# --- stepped == closed on random shapes ---------------------------------------------------------
CODES = [PhaseCode(1.15, 12, "exact"), PhaseCode(1.15, 12, "official"), PhaseCode(1.4, 8, "official"),
         PhaseCode(1.3, 10, "exact")]


@pytest.mark.parametrize("code", CODES, ids=lambda c: f"{c.convention}-B{c.base}-T{c.timesteps}")
@pytest.mark.parametrize("seed,shape", [(0, (5, 4)), (1, (2, 3, 6, 4)), (2, (3, 2, 2, 5, 8))])
def test_stepped_equals_closed(code, seed, shape):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, dtype=torch.float64, generator=g)
    b = torch.randn(*shape[:-2], shape[-2] + 1, shape[-1], dtype=torch.float64, generator=g)
    scale_a = a.abs().amax(-1, keepdim=True) * 1.1
    scale_b = b.abs().amax() * 0.9  # saturating on purpose: the engines must still agree
    products = [F.trace_matmul(a, b, code, scale_a, scale_b, engine=e) for e in ENGINES]
    close(products[0], products[1], SAME)
    logits = products[1]
    row_scale = logits.abs().amax(-1, keepdim=True)
    probs = [F.woss_softmax(logits, code, row_scale, engine=e) for e in ENGINES]
    close(probs[0], probs[1], SAME)
    outs = [F.woss_attention(logits, b, code, row_scale, scale_b, 0.7, engine=e) for e in ENGINES]
    close(outs[0], outs[1], SAME)
    inputs = [F.encode_input(a, code, 1.5, engine=e) for e in ENGINES]
    close(inputs[0][0], inputs[1][0], SAME)
    close(inputs[0][1], inputs[1][1], 0)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("convention", ["exact", "official"])
def test_phase_neuron_windows_blocking_and_trace(signed, convention):
    code = PhaseCode(1.2, 10, convention)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=g)
    scale = torch.rand(4, 1, dtype=torch.float64, generator=g) + 0.5
    start, wait = 3, 14
    neuron = PhaseNeuronSim(code, scale, x.shape, signed=signed, start=start, wait=wait, record=True)
    for step in range(neuron.end + 2):
        neuron.step(code.unit_gain * x if step == start else None)
    history = neuron.history.stacked()
    spikes = history["spikes"]
    fired_at = spikes.ne(0).nonzero()[:, 0]
    assert bool(((fired_at >= start + wait) & (fired_at < start + wait + code.timesteps)).all())
    assert int(spikes.ne(0).sum(0).max()) <= 1  # first-spike blocking: at most one spike each
    assert torch.equal(neuron.fire_step, code.fire_step(x, scale, signed))
    close(neuron.decoded, code.quantize(x, scale, signed), SAME)
    # No reset on firing: |v| keeps growing by B every step inside the window.
    grows = history["membrane"][start + 1:neuron.end]
    close(grows[1:], code.base * grows[:-1], SAME * 1e3)


def test_woss_history_is_recorded():
    code = PhaseCode(1.2, 6)
    wta = WOSSSim(code, (2, 3), record=True)
    for step in range(2 * code.timesteps):
        wta.step(t([[0.2, 0.1, 0.0], [0.0, -0.1, 0.3]]) if step == 0 else None)
    history = wta.history.stacked()
    assert history["spikes"].shape == (12, 2, 3) and int(history["spikes"].sum()) == int(wta.fired.sum())


# --- errors --------------------------------------------------------------------------------------
def test_errors_are_clear():
    code = PhaseCode(1.2, 8)
    with pytest.raises(ValueError, match="same d"):
        F.trace_matmul(torch.ones(3, 4), torch.ones(3, 5), code, 1.0, 1.0)
    with pytest.raises(ValueError, match="engine"):
        F.trace_matmul(torch.ones(3, 4), torch.ones(3, 4), code, 1.0, 1.0, engine="fast")
    with pytest.raises(ValueError, match="one scale per row"):
        F.woss_softmax(torch.ones(3, 4), code, torch.ones(3, 4))
    with pytest.raises(ValueError, match="NaN/inf"):
        F.woss_softmax(t([[0.1, float("nan")]]), code, 1.0)
    with pytest.raises(ValueError, match="M = logits"):
        F.woss_attention(torch.ones(2, 3), torch.ones(4, 2), code, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="wait"):
        PhaseNeuronSim(code, 1.0, (2,), wait=3)
    with pytest.raises(ValueError, match="scale"):
        PhaseNeuronSim(code, -1.0, (2,))
    with pytest.raises(ValueError, match="broadcast"):
        PhaseNeuronSim(code, torch.ones(3), (2, 4))


@pytest.mark.parametrize("code", CODES[:3], ids=lambda c: f"{c.convention}-B{c.base}-T{c.timesteps}")
@pytest.mark.parametrize("seed", [0, 1])
def test_attention_core_stepped_equals_closed_and_tracks_float(code, seed):
    g = torch.Generator().manual_seed(seed)
    windows, heads, tokens, dim = 2, 3, 8, 4
    q, k, v = (torch.randn(windows, heads, tokens, dim, dtype=torch.float64, generator=g) for _ in range(3))
    bias = 0.3 * torch.randn(heads, tokens, tokens, dtype=torch.float64, generator=g)
    mask = torch.zeros(windows, 1, tokens, tokens, dtype=torch.float64)
    mask[1, :, :4, 4:] = -100.0  # a shifted-window mask: these keys must get no attention
    total_bias = bias + mask
    float_logits = q @ k.transpose(-1, -2) * dim**-0.5 + total_bias
    scales = dict(scale_q=q.abs().amax(-1, keepdim=True), scale_k=k.abs().amax(-1, keepdim=True),
                  scale_v=v.abs().amax(-1, keepdim=True),
                  scale_logits=float_logits.abs().amax(-1, keepdim=True),
                  scale_out=(torch.softmax(float_logits, -1) @ v).abs().amax(-1, keepdim=True))
    outs = [F.spiking_attention(q, k, v, code, **scales, bias=total_bias, engine=e) for e in ENGINES]
    close(outs[0], outs[1], SAME)
    # Masked keys never fire in WOSS, so the masked rows ignore them, as float softmax does.
    p = closed.woss(closed.attention_logits(q, k, code, scales["scale_q"], scales["scale_k"], total_bias),
                    code, scales["scale_logits"]).probabilities
    assert p[1, :, :4, 4:].abs().max() == 0


def test_attention_core_tracks_float_attention_at_paper_settings():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(4, 3, 16, 8, dtype=torch.float64, generator=g) for _ in range(3))
    logits = q @ k.transpose(-1, -2) * 8**-0.5
    reference = torch.softmax(logits, -1) @ v
    scales = (q.abs().amax(-1, keepdim=True), k.abs().amax(-1, keepdim=True), v.abs().amax(-1, keepdim=True),
              logits.abs().amax(-1, keepdim=True), reference.abs().amax(-1, keepdim=True))
    errors = {}
    for convention in ("exact", "official"):
        out = F.spiking_attention(q, k, v, PhaseCode(1.15, 40, convention), *scales)
        errors[convention] = ((out - reference).norm() / reference.norm()).item()
    # Four roundings of up to (B−1)/(B+1) = 7 % each, mostly independent: ~10 % in norm.
    assert errors["exact"] < 0.12, errors
    # The release's slips (third-term sign, levels topping at scale/B, softmax(B·l̂)) cost more.
    assert errors["official"] > 2 * errors["exact"], errors


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_key_mask_padded_keys_never_fire(convention):
    code = PhaseCode(1.2, 16, convention)
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 2, 6, 4, dtype=torch.float64, generator=g) for _ in range(3))
    lengths = torch.tensor([6, 4])  # sample 1 has two padded keys
    key_mask = (torch.arange(6) < lengths[:, None])[:, None, None, :]  # (batch, 1, 1, M)
    logits = q @ k.transpose(-1, -2) * 0.5
    scales = (q.abs().amax(-1, keepdim=True), k.abs().amax(-1, keepdim=True), v.abs().amax(-1, keepdim=True),
              torch.where(key_mask, logits, 0.0).abs().amax(-1, keepdim=True), 2.0)
    outs = [F.spiking_attention(q, k, v, code, *scales, key_mask=key_mask, engine=e) for e in ENGINES]
    close(outs[0], outs[1], SAME)
    p = closed.woss(closed.attention_logits(q, k, code, *scales[:2]), code, scales[3], key_mask=key_mask)
    assert p.probabilities[1, ..., 4:].abs().max() == 0 and (p.fire_step[1, ..., 4:] == -1).all()
    # The padded sample equals the same sample cut to its 4 real keys.
    short = F.spiking_attention(q[1:, :, :, :], k[1:, :, :4], v[1:, :, :4], code, scales[0][1:], scales[1][1:, :, :4],
                                scales[2][1:, :, :4], scales[3][1:], 2.0)
    close(outs[0][1:], short, SAME)
    # A row with no key present decodes to 0 and never NaN.
    none = F.woss_softmax(logits, code, scales[3], key_mask=torch.zeros(6, dtype=torch.bool), engine="stepped")
    assert torch.isfinite(none).all() and none.abs().sum() == 0


def test_key_mask_must_be_bool():
    with pytest.raises(ValueError, match="key_mask must be a bool"):
        F.woss_softmax(torch.ones(2, 3), PhaseCode(1.2, 4), 1.0, key_mask=torch.ones(3))
