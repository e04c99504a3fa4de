import re
from pathlib import Path

import pytest

from server.config import Config, ConfigError


def test_defaults_and_environment():
    config = Config.from_env({"CAPTION_BUNDLE": "/models/x", "CAPTION_MAX_UPLOAD_MB": "2.5",
                              "CAPTION_STRICT_PROVIDERS": "yes", "CAPTION_PROVIDERS": "cuda, cpu", "OTHER": "1"})
    assert config.bundle == Path("/models/x")
    assert config.max_upload_bytes == int(2.5 * 1024 * 1024)
    assert config.strict_providers is True
    assert config.provider_list == ["cuda", "cpu"]
    assert Config.from_env({}).default_beam_size == 1


@pytest.mark.parametrize("env, message", [
    ({"CAPTION_MAX_PIXELS": "lots"}, "CAPTION_MAX_PIXELS='lots' is not a valid integer"),
    ({"CAPTION_WARMUP": "maybe"}, "is not a valid boolean"),
    ({"CAPTION_PROVIDERS": "tpu"}, "providers='tpu'"),
    ({"CAPTION_MAX_BEAM_SIZE": "11"}, "max_beam_size <= 10"),
    ({"CAPTION_IO_BINDING": "always"}, "io_binding='always' (choose from auto, on, off)"),
    ({"CAPTION_BUNDEL": "typo"}, "unknown setting CAPTION_BUNDEL"),
])
def test_bad_settings_are_refused_clearly(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_env(env)


@pytest.mark.parametrize("env, message", [
    ({"CAPTION_MAX_UPLOAD_MB": "nan"}, "CAPTION_MAX_UPLOAD_MB='nan' is not a valid finite number"),
    ({"CAPTION_MAX_UPLOAD_MB": "inf"}, "CAPTION_MAX_UPLOAD_MB='inf' is not a valid finite number"),
    ({"CAPTION_LENGTH_PENALTY": "nan"}, "CAPTION_LENGTH_PENALTY='nan' is not a valid finite number"),
    ({"CAPTION_REQUEST_TIMEOUT_S": "-Infinity"}, "is not a valid finite number"),
    ({"CAPTION_MAX_IMAGES": "1_0"}, "CAPTION_MAX_IMAGES='1_0' is not a valid integer"),
    ({"CAPTION_MAX_IMAGES": "+3"}, "CAPTION_MAX_IMAGES='+3' is not a valid integer"),
    ({"CAPTION_MAX_IMAGES": "\u0663"}, "is not a valid integer"),  # ARABIC-INDIC DIGIT THREE
    ({"CAPTION_MAX_QUEUE_IMAGES": "0"}, "must be > 0"),
    ({"CAPTION_MAX_REQUEST_PIXELS": "0"}, "must be > 0"),
    ({"CAPTION_MAX_QUEUE_DELAY_MS": "-1"}, "max_queue_delay_ms must be >= 0"),
])
def test_odd_numbers_are_refused(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_env(env)


def test_kubernetes_service_links_are_not_settings():
    links = {"CAPTION_SERVER_SERVICE_HOST": "10.0.0.7", "CAPTION_SERVER_SERVICE_PORT": "80",
             "CAPTION_SERVER_SERVICE_PORT_HTTP": "80", "CAPTION_SERVER_PORT": "tcp://10.0.0.7:80",
             "CAPTION_SERVER_PORT_80_TCP": "tcp://10.0.0.7:80", "CAPTION_SERVER_PORT_80_TCP_PROTO": "tcp",
             "CAPTION_SERVER_PORT_80_TCP_PORT": "80", "CAPTION_SERVER_PORT_80_TCP_ADDR": "10.0.0.7"}
    assert Config.from_env({**links, "CAPTION_MAX_IMAGES": "4"}).max_images == 4
    with pytest.raises(ConfigError, match="unknown setting CAPTION_MAX_IMAGE "):
        Config.from_env({**links, "CAPTION_MAX_IMAGE": "4"})


def test_one_length_penalty_default_for_every_caller():
    import inspect

    from server.batching import MicroBatcher
    from bundle.decoding import DEFAULT_LENGTH_PENALTY, decode_beam
    from server.engine import CaptionEngine

    defaults = [inspect.signature(f).parameters["length_penalty"].default
                for f in (CaptionEngine.caption, MicroBatcher.caption, decode_beam)]
    assert defaults == [DEFAULT_LENGTH_PENALTY] * 3 == [Config().length_penalty] * 3
