import keras
import numpy as np
import pytest

from training.model import DecoderConfig, build_decoder, build_encoder, feature_statistics


@pytest.fixture(scope="module")
def image_batch():
    return np.random.default_rng(0).uniform(-1, 1, size=(2, 299, 299, 3)).astype(np.float32)


def test_random_encoder_is_deterministic_and_local_weights_load(tmp_path, image_batch):
    first = build_encoder("random:7")
    features = np.asarray(first(image_batch))
    assert features.shape == (2, 2048)
    assert np.array_equal(features, np.asarray(build_encoder("random:7")(image_batch)))
    assert not np.allclose(features, np.asarray(build_encoder("random:8")(image_batch)))

    path = tmp_path / "inception.weights.h5"
    first.save_weights(path)
    loaded = build_encoder(str(path))
    assert np.array_equal(np.asarray(loaded(image_batch)), features)


def test_random_encoder_ignores_a_uniform_brightness_shift(image_batch):
    # Zero-sum stem filters: background brightness must not swamp what the features say.
    encoder = build_encoder("random:0")
    dimmer = np.clip(image_batch, -1, 0.8) - 0.2
    brighter = dimmer + 0.3
    np.testing.assert_allclose(np.asarray(encoder(brighter)), np.asarray(encoder(dimmer)), rtol=1e-3, atol=1e-7)


def test_bad_encoder_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match="random:<integer seed>"):
        build_encoder("random:x")
    with pytest.raises(ValueError, match="existing file"):
        build_encoder(str(tmp_path / "missing.h5"))
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="do not fit InceptionV3"):
        build_encoder(str(tmp_path / "other.weights.h5"))


@pytest.mark.parametrize("image_every_step, feature_norm, attention",
                         [(True, "standardise", False), (False, "standardise", False), (True, "l2-standardise", False),
                          (True, "standardise", True), (False, "l2-standardise", True)])
def test_step_model_reproduces_teacher_forcing(image_every_step, feature_norm, attention):
    config = DecoderConfig(vocab_size=23, max_length=6, units=16, embedding_dim=8, dropout=0.5,
                           image_every_step=image_every_step, feature_norm=feature_norm, attention=attention,
                           captions_per_image=3)
    rng = np.random.default_rng(1)
    positions = 5
    training_model, init_model, step_model = build_decoder(config, rng.normal(size=2048).astype(np.float32),
                                                           rng.uniform(0.5, 2, size=2048).astype(np.float32),
                                                           positions=positions)
    # Train a little so the shared weights are not their initial values.
    features = rng.normal(size=(8, positions, 2048) if attention else (8, 2048)).astype(np.float32)
    tokens = rng.integers(0, 23, size=(8, 3, 7) if attention else (8, 7)).astype(np.int32)
    training_model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    training_model.fit([features, tokens], tokens, epochs=2, verbose=0)

    logits = np.asarray(training_model([features, tokens], training=False))
    expected = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    state = [np.asarray(x) for x in init_model(features)]
    assert len(state) == (4 if attention else 3)
    for caption in range(3 if attention else 1):
        h, c, *carried = state
        words = tokens[:, caption] if attention else tokens
        for t in range(7):
            log_probs, h, c, *looked = (np.asarray(x) for x in step_model([words[:, t:t + 1], h, c, *carried]))
            wanted = expected[:, caption, t] if attention else expected[:, t]
            np.testing.assert_allclose(log_probs, wanted, atol=1e-5)
            if attention:  # where the step looked: a distribution over the positions
                (weights,) = looked
                assert weights.shape == (8, positions) and np.allclose(weights.sum(1), 1.0, atol=1e-5)
            else:
                assert looked == []


def test_the_map_encoder_gives_the_positions_that_pooling_averages(image_batch):
    pooled = np.asarray(build_encoder("random:7")(image_batch))
    positions = np.asarray(build_encoder("random:7", spatial=True)(image_batch))
    assert positions.shape == (2, 64, 2048)
    np.testing.assert_allclose(positions.mean(axis=1), pooled, rtol=1e-4, atol=1e-6)


def test_feature_statistics_follow_the_normalisation():
    features = np.random.default_rng(2).uniform(0, 3, size=(50, 2048)).astype(np.float32)
    mean, std = feature_statistics(features, "standardise")
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-5)
    mean, std = feature_statistics(features, "l2-standardise")
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, unit.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, unit.std(0), rtol=1e-4)
    with pytest.raises(ValueError, match="feature_norm"):
        build_decoder(DecoderConfig(vocab_size=5, max_length=3, feature_norm="whiten"), mean, std)
