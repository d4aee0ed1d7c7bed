"""Tests for lava_spikedattn.ann: Swin/BERT preparation, checks and fine-tuning."""

import copy

import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from tiny_models import tiny_bert_config, tiny_swin_config
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.activations import GELUActivation
from transformers.models.bert.modeling_bert import BertSelfAttention

from lava_spikedattn.ann import (
    ChannelBatchNorm,
    RunningAffineNorm,
    UnsupportedModuleError,
    check_prepared,
    finetune,
    prepare_bert,
    prepare_swin,
)


def tiny_swin(in_chans: int = 3, num_classes: int = 10) -> SwinTransformer:
    return SwinTransformer(**tiny_swin_config(img_size=32, embed_dim=32, in_chans=in_chans, num_classes=num_classes))


def bert_config() -> BertConfig:
    return BertConfig(**tiny_bert_config(vocab_size=100, hidden_size=64, max_position_embeddings=32))


def count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


# --- Swin -------------------------------------------------------------------------------


def test_prepare_swin_tiny():
    torch.manual_seed(0)
    model = tiny_swin()
    prepared = prepare_swin(model)

    assert count(prepared, nn.LayerNorm) == 0
    assert count(prepared, nn.GELU) == 0
    # patch_embed.norm + 4 blocks x (norm1, norm2, mlp.norm) + 1 PatchMerging + final norm
    assert count(prepared, ChannelBatchNorm) == 1 + 4 * 3 + 1 + 1
    assert isinstance(prepared.patch_embed.norm, ChannelBatchNorm)
    assert isinstance(prepared.norm, ChannelBatchNorm)
    assert prepared.norm.num_features == 64
    assert isinstance(prepared.layers[1].downsample.norm, ChannelBatchNorm)
    assert prepared.layers[1].downsample.norm.num_features == 4 * 32
    for stage in prepared.layers:
        for block in stage.blocks:
            assert isinstance(block.norm1, ChannelBatchNorm) and isinstance(block.norm2, ChannelBatchNorm)
            assert isinstance(block.mlp.act, nn.ReLU)
            assert isinstance(block.mlp.norm, ChannelBatchNorm)
            assert block.mlp.norm.num_features == block.mlp.fc1.out_features
            assert isinstance(block.attn, WindowAttention)
    # gamma/beta come from the LayerNorm
    torch.testing.assert_close(prepared.layers[0].blocks[1].norm2.weight, model.layers[0].blocks[1].norm2.weight)

    x = torch.randn(2, 3, 32, 32)
    assert prepared(x).shape == (2, 10)
    prepared.eval()
    with torch.no_grad():
        assert prepared(x).shape == (2, 10)

    # the original is untouched (it is the distillation teacher)
    assert count(model, nn.LayerNorm) == 1 + 4 * 2 + 1 + 1
    assert count(model, nn.GELU) == 4
    assert count(model, ChannelBatchNorm) == 0


def test_prepare_swin_keeps_attention():
    torch.manual_seed(0)
    model = tiny_swin().eval()
    prepared = prepare_swin(model).eval()
    for stage, stage_p in zip(model.layers, prepared.layers):
        for block, block_p in zip(stage.blocks, stage_p.blocks):
            for key, value in block.attn.state_dict().items():
                torch.testing.assert_close(block_p.attn.state_dict()[key], value)
            assert not block_p.attn.fused_attn
            # the shifted blocks' window mask is kept
            if block.attn_mask is not None:
                torch.testing.assert_close(block_p.attn_mask, block.attn_mask)
            num_windows = 1 if block.attn_mask is None else block.attn_mask.shape[0]
            windows = torch.randn(2 * num_windows, block.attn.window_area, block.attn.dim)
            with torch.no_grad():
                torch.testing.assert_close(
                    block_p.attn(windows, mask=block.attn_mask), block.attn(windows, mask=block.attn_mask)
                )


