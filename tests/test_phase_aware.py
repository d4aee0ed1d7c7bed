"""Phase-aware fine-tuning (lava_spikedattn.phase_aware): the training forward is the converted
network on the closed-form engine bit for bit, gradients reach the ANN's parameters through the
fold, the straight-through rule, and a few steps bring the spiking network closer to its teacher."""

import pytest
import torch
from synthetic import grey_task, sentences
from test_finetune_distributed import KilledError, KilledInEpoch
from tiny_models import prepared_vit, tiny_swin_config, tiny_vit_config, train_tiny_swin

from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.phase_aware import PhaseAwareEngine, PhaseAwareModel, finetune_phase_aware

SMALL_T = PhaseCode(1.6, 6)  # a window short enough that post-training conversion loses a lot


@pytest.fixture(scope="module")
def swin():
    """The tiny grey Swin trained 30 steps (the Lava tests' model)."""
    config = tiny_swin_config(in_chans=1, num_heads=(2, 2), num_classes=4)
    return train_tiny_swin(config, (grey_task(64, step) for step in range(30)), lr=3e-3)


def _calibrated_vit():
    model = prepared_vit("deit_tiny_distilled_patch16_224", tiny_vit_config()).train()
    with torch.no_grad():
        model(grey_task(32, 0)[0])
    return model.eval()


@pytest.mark.parametrize("convention", ["exact", "official"])
def test_training_forward_is_the_converted_closed_form(swin, tiny_bert, convention):
    code = PhaseCode(1.6, 6, convention)
    x = grey_task(16, 1)[0]
    cm = convert(swin, [x], code)
    torch.testing.assert_close(PhaseAwareModel.from_converted(swin, cm)(x), cm.to_reference("closed")(x),
                               rtol=0, atol=0)
    vit = _calibrated_vit()
    cm = convert(vit, [x], code)
    torch.testing.assert_close(PhaseAwareModel.from_converted(vit, cm)(x), cm.to_reference("closed")(x),
                               rtol=0, atol=0)
    padded = sentences(8, 2)  # padding at the end of most sentences
    cm = convert(tiny_bert, [padded], PhaseCode(1.4, 8, convention))
    torch.testing.assert_close(PhaseAwareModel.from_converted(tiny_bert, cm)(padded),
                               cm.to_reference("closed")(padded), rtol=0, atol=0)


def test_gradients_reach_every_parameter_through_the_fold(swin, tiny_bert):
    x = grey_task(16, 1)[0]
    student = PhaseAwareModel.from_converted(swin, convert(swin, [x], SMALL_T))
    student(x).logsumexp(-1).sum().backward()
    grads = {name: p.grad for name, p in swin.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    for name in ("patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight",
                 "layers.0.blocks.1.attn.relative_position_bias_table", "layers.1.blocks.1.norm1.weight",
                 "head.fc.weight"):
        assert float(grads[name].abs().sum()) > 0, name
    swin.zero_grad(set_to_none=True)

    batch = sentences(8, 3)
    student = PhaseAwareModel.from_converted(tiny_bert, convert(tiny_bert, [batch], PhaseCode(1.4, 8)))
    student(batch).logsumexp(-1).sum().backward()
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
                 "bert.encoder.layer.1.output.LayerNorm.weight", "classifier.weight"):
        assert float(tiny_bert.get_parameter(name).grad.abs().sum()) > 0, name
    tiny_bert.zero_grad(set_to_none=True)


def test_straight_through_rule():
    engine = PhaseAwareEngine(SMALL_T, lambda name, shape: torch.tensor(2.0), None)
    x = torch.tensor([-3.0, -1.0, 0.5, 1.9, 2.5], requires_grad=True)
    signed = engine.neuron("signed", x)
    unsigned = engine.neuron("relu", x, signed=False)
    top = 2.0 * SMALL_T.max_level
    torch.testing.assert_close(signed.detach(), SMALL_T.quantize(x.detach(), torch.tensor(2.0)))
    (grad,) = torch.autograd.grad(signed.sum(), x)
    torch.testing.assert_close(grad, (x.detach().abs() <= top).float())  # zero where the code saturates
    (grad,) = torch.autograd.grad(unsigned.sum(), x)
    torch.testing.assert_close(grad, ((x.detach() > 0) & (x.detach() <= top)).float())


