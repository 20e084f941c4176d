"""Settings: one typed object read from TRIPOSR_SERVE_* variables, overridden by app-builder arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.params import MergeStrategy
from serve_app.settings import CliSettings, Settings, SettingsError


def test_environment_is_cast_to_typed_fields(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "TRIPOSR_SERVE_DATA_DIR": str(tmp_path),
            "TRIPOSR_SERVE_MODEL_HALF": "yes",
            "TRIPOSR_SERVE_CHUNK_SIZE": "4096",
            "TRIPOSR_SERVE_INPUT_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
            "TRIPOSR_SERVE_API_TOKEN": "",
            "TRIPOSR_SERVE_DEFAULT_MERGE": "best",
            "UNRELATED": "ignored",
        }
    )
    assert settings.data_dir == tmp_path and settings.model_half is True and settings.chunk_size == 4096
    assert settings.input_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert settings.api_token is None
    assert settings.defaults.merge is MergeStrategy.BEST
    assert settings.db_path.parent == tmp_path


def test_builder_arguments_override_environment() -> None:
    settings = Settings.from_env({"TRIPOSR_SERVE_RETENTION_S": "60"}).merged({"retention_s": 120.0})
    assert settings.retention_s == 120.0


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"TRIPOSR_SERVE_CHUNK_SIZE": "lots"}, "TRIPOSR_SERVE_CHUNK_SIZE: cannot read 'lots' as int"),
        ({"TRIPOSR_SERVE_MODEL_HALF": "perhaps"}, "TRIPOSR_SERVE_MODEL_HALF"),
        ({"TRIPOSR_SERVE_NO_SUCH_THING": "1"}, "TRIPOSR_SERVE_NO_SUCH_THING: unknown setting"),
        ({"TRIPOSR_SERVE_CHUNK_SIZE": "0"}, "chunk_size must be >= 1"),
        ({"TRIPOSR_SERVE_DEFAULT_NUM_FRAMES": "99"}, "num_frames: 99 is outside"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=None) as info:
        Settings.from_env(env)
    assert fragment in str(info.value)


def test_client_variables_are_not_server_settings(tmp_path: Path) -> None:
    """The quickstart exports the CLI's TRIPOSR_SERVE_URL in the shell that starts the server."""
    env = {
        "TRIPOSR_SERVE_URL": "http://127.0.0.1:8123",
        "TRIPOSR_SERVE_PORT": "8123",
        "TRIPOSR_SERVE_API_TOKEN": "s3cret",
        "TRIPOSR_SERVE_DATA_DIR": str(tmp_path),
    }
    settings = Settings.from_env(env)
    assert settings.data_dir == tmp_path and settings.api_token == "s3cret"
    client = CliSettings.from_env(env)
    assert client.url == "http://127.0.0.1:8123" and client.api_token == "s3cret" and client.port == 8123
    assert CliSettings.from_env({}).url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("TRIPOSR_SERVE_MODEL_SOURSE", "TRIPOSR_SERVE_MODEL_SOURCE"),
        ("TRIPOSR_SERVE_URI", "TRIPOSR_SERVE_URL"),
        ("TRIPOSR_SERVE_API_TOKENS", "TRIPOSR_SERVE_API_TOKEN"),
    ],
)
def test_a_typo_in_a_server_variable_still_fails_and_names_the_right_one(name: str, suggested: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: "x"})
    assert str(info.value) == f"{name}: unknown setting (did you mean {suggested}?)"