def test_channel_batchnorm_formula():
    torch.manual_seed(0)
    bn = ChannelBatchNorm(8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 4, 4, 8)
    bn.eval()
    expected = bn.weight * (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias
    torch.testing.assert_close(bn(x), expected)

    # training: statistics over every axis but the last one
    bn.train()
    out = bn(x)
    mean = x.mean(dim=(0, 1, 2))
    var = x.var(dim=(0, 1, 2), unbiased=False)
    torch.testing.assert_close(out, bn.weight * (x - mean) / torch.sqrt(var + bn.eps) + bn.bias)
    # the first training batch sets the running statistics, later ones blend in with momentum
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, x.reshape(-1, 8).var(dim=0))
    x2 = torch.randn(3, 5, 8) + 1.0
    bn(x2)
    torch.testing.assert_close(bn.running_mean, 0.9 * mean + 0.1 * x2.mean(dim=(0, 1)))


def test_prepare_swin_full_size():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    prepared = prepare_swin(model).eval()
    assert count(prepared, nn.LayerNorm) == 0
    # patch_embed + 12 blocks x 3 + 3 PatchMerging + final norm
    assert count(prepared, ChannelBatchNorm) == 1 + 12 * 3 + 3 + 1
    with torch.no_grad():
        out = prepared(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


# --- BERT -------------------------------------------------------------------------------


def test_prepare_bert_tiny():
    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config())
    prepared = prepare_bert(model)

    assert count(prepared, nn.LayerNorm) == 0
    assert count(prepared, nn.Tanh) == 0
    assert not any("GELU" in type(m).__name__ for m in prepared.modules())
    assert count(prepared, RunningAffineNorm) == 1 + 2 * 2
    assert prepared.config.hidden_act == "relu"
    for layer in prepared.bert.encoder.layer:
        assert isinstance(layer.intermediate.intermediate_act_fn, nn.ReLU)
        assert isinstance(layer.attention.self, BertSelfAttention)
    assert isinstance(prepared.bert.pooler.activation, nn.ReLU)
    torch.testing.assert_close(prepared.bert.embeddings.LayerNorm.weight, model.bert.embeddings.LayerNorm.weight)

    input_ids = torch.randint(1, 100, (2, 8))
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[0, 5:] = 0
    assert prepared(input_ids=input_ids, attention_mask=attention_mask).logits.shape == (2, 2)

    # original untouched
    assert count(model, nn.LayerNorm) == 5
    assert model.config.hidden_act == "gelu"
    assert count(model, RunningAffineNorm) == 0


def test_prepare_bert_mask_excludes_padding():
    torch.manual_seed(0)
    prepared = prepare_bert(BertModel(bert_config())).eval()
    input_ids = torch.randint(1, 100, (1, 5))
    padded = torch.cat([input_ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        short = prepared(input_ids=input_ids, attention_mask=torch.ones(1, 5, dtype=torch.long))
        long = prepared(input_ids=padded, attention_mask=mask)
    torch.testing.assert_close(long.last_hidden_state[:, :5], short.last_hidden_state)
    torch.testing.assert_close(long.pooler_output, short.pooler_output)


def test_running_affine_norm_formula():
    torch.manual_seed(0)
    norm = RunningAffineNorm(6, momentum=0.1)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 5, 6) * 2.0

    norm.train()
    out = norm(x)
    phi = x.pow(2).mean(dim=(0, 1))
    torch.testing.assert_close(out, norm.weight * x / torch.sqrt(phi + norm.eps) + norm.bias)
    torch.testing.assert_close(norm.running_phi, phi)  # first batch sets phi
    x2 = torch.randn(4, 6)
    norm(x2)
    torch.testing.assert_close(norm.running_phi, 0.9 * phi + 0.1 * x2.pow(2).mean(dim=0))

    norm.eval()
    running = norm.running_phi.clone()
    expected = norm.weight * x / torch.sqrt(running + norm.eps) + norm.bias
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm.running_phi, running)  # frozen in eval


# --- errors -----------------------------------------------------------------------------


def test_check_prepared_unprepared_swin():
    with pytest.raises(UnsupportedModuleError, match=r"model\.patch_embed\.norm: LayerNorm"):
        check_prepared(tiny_swin())


