"""The encoder's learned part: its shape and cost, the composed encoder, and the per-position truth."""
import numpy as np
import pytest
from PIL import Image

from training.adapter import build_adapter, cell_truth, conv_macs, learned_encoder
from training.model import build_trunk
from training.train import TrainConfig


@pytest.fixture(scope="module")
def trunk():
    return build_trunk("random:7", "mixed2")


def small_maps(rng, images=6):
    return (rng.uniform(0, 1e-3, size=(images, 35, 35, 12)).astype(np.float16),
            rng.uniform(0, 1e-4, size=(images, 8, 8, 20)).astype(np.float16))


def test_the_adapter_brings_the_early_map_to_the_grid_and_costs_what_its_convolutions_cost():
    tap, top = small_maps(np.random.default_rng(0))
    adapter = build_adapter(tap, top, channels=8)
    features = np.asarray(adapter([tap.astype(np.float32), top.astype(np.float32)]))
    assert features.shape == (6, 64, 16) and (features >= 0).all()
    # 1x1 12->6 on 35x35, 3x3/2 6->8 to 17x17, 3x3/2 8->8 to 8x8, and 1x1 20->8 on the last map.
    assert conv_macs(adapter) == 35 * 35 * 6 * 12 + 17 * 17 * 8 * 9 * 6 + 8 * 8 * 8 * 9 * 8 + 8 * 8 * 8 * 20


def test_the_maps_are_standardised_by_the_training_maps_statistics():
    tap, top = small_maps(np.random.default_rng(1))
    adapter = build_adapter(tap, top, channels=8)
    norm = adapter.get_layer("tap_norm")
    standardised = np.asarray(norm(tap.astype(np.float32))).reshape(-1, 12)
    np.testing.assert_allclose(standardised.mean(0), 0, atol=0.05)
    np.testing.assert_allclose(standardised.std(0), 1, atol=0.05)


def test_the_trunk_gives_the_tapped_and_last_maps_and_the_encoder_composes_it_with_the_adapter(trunk):
    image = np.random.default_rng(2).uniform(-1, 1, size=(2, 299, 299, 3)).astype(np.float32)
    tap, top = (np.asarray(x) for x in trunk(image))
    assert tap.shape == (2, 35, 35, 288) and top.shape == (2, 8, 8, 2048)
    adapter = build_adapter(tap, top, channels=8)
    encoder = learned_encoder(trunk, adapter)
    np.testing.assert_allclose(np.asarray(encoder(image)), np.asarray(adapter([tap, top])), rtol=1e-5, atol=1e-6)
    assert not encoder.get_layer("inception_v3_trunk").trainable
    with pytest.raises(ValueError, match="no block 'mixed11'"):
        build_trunk("random:7", "mixed11")


def test_the_learned_part_costs_under_two_percent_of_the_trunk(trunk):
    tap = np.zeros((2, 35, 35, 288), np.float16)
    top = np.zeros((2, 8, 8, 2048), np.float16)
    trunk_macs, learned = conv_macs(trunk), conv_macs(build_adapter(tap, top, channels=128))
    assert 5.6e9 < trunk_macs < 5.8e9  # InceptionV3 at 299x299 without its top: 5.7 G multiply-adds
    assert learned / trunk_macs < 0.02


def test_cell_truth_marks_the_cells_an_object_covers_in_the_stretched_frame(tmp_path):
    Image.new("RGB", (640, 480)).save(tmp_path / "wide.png")
    # A large circle at the frame's left third, vertically centred; a small square in the lower right corner.
    scenes = {"wide.png": [{"size": "large", "colour": "blue", "shape": "circle", "x": 200, "y": 240, "radius": 90},
                           {"size": "small", "colour": "red", "shape": "square", "x": 600, "y": 450, "radius": 30}]}
    truth = cell_truth([tmp_path / "wide.png"], scenes).reshape(8, 8, 3)
    circle_blue_large = (1, 3, 2)   # classes are 1 + the index in SHAPES, COLOURS and SIZES
    assert tuple(truth[3, 2]) == circle_blue_large and tuple(truth[4, 2]) == circle_blue_large
    assert tuple(truth[7, 7]) == (2, 1, 1)
    assert tuple(truth[0, 7]) == (0, 0, 0) and tuple(truth[3, 6]) == (0, 0, 0)
    # Stretched to the model's square input, a centred circle of 100 px is 0.16 of the width and
    # 0.21 of the height: it covers four rows of the middle columns and only two columns.
    scenes["wide.png"] = [{"size": "large", "colour": "green", "shape": "circle", "x": 320, "y": 240, "radius": 100}]
    covered = cell_truth([tmp_path / "wide.png"], scenes).reshape(8, 8, 3)[..., 0] > 0
    assert covered.sum(axis=0).max() == 4 and covered.sum(axis=1).max() == 2


def test_a_learned_encoder_needs_the_attention_decoder_without_its_own_standardisation():
    with pytest.raises(ValueError, match="learned_encoder needs attention and feature_norm none"):
        TrainConfig().with_values(learned_encoder=True).validate()
    with pytest.raises(ValueError, match="cell_loss_weight"):
        TrainConfig().with_values(cell_loss_weight=-1.0).validate()
    TrainConfig().with_values(learned_encoder=True, attention=True, feature_norm="none").validate()


def test_the_demo_config_trains_the_learned_part():
    config = TrainConfig.from_file("training/configs/demo.json")
    config.validate()
    assert config.learned_encoder and config.encoder_tap == "mixed2" and config.cell_loss_weight > 0
