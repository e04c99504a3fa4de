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
    ({"CAPTION_MAX_PIXELS": "lots"}, "CAPTION_MAX_PIXELS='lots' is not a valid int"),
    ({"CAPTION_WARMUP": "maybe"}, "is not a valid bool"),
    ({"CAPTION_PROVIDERS": "tpu"}, "providers='tpu'"),
    ({"CAPTION_MAX_BEAM_SIZE": "11"}, "max_beam_size <= 10"),
    ({"CAPTION_IO_BINDING": "always"}, "io_binding='always' (choose from auto, on, off)"),
    ({"CAPTION_BUNDEL": "typo"}, "unknown setting CAPTION_BUNDEL"),
])
def test_bad_settings_are_refused_clearly(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_env(env)
