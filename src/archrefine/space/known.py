"""Classic architectures written in the grounded space, each within 15 tokens.

Scaled to the space (widths 16-128, 32x32 inputs), but keeping each design's signature:
LeNet's valid convolutions and tanh, VGG's stacked 3x3 convolutions, NiN's 1x1 "mlpconv" and
global pooling, ResNet's identity skips, MobileNet's depthwise convolutions, and so on. They
seed template mutation and anchor novelty ("how far from anything published").
"""

from __future__ import annotations

import numpy as np

from .vocab import LENGTH, token_id

__all__ = ["KNOWN", "KNOWN_ARRAY", "KNOWN_CITATIONS"]

_KNOWN_WORDS: dict[str, tuple[str, str]] = {
    "lenet5": (
        "conv5v_16 tanh avgpool2 conv5v_16 tanh avgpool2 flatten linear_128 tanh linear_64 "
        "tanh head",
        "LeCun, Bottou, Bengio & Haffner (1998), Gradient-based learning applied to document "
        "recognition, Proc. IEEE",
    ),
    "mlp": (
        "flatten linear_128 relu linear_64 relu head",
        "Rumelhart, Hinton & Williams (1986), Learning representations by back-propagating "
        "errors, Nature",
    ),
    "dropout_mlp": (
        "flatten dropout linear_128 relu dropout linear_128 relu dropout head",
        "Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout, JMLR",
    ),
    "alexnet": (
        "patch4_64 relu conv3_64 relu maxpool2 conv3_64 relu conv3_64 relu maxpool2 flatten "
        "dropout linear_128 relu head",
        "Krizhevsky, Sutskever & Hinton (2012), ImageNet classification with deep "
        "convolutional neural networks, NeurIPS",
    ),
    "vgg": (
        "conv3_32 relu conv3_32 relu maxpool2 conv3_64 relu conv3_64 relu maxpool2 flatten "
        "linear_128 relu dropout head",
        "Simonyan & Zisserman (2015), Very deep convolutional networks for large-scale image "
        "recognition, ICLR",
    ),
    "nin": (
        "conv3_64 relu conv1_64 relu maxpool2 dropout conv3_64 relu conv1_64 relu gap head",
        "Lin, Chen & Yan (2014), Network in network, ICLR",
    ),
    "allconv": (
        "conv3_32 relu conv3s2_64 relu conv3_64 relu conv3s2_64 relu conv1_64 relu conv1_16 "
        "relu gap head",
        "Springenberg, Dosovitskiy, Brox & Riedmiller (2015), Striving for simplicity: the all "
        "convolutional net, ICLR workshop",
    ),
    "resnet": (
        "conv3_32 batchnorm relu res_open conv3_32 batchnorm relu conv3_32 batchnorm "
        "res_close relu gap head",
        "He, Zhang, Ren & Sun (2016), Deep residual learning for image recognition, CVPR",
    ),
    "preact_resnet": (
        "conv3_32 res_open batchnorm relu conv3_32 batchnorm relu conv3_32 res_close "
        "batchnorm relu gap head",
        "He, Zhang, Ren & Sun (2016), Identity mappings in deep residual networks, ECCV",
    ),
    "gn_resnet": (
        "conv3_32 groupnorm relu res_open conv3_32 groupnorm relu conv3_32 groupnorm "
        "res_close relu gap head",
        "Wu & He (2018), Group normalization, ECCV",
    ),
    "senet": (
        "conv3_32 batchnorm relu res_open conv3_32 batchnorm relu conv3_32 batchnorm se "
        "res_close relu gap head",
        "Hu, Shen & Sun (2018), Squeeze-and-excitation networks, CVPR",
    ),
    "squeezenet": (
        "conv3_64 relu maxpool2 conv1_16 relu conv3_64 relu maxpool2 conv1_16 relu conv3_64 "
        "relu dropout gap head",
        "Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer (2016), SqueezeNet, arXiv:1602.07360",
    ),
    "mobilenet": (
        "conv3_32 batchnorm relu dwconv3 batchnorm relu conv1_64 batchnorm relu sepconv3_64 "
        "batchnorm relu gap head",
        "Howard et al. (2017), MobileNets: efficient convolutional neural networks for mobile "
        "vision applications, arXiv:1704.04861",
    ),
    "mobilenet_v2": (
        "conv3_16 batchnorm relu res_open conv1_64 batchnorm relu dwconv3 batchnorm relu "
        "conv1_16 res_close gap head",
        "Sandler, Howard, Zhu, Zhmoginov & Chen (2018), MobileNetV2: inverted residuals and "
        "linear bottlenecks, CVPR",
    ),
    "efficientnet": (
        "conv3_16 batchnorm silu res_open conv1_64 silu dwconv3 silu se conv1_16 batchnorm "
        "res_close gap head",
        "Tan & Le (2019), EfficientNet: rethinking model scaling for convolutional neural "
        "networks, ICML",
    ),
    "xception": (
        "conv3_32 batchnorm relu res_open sepconv3_64 batchnorm relu sepconv3_64 batchnorm "
        "res_close relu gap head",
        "Chollet (2017), Xception: deep learning with depthwise separable convolutions, CVPR",
    ),
    "nonlocal": (
        "conv3_32 batchnorm relu maxpool2 res_open attn res_close conv3_64 batchnorm relu gap head",
        "Wang, Girshick, Gupta & He (2018), Non-local neural networks, CVPR",
    ),
    "vit": (
        "patch4_64 res_open layernorm attn res_close res_open layernorm conv1_64 gelu conv1_64 "
        "res_close layernorm gap head",
        "Dosovitskiy et al. (2021), An image is worth 16x16 words: transformers for image "
        "recognition at scale, ICLR",
    ),
    "convnext": (
        "patch4_64 layernorm res_open dwconv3 layernorm conv1_64 gelu conv1_64 res_close "
        "layernorm gap head",
        "Liu, Mao, Wu, Feichtenhofer, Darrell & Xie (2022), A ConvNet for the 2020s, CVPR",
    ),
}


def _encode(words: str) -> tuple[int, ...]:
    ids = [token_id(w) for w in words.split()]
    if len(ids) > LENGTH:
        raise ValueError(f"{words!r} has {len(ids)} tokens, more than {LENGTH}")
    return tuple(ids) + (0,) * (LENGTH - len(ids))


KNOWN: dict[str, tuple[int, ...]] = {name: _encode(w) for name, (w, _) in _KNOWN_WORDS.items()}
"""Name -> sequence of LENGTH token ids, padded with no-ops."""

KNOWN_CITATIONS: dict[str, str] = {name: cite for name, (_, cite) in _KNOWN_WORDS.items()}
"""Name -> one-line citation of the paper the architecture comes from."""


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


KNOWN_ARRAY: np.ndarray = _read_only(np.array(list(KNOWN.values()), dtype=np.int64))
"""KNOWN's sequences stacked in insertion order, shape (len(KNOWN), LENGTH); read-only."""