def test_check_prepared_gelu_and_unknown_attention():
    prepared = prepare_swin(tiny_swin())
    broken = copy.deepcopy(prepared)
    broken.layers[0].blocks[1].mlp.act = nn.GELU()
    with pytest.raises(UnsupportedModuleError, match=r"model\.layers\.0\.blocks\.1\.mlp\.act: GELU .*nn\.ReLU"):
        check_prepared(broken)

    class FancyAttention(nn.Module):
        pass

    broken = copy.deepcopy(prepared)
    broken.layers[1].blocks[0].attn = FancyAttention()
    with pytest.raises(UnsupportedModuleError, match=r"model\.layers\.1\.blocks\.0\.attn: .*FancyAttention"):
        check_prepared(broken)

    bert = prepare_bert(BertForSequenceClassification(bert_config()))
    bert.bert.pooler.activation = nn.Tanh()
    with pytest.raises(UnsupportedModuleError, match=r"model\.bert\.pooler\.activation: Tanh"):
        check_prepared(bert)
    bert = prepare_bert(BertModel(bert_config()))
    bert.encoder.layer[1].intermediate.intermediate_act_fn = GELUActivation()
    with pytest.raises(
        UnsupportedModuleError, match=r"model\.encoder\.layer\.1\.intermediate\.intermediate_act_fn: GELUActivation"
    ):
        check_prepared(bert)


def test_wrong_family():
    with pytest.raises(TypeError, match="Sequential"):
        prepare_swin(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="SwinTransformer"):
        prepare_bert(tiny_swin())
    with pytest.raises(TypeError, match=r"Linear.*supported: .*SwinTransformer"):
        check_prepared(nn.Linear(2, 2))


# --- finetune ---------------------------------------------------------------------------


def _images(n: int = 64):
    """Separable noisy images: class 0 is darker (mean -0.5), class 1 brighter (mean +0.5)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 32, 32, generator=g) + 0.5 * (2 * y - 1).float()[:, None, None, None]
    return x, y


def _image_loader(x, y, batch: int = 16):
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def _eval_ce(model, x, y):
    with torch.no_grad():
        logits = model.eval()(x)
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


@pytest.fixture(scope="module")
def trained_swin():
    torch.manual_seed(0)
    x, y = _images()
    student = prepare_swin(tiny_swin(in_chans=1, num_classes=2))
    before, _ = _eval_ce(student, x, y)
    student = finetune(student, _image_loader(x, y), epochs=10, lr=1e-3, max_steps=24, progress=False)
    return student, before, x, y


def test_finetune_without_teacher(trained_swin):
    student, before, x, y = trained_swin
    assert not student.training
    after, accuracy = _eval_ce(student, x, y)
    assert after < 0.5 * before
    assert accuracy >= 0.9


def test_finetune_with_teacher(trained_swin):
    teacher, _, x, y = trained_swin
    torch.manual_seed(1)
    student = prepare_swin(tiny_swin(in_chans=1, num_classes=2))
    before, _ = _eval_ce(student, x, y)
    student = finetune(
        student, _image_loader(x, y), teacher=teacher, epochs=10, lr=1e-3, alpha=0.7, max_steps=24, progress=False
    )
    assert not student.training and not teacher.training
    after, accuracy = _eval_ce(student, x, y)
    assert after < 0.5 * before
    assert accuracy >= 0.9


def test_finetune_bert_dict_loader():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, length = 48, 8
    labels = torch.arange(n) % 2
    # class 0 uses tokens 1..49, class 1 tokens 50..98; the last two positions are padding
    input_ids = torch.randint(1, 50, (n, length), generator=g) + 49 * labels[:, None]
    attention_mask = torch.ones(n, length, dtype=torch.long)
    attention_mask[:, -2:] = 0
    input_ids[:, -2:] = 0
    batches = [
        {"input_ids": input_ids[i:i + 16], "attention_mask": attention_mask[i:i + 16], "labels": labels[i:i + 16]}
        for i in range(0, n, 16)
    ]

    def loss(model):
        with torch.no_grad():
            logits = model.eval()(input_ids=input_ids, attention_mask=attention_mask).logits
        return nn.functional.cross_entropy(logits, labels).item()

    # the usual flow: fine-tune the original (teacher), prepare a copy, distil into it
    teacher = finetune(BertForSequenceClassification(bert_config()), batches, epochs=10, lr=1e-3,
                       max_steps=24, progress=False)
    student = prepare_bert(teacher)
    before = loss(student)
    student = finetune(student, batches, teacher=teacher, epochs=10, lr=1e-3, max_steps=24, progress=False)
    assert not student.training
    assert loss(student) < 0.5 * before
