"""The attention core as Lava processes vs the time-stepped reference and the closed form."""

import pytest
import torch

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.reference import closed
from lava_spikedattn.reference.stepped import AttentionCoreSim
from lava_spikedattn.wiring import attention_core

SAME = 1e-9  # float64, same dynamics; only summation order may differ
POPULATIONS = ("q", "k", "v", "logits", "woss", "out")


def inputs(heads: int, seed: int):
    """2 × (8 tokens × 4 dims) per head, with a relative-position-style bias and calibrated scales."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, 8, 4, dtype=torch.float64, generator=g) for _ in range(3))
    bias = 0.3 * torch.randn(heads, 8, 8, dtype=torch.float64, generator=g)
    logits = q @ k.transpose(-1, -2) * 4**-0.5 + bias
    reference = torch.softmax(logits, -1) @ v

    def scale(x):
        return x.abs().amax(-1, keepdim=True)

    return (q, k, v), (scale(q), scale(k), scale(v), scale(logits), scale(reference)), bias, reference


@pytest.mark.parametrize("heads,convention,seed", [(1, "exact", 0), (3, "exact", 1), (3, "official", 2)])
def test_lava_attention_core_equals_reference(heads, convention, seed):
    code = PhaseCode(1.15, 12, convention)
    (q, k, v), scales, bias, reference = inputs(heads, seed)
    sim = AttentionCoreSim(q, k, v, code, *scales, bias=bias, record=True)
    expected = sim.run()
    core = attention_core(q, k, v, code, *scales, bias=bias, probes=POPULATIONS)
    out, records = core.run()
    for name in POPULATIONS:  # identical spike trains, membranes to float64 rounding
        history = sim.populations[name].history.stacked()
        assert torch.equal(torch.as_tensor(records[name]), history["spikes"]), name
        torch.testing.assert_close(torch.as_tensor(records[f"{name}.v"]), history["membrane"], atol=SAME, rtol=SAME)
        fire_steps = torch.as_tensor(core.processes[name].recorded_fire_steps())
        assert torch.equal(fire_steps, sim.populations[name].fire_step), name  # shared-memory record
    torch.testing.assert_close(out, expected, atol=SAME, rtol=0)
    closed_form = closed.spiking_attention(q, k, v, code, *scales, bias=bias)
    torch.testing.assert_close(out, closed_form, atol=SAME, rtol=0)
    if convention == "exact":
        # T=12, B=1.15 spans only B^12 ≈ 5 of dynamic range: these inputs measure 20–22 %
        # (4.6–4.8 % at T=40, where tests/test_reference.py bounds the core at 12 %).
        rel = ((out - reference).norm() / reference.norm()).item()
        assert rel < 0.3, rel


def test_key_mask_padded_keys_never_fire_in_lava():
    code = PhaseCode(1.2, 10)
    (q, k, v), scales, bias, _ = inputs(2, 4)
    key_mask = (torch.arange(8) < torch.tensor([8, 5])[:, None])[:, None, None, :]  # sample 1: 3 padded keys
    sim = AttentionCoreSim(q, k, v, code, *scales, bias=bias, key_mask=key_mask, record=True)
    expected = sim.run()
    out, records = attention_core(q, k, v, code, *scales, bias=bias, key_mask=key_mask,
                                  probes=("logits", "woss")).run()
    for name in ("logits", "woss"):
        assert torch.equal(torch.as_tensor(records[name]), sim.populations[name].history.stacked()["spikes"])
    assert not records["woss"][:, 1, ..., 5:].any() and not records["logits"][:, 1, ..., 5:].any()
    torch.testing.assert_close(out, expected, atol=SAME, rtol=0)


def test_probe_names_are_checked_before_any_run():
    code = PhaseCode(1.15, 4)
    (q, k, v), scales, _, _ = inputs(1, 0)
    with pytest.raises(ValueError, match="unknown probe"):
        attention_core(q, k, v, code, *scales, probes=("attention",))
