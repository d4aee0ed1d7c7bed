"""Train, convert and evaluate the shipped spiking ViT on Fashion-MNIST (seeded, CPU).

Run from the repository root::

    .venv/bin/python weights/make_vit_fashion.py

The steps are ``fashion_recipe.make``'s. Writes ``weights/vit_fashion_mnist/`` (the converted
model), ``weights/vit_fashion_mnist_ann.safetensors`` (the prepared ANN) and
``weights/vit_fashion_mnist_metrics.json``.
"""

from fashion_recipe import Recipe, make

# timm builder name; the kwargs override all its defaults: the 28x28 images as they are, 7x7
# patches of 4x4 pixels plus the class token (50 tokens), 4 blocks of width 48 with 3 heads.
VIT = Recipe(
    stem="vit_fashion_mnist", family="vit", model_name="vit_tiny_patch16_224",
    model_kwargs={"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 48, "depth": 4,
                  "num_heads": 3, "mlp_ratio": 2.0, "drop_path_rate": 0.0},
    epochs=10, lr=1e-3)

if __name__ == "__main__":
    make(VIT)
