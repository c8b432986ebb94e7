"""Settings come from the environment, with the ecosystem's own names where they exist."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scenerec.config import DEFAULT_SCENES, Settings


def test_defaults() -> None:
    s = Settings()
    assert s.partitions == 4 and s.top_k == 10 and s.scenes == DEFAULT_SCENES
    assert s.bootstrap == f"127.0.0.1:{s.kafka_port}"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret")
    monkeypatch.setenv("SCENEREC_SCENES", "news, video,music")
    monkeypatch.setenv("SCENEREC_PARTITIONS", "8")
    s = Settings()
    assert s.bootstrap == "broker:9092" and s.qdrant_url == "http://qdrant:6333"
    assert s.scenes == ("news", "video", "music") and s.partitions == 8
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


def test_bad_values_fail_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENEREC_SCENES", "news,global")
    with pytest.raises(ValidationError, match="reserved"):
        Settings()
    monkeypatch.setenv("SCENEREC_SCENES", "news")
    monkeypatch.setenv("SCENEREC_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()


def test_secrets_stay_out_of_logs_configs_and_errors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from deploy.api_config import api_overrides
    from scenerec.kafka import client_kwargs

    monkeypatch.setenv("SCENEREC_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SCENEREC_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SCENEREC_KAFKA_SASL_USERNAME", "app")
    monkeypatch.setenv("SCENEREC_KAFKA_SASL_PASSWORD", "hunter2-sasl")
    monkeypatch.setenv("QDRANT_API_KEY", "hunter2-qdrant")
    s = Settings()
    # The Kafka client gets the password (it must), nothing else shows it.
    assert client_kwargs(s)["sasl_plain_password"] == "hunter2-sasl"
    overrides = api_overrides(s)  # what the Serve app config carries
    assert "hunter2" not in repr(overrides) and overrides["kafka_sasl_username"] == "app"
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
    with pytest.raises(ValidationError) as err:
        Settings(partitions=0)
    assert "hunter2" not in str(err.value)
    assert "hunter2" not in caplog.text


def test_tune_gc_freezes_and_sets_the_young_threshold() -> None:
    import gc

    from streams.runtime import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(freeze=True, threshold0=12345)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12345, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