def test_learned_scale_rule():
    """LSQ: d(decoded)/d(scale) = decoded/scale − x/scale inside the code's range, the top level
    (±max_level, 0 below zero for ReLU neurons) where it saturates."""
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    engine = PhaseAwareEngine(SMALL_T, lambda name, shape: scale.detach(), None,
                              learned_scale=lambda name, shape: scale)
    x = torch.tensor([-3.0, -1.0, 0.5, 1.9, 2.5], dtype=torch.float64)
    for signed in (True, False):
        decoded = engine.neuron("layer", x, signed=signed)
        torch.testing.assert_close(decoded.detach(), SMALL_T.quantize(x, scale.detach(), signed))
        top = 2.0 * SMALL_T.max_level
        inside = (x.abs() <= top) if signed else ((x > 0) & (x <= top))
        expected = ((decoded.detach() - x * inside) / 2.0)
        (grad,) = torch.autograd.grad(decoded, scale, torch.ones_like(x))
        torch.testing.assert_close(grad, expected.sum())
        saturated = ~inside & ((x.abs() > top) if signed else (x > top))
        assert torch.equal(expected[saturated], (decoded.detach() / 2.0)[saturated])  # the top level


def test_learned_scales_are_trained_and_stored(swin):
    """With learn_scales the scales move from their calibration, the converted model stores them
    (marked learned), and its closed form is the training forward."""
    import copy

    calibration = [grey_task(64, 100)[0]]
    x = grey_task(64, 200)[0]
    loader = [grey_task(64, 300 + i) for i in range(10)]
    calibrated = convert(swin, calibration, SMALL_T)
    tuned, cm = finetune_phase_aware(copy.deepcopy(swin), SMALL_T, loader, calibration, epochs=1, lr=1e-2,
                                     alpha=1.0, progress=False, learn_scales=True)
    assert cm.config["calibration"]["learned"] is True
    moved = [key for key in calibrated.weights if key.startswith("scale.")
             and not torch.allclose(cm.weights[key], calibrated.weights[key], rtol=1e-3)]
    assert moved  # trained, not recalibrated
    student = PhaseAwareModel.from_converted(tuned, cm)
    torch.testing.assert_close(student(x), cm.to_reference("closed")(x), rtol=0, atol=0)
    assert not torch.equal(cm.to_reference("closed")(x), convert(tuned, calibration, SMALL_T).to_reference("closed")(x))


def test_a_few_steps_bring_the_spiking_network_closer_to_its_teacher(swin):
    import copy

    model = copy.deepcopy(swin)
    calibration = [grey_task(64, 100)[0]]
    x = grey_task(64, 200)[0]
    with torch.no_grad():
        teacher = swin(x)
    before = convert(model, calibration, SMALL_T).to_reference("closed")(x)
    loader = [grey_task(64, 300 + i) for i in range(20)]
    tuned, cm = finetune_phase_aware(model, SMALL_T, loader, calibration, epochs=2, lr=1e-3, alpha=1.0,
                                     progress=False)
    after = cm.to_reference("closed")(x)

    def error(logits):
        return float((logits - teacher).norm() / teacher.norm())

    assert error(after) < 0.85 * error(before)
    # the returned converted model is convert() of the tuned ANN, and runs the training forward
    again = convert(tuned, calibration, SMALL_T)
    assert torch.equal(again.to_reference("closed")(x), after)
    torch.testing.assert_close(PhaseAwareModel.from_converted(tuned, cm)(x), after, rtol=0, atol=0)


def test_a_resumed_run_equals_an_uninterrupted_one(swin, tmp_path):
    """Killed in epoch 2 and resumed from its checkpoint: the tuned ANN and its converted model equal
    the uninterrupted run's bit for bit -- the scales are not stored but recalibrated from the
    restored ANN, and epoch 2 must train with them."""
    import copy

    calibration = [grey_task(16, 100)[0]]
    loader = [grey_task(8, 300 + i) for i in range(2)]

    def tune(batches, checkpoint=None):
        return finetune_phase_aware(copy.deepcopy(swin), SMALL_T, batches, calibration, epochs=2, lr=1e-3,
                                    progress=False, checkpoint=checkpoint)

    straight, straight_cm = tune(loader)
    with pytest.raises(KilledError):
        tune(KilledInEpoch(loader), tmp_path)
    tuned, cm = tune(loader, tmp_path)
    assert all(torch.equal(value, straight.state_dict()[key]) for key, value in tuned.state_dict().items())
    assert cm.weights.keys() == straight_cm.weights.keys()
    assert all(torch.equal(cm.weights[key], straight_cm.weights[key]) for key in cm.weights)


def test_bad_arguments_are_refused(swin):
    with pytest.raises(TypeError, match="code must be a PhaseCode"):
        finetune_phase_aware(swin, (1.6, 6), [], [])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        finetune_phase_aware(swin, SMALL_T, [], [], epochs=0)
