"""Train, convert and evaluate the shipped spiking Swin on Fashion-MNIST (seeded, CPU).

Run from the repository root::

    .venv/bin/python weights/make_swin_fashion.py

The steps are ``fashion_recipe.make``'s. Writes ``weights/swin_fashion_mnist/`` (the converted
model), ``weights/swin_fashion_mnist_ann.safetensors`` (the prepared ANN) and
``weights/swin_fashion_mnist_metrics.json``.
"""

from fashion_recipe import Recipe, make

# timm builder name; the kwargs override all its defaults (8x8 tokens of 4x4 pixels, two stages:
# 2x2 windows of 4x4 tokens with shifted windows, then one 4x4 window after patch merging).
SWIN = Recipe(
    stem="swin_fashion_mnist", family="swin", model_name="swin_tiny_patch4_window7_224",
    model_kwargs={"img_size": 32, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 32,
                  "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "mlp_ratio": 2.0, "drop_path_rate": 0.0},
    epochs=6, lr=2e-3)

if __name__ == "__main__":
    make(SWIN)
