"""ConvBlock, PatchEmbedding, DownBlock and UpBlock."""
import keras
import numpy as np
import pytest

from layers.conv_block import ConvBlock
from layers.patch_embedding import PatchEmbedding
from layers.unet_blocks import DownBlock, UpBlock
from tests.layers.testing import run_layer_test

rng = np.random.default_rng(0)
IMAGES = rng.normal(size=(2, 8, 8, 3)).astype("float32")  # (B, H, W, C)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


# --- ConvBlock --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"filters": 4}, (2, 8, 8, 4)),
        ({"filters": 4, "strides": 2, "norm": "layer", "residual": True, "dropout": 0.1}, (2, 4, 4, 4)),
        ({"filters": 3, "norm": None, "residual": True, "num_convs": 1}, (2, 8, 8, 3)),
    ],
)
def test_conv_block_run_layer_test(kwargs, shape, tmp_path):
    run_layer_test(ConvBlock, kwargs, IMAGES, expected_output_shape=shape, tmp_path=tmp_path)


def test_conv_block_structure():
    block = ConvBlock(4, num_convs=3, residual=True)
    block(IMAGES)
    assert [c.strides for c in block.convs] == [(1, 1)] * 3
    assert block.projection is not None  # 3 channels -> 4 needs a projection
    assert not any(c.use_bias for c in block.convs)  # batch norm supplies the shift

    same = ConvBlock(3, residual=True)
    same(IMAGES)
    assert same.projection is None  # identity shortcut when shapes agree


def test_conv_block_residual_path_adds_the_input():
    """With the conv path zeroed, a residual block returns its input (or its projection)."""
    plain = ConvBlock(3, norm=None, residual=True, activation="linear")
    plain(IMAGES)
    for conv in plain.convs:
        conv.kernel.assign(np.zeros(conv.kernel.shape))
    np.testing.assert_allclose(to_numpy(plain(IMAGES)), IMAGES, atol=1e-6)

    strided = ConvBlock(5, strides=2, norm=None, residual=True, activation="linear")
    strided(IMAGES)
    for conv in strided.convs:
        conv.kernel.assign(np.zeros(conv.kernel.shape))
    expected = to_numpy(strided.projection(IMAGES))
    np.testing.assert_allclose(to_numpy(strided(IMAGES)), expected, atol=1e-6)
    assert expected.shape == (2, 4, 4, 5)

    no_residual = ConvBlock(3, norm=None, activation="linear")
    no_residual(IMAGES)
    for conv in no_residual.convs:
        conv.kernel.assign(np.zeros(conv.kernel.shape))
    np.testing.assert_allclose(to_numpy(no_residual(IMAGES)), 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 0}, "filters must be a positive int; received filters=0"),
        ({"filters": 4, "norm": "group"}, "norm must be one of .*received norm='group'"),
        ({"filters": 4, "dropout": 1.0}, r"dropout must be in \[0, 1\); received dropout=1.0"),
    ],
)
def test_conv_block_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvBlock(**kwargs)


# --- PatchEmbedding ---------------------------------------------------------------


@pytest.mark.parametrize("use_class_token, tokens", [(True, 5), (False, 4)])
def test_patch_embedding_run_layer_test(use_class_token, tokens, tmp_path):
    run_layer_test(
        PatchEmbedding,
        {"patch_size": 4, "hidden_dim": 6, "use_class_token": use_class_token},
        IMAGES,
        expected_output_shape=(2, tokens, 6),
        tmp_path=tmp_path,
    )


def test_patch_embedding_values():
    """Each token is the projection of its own patch (row-major) plus its position."""
    layer = PatchEmbedding(patch_size=4, hidden_dim=6)
    out = to_numpy(layer(IMAGES))
    kernel = to_numpy(layer.projection.kernel).reshape(-1, 6)  # (p*p*C, D)
    bias = to_numpy(layer.projection.bias)
    position = to_numpy(layer.position_embedding)[0]
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(to_numpy(layer.class_token)[0, 0] + position[0], (2, 6)), atol=1e-6)
    for index, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        patch = IMAGES[:, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4, :].reshape(2, -1)
        np.testing.assert_allclose(out[:, index + 1], patch @ kernel + bias + position[index + 1], atol=1e-5)


def test_patch_embedding_rejects_indivisible_images():
    with pytest.raises(ValueError, match=r"multiples of patch_size; received image size=\(8, 6\), patch_size=4"):
        PatchEmbedding(patch_size=4, hidden_dim=6)(np.zeros((1, 8, 6, 3), "float32"))


# --- U-Net blocks -----------------------------------------------------------------


def test_down_up_round_trip_shape():
    images = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    down1, skip1 = DownBlock(4)(images)
    down2, skip2 = DownBlock(8)(down1)
    assert down1.shape == (2, 8, 8, 4) and skip1.shape == (2, 16, 16, 4)
    assert down2.shape == (2, 4, 4, 8) and skip2.shape == (2, 8, 8, 8)
    bottom = ConvBlock(16)(down2)
    up2 = UpBlock(8)(bottom, skip2)
    up1 = UpBlock(4)(up2, skip1)
    assert up2.shape == (2, 8, 8, 8)
    assert up1.shape == images.shape[:3] + (4,)


def test_down_block_skip_is_the_pre_pooling_map():
    block = DownBlock(4, norm=None)
    down, skip = block(IMAGES)
    np.testing.assert_allclose(to_numpy(skip), to_numpy(block.conv_block(IMAGES)), atol=1e-6)
    np.testing.assert_allclose(to_numpy(down), to_numpy(skip).reshape(2, 4, 2, 4, 2, 4).max(axis=(2, 4)), atol=1e-6)


def test_down_block_run_layer_test(tmp_path):
    run_layer_test(DownBlock, {"filters": 4, "norm": "layer"}, IMAGES, expected_output_shape=(2, 4, 4, 4), tmp_path=tmp_path)


def test_up_block_run_layer_test(tmp_path):
    low = rng.normal(size=(2, 4, 4, 6)).astype("float32")
    run_layer_test(UpBlock, {"filters": 4}, [low, IMAGES], expected_output_shape=(2, 8, 8, 4), tmp_path=tmp_path)


def test_up_block_rejects_mismatched_skip():
    with pytest.raises(ValueError, match=r"skip must have twice the height and width of x; received x shape=\(2, 4, 4, 6\), skip shape=\(2, 6, 6, 3\)"):
        UpBlock(4)(np.zeros((2, 4, 4, 6), "float32"), np.zeros((2, 6, 6, 3), "float32"))


def test_down_block_rejects_odd_images():
    with pytest.raises(ValueError, match=r"height and width must be even; received input shape=\(1, 7, 8, 3\)"):
        DownBlock(4)(np.zeros((1, 7, 8, 3), "float32"))
