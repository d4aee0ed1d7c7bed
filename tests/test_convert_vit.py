"""Conversion of timm ViT and DeiT (lava_spikedattn.models.vit): preparation, folding (class and
distillation tokens, position embedding, layer scale, final norms), both reference engines, the
Lava network (fused, decomposed, fixed point), energy bookkeeping, the command line, and what is
refused."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from synthetic import grey_task
from tiny_models import PAPER_CODE, prepared_vit, tiny_vit_config, train_tiny_vit
from torch.utils.flop_counter import FlopCounterMode

from lava_spikedattn.ann import UnsupportedModuleError, check_prepared, prepare_vit
from lava_spikedattn.builder import build_lava_network
from lava_spikedattn.coding import PhaseCode
from lava_spikedattn.convert import convert
from lava_spikedattn.converted_model import ConvertedModel
from lava_spikedattn.fixed_point import FixedFormat
from lava_spikedattn.models import family_for_model_name, family_of

SAME = 1e-9  # engines and Lava against the stepped reference, float64
# Variants: (timm name, overrides of tiny_vit_config): the class token, DeiT's distillation token,
# average pooling with fc_norm, register tokens with the position embedding on patches only,
# layer scale and a pre-norm.
VARIANTS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {}),
    "avg-pool": ("vit_tiny_patch16_224", {"global_pool": "avg"}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2, "no_embed_class": True, "init_values": 0.5,
                                           "pre_norm": True}),
}


def calibrated(name: str, overrides: dict) -> torch.nn.Module:
    """A float64 prepared tiny ViT whose BatchNorms hold the statistics of one random batch."""
    model = prepared_vit(name, {**tiny_vit_config(), **overrides}).double().train()
    with torch.no_grad():
        model(inputs(16, 0))
    return model.eval()


def inputs(n: int, seed: int) -> torch.Tensor:
    return grey_task(n, seed)[0].double()


@pytest.fixture(scope="module")
def trained():
    """The tiny ViT trained 30 steps on synthetic.grey_task (real margins), float32, eval mode."""
    return train_tiny_vit(tiny_vit_config(), (grey_task(64, step) for step in range(30)), lr=3e-3)


# --- reference engines ----------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["exact", "official"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_folded_network_and_engines(variant, convention, tmp_path):
    model = calibrated(*VARIANTS[variant])
    x = inputs(6, 1)
    cm = convert(model, [x], PhaseCode(1.15, 40, convention))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(cm.to_reference("ann")(x), expected, rtol=SAME, atol=SAME)
    loaded = ConvertedModel.load(cm.save(tmp_path / "vit"))
    closed, stepped = loaded.to_reference("closed")(x), loaded.to_reference("stepped")(x)
    torch.testing.assert_close(closed, stepped, rtol=SAME, atol=SAME * float(stepped.abs().max()))
    assert not torch.equal(closed, expected)  # the spiking network rounds, the ANN does not


def test_layer_graph_and_per_token_bias():
    model = calibrated(*VARIANTS["deit-distilled"])
    config = tiny_vit_config()
    depth, tokens = config["depth"], 2 + (16 // config["patch_size"]) ** 2
    exact = convert(model, [inputs(4, 0)], PAPER_CODE)
    official = convert(model, [inputs(4, 0)], PhaseCode(1.15, 40, "official"))
    assert (exact.n_layers, official.n_layers) == (7 * depth + 2, 10 * depth + 3)
    assert exact.steps_per_inference == exact.n_layers * 40
    # the class and distillation tokens (with their positions) are the input layer's bias rows
    bias = exact.weights["patch_embed.bias"]
    assert bias.shape == (tokens, config["embed_dim"])
    position = model.pos_embed[0].detach()
    a = model.norm_pre  # Identity: no pre-norm
    assert isinstance(a, torch.nn.Identity)
    torch.testing.assert_close(bias[0], model.cls_token[0, 0].detach() + position[0])
    torch.testing.assert_close(bias[1], model.dist_token[0, 0].detach() + position[1])


def test_trained_vit_keeps_its_decisions(trained):
    x, _ = grey_task(64, 100)
    cm = convert(trained, [grey_task(64, 101)[0]], PAPER_CODE)
    with torch.no_grad():
        ann = trained(x)
    snn = cm.to_reference("closed")(x)
    assert float((snn.argmax(1) == ann.argmax(1)).float().mean()) >= 0.9
    assert float(F.cosine_similarity(snn, ann, dim=1).mean()) >= 0.98


# --- Lava -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("variant", "convention"), [("deit-distilled", "exact"), ("avg-pool", "official")])
def test_lava_fused_and_decomposed_equal_the_stepped_reference(variant, convention):
    model = calibrated(*VARIANTS[variant])
    cm = convert(model, [inputs(8, 0)], PhaseCode(1.15, 16, convention))
    x = inputs(2, 2)
    reference = cm.to_reference("stepped")(x)
    for mode in ("fused", "decomposed"):
        with build_lava_network(cm, mode=mode) as net:
            logits = net.run(x)
        torch.testing.assert_close(logits, reference, rtol=SAME, atol=SAME * float(reference.abs().max()))


def test_integer_network_keeps_the_float_class(trained):
    cm = convert(trained, [grey_task(64, 101)[0]], PhaseCode(1.15, 16))
    x = grey_task(32, 102)[0].double()
    float_logits = cm.to_reference("stepped")(x)
    net = build_lava_network(cm, fixed_format=FixedFormat())
    integer = net.simulate(x)
    assert float((integer.argmax(1) == float_logits.argmax(1)).float().mean()) >= 0.9
    assert not torch.equal(integer, float_logits)
    with net:  # the Lava fixed_pt models give simulate's logits
        torch.testing.assert_close(net.run(x[:2]), integer[:2], rtol=0, atol=0)


# --- energy -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["deit-distilled", "avg-pool"])
def test_synapses_count_the_models_products(variant):
    model = calibrated(*VARIANTS[variant])
    x = inputs(2, 3)
    snn = convert(model, [x], PhaseCode(1.25, 12, "official")).to_reference("closed")
    rows = snn.synapses(x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    products = ("patch_embed", "qkv", "qk", "av", "proj", "fc1", "fc2", "head")
    assert sum(r.macs for r in rows if r.name.split(".")[-1] in products) == counter.get_total_flops() // 2
    layers = {layer.name for layer in snn.layers} | {"input"}
    assert {t for r in rows for t in r.targets} == layers - {"input"}
    assert {s for r in rows for s in r.sources} == layers - {"last_fc"}


# --- real size, command line, refusals ----------------------------------------------------------------------
def test_full_size_vit_small_converts_and_runs_one_image():
    torch.manual_seed(0)
    model = prepare_vit(timm.create_model("vit_small_patch16_224", pretrained=False)).eval()
    cm = convert(model, [torch.randn(2, 3, 224, 224)], PAPER_CODE)
    assert (cm.n_layers, cm.steps_per_inference) == (86, 86 * 40)  # 1 + 12·7 + 1 read-out
    logits = cm.to_reference("closed")(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and bool(torch.isfinite(logits).all())


def test_command_line_converts_and_evaluates_a_vit(tmp_path):
    from lava_spikedattn.cli import main

    config = tiny_vit_config()
    kwargs = {key: config[key] for key in ("patch_size", "embed_dim", "depth", "num_heads")}
    out = tmp_path / "vit"
    argv = ["convert", "--model", "deit_tiny_distilled_patch16_224", "--num-classes", "4", "--img-size", "16",
            "--in-chans", "1", "--model-kwargs", json.dumps(kwargs), "--data", "random", "--calib-batches", "1",
            "--batch-size", "4", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    cm = ConvertedModel.load(out)
    assert cm.config["family"] == "vit" and cm.config["architecture"]["head_tokens"] == 2
    report = tmp_path / "report.json"
    assert main(["evaluate", str(out), "--data", "random", "--limit", "4", "--batch-size", "4", "--json",
                 str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["samples"] == 4
    assert family_for_model_name("vit_small_patch16_224").name == "vit"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"qk_norm": True}, r"blocks\.0\.attn\.q_norm: a norm inside the attention"),
    ({"global_pool": "map"}, r"model\.attn_pool: attention class AttentionPoolLatent"),
    ({"global_pool": "max"}, r"global_pool 'max' is not supported; supported: token, avg"),
    ({"dynamic_img_size": True}, r"dynamic image size is not supported"),
])
def test_unsupported_variants_are_refused_by_name(overrides, message):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**tiny_vit_config(), **overrides})
    with pytest.raises((ValueError, UnsupportedModuleError), match=message):
        convert(prepare_vit(model).eval(), [inputs(2, 0).float()], PAPER_CODE)


def test_unprepared_vit_is_refused_with_the_fix():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **tiny_vit_config())
    with pytest.raises(UnsupportedModuleError, match=r"model\.blocks\.0\.norm1: LayerNorm .*prepare_vit\(\)"):
        check_prepared(model)
    assert family_of(prepare_vit(model)).name == "vit"
    with pytest.raises(TypeError, match="expects a timm VisionTransformer"):
        prepare_vit(torch.nn.Linear(2, 2))
