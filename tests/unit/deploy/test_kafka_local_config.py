"""Unit tests for deploy.kafka_local that need no broker, Java or Maven."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from deploy.kafka_local import (
    LOG4J2_CONFIG,
    POM,
    KafkaLocalError,
    LocalKafka,
    main,
    new_cluster_id,
    render_server_properties,
)


def _parse(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        assert key not in props, f"duplicate key {key}"
        props[key] = value
    return props


def test_server_properties_kraft_single_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    props = _parse(
        render_server_properties(
            host="127.0.0.1", port=19092, controller_port=19093, data_dir=data, num_partitions=6
        )
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["controller.listener.names"] == "CONTROLLER"
    listeners = props["listeners"].split(",")
    assert sorted(listeners) == ["CONTROLLER://127.0.0.1:19093", "PLAINTEXT://127.0.0.1:19092"]
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert "CONTROLLER:PLAINTEXT" in props["listener.security.protocol.map"].split(",")
    assert props["log.dirs"] == str(data)
    assert props["num.partitions"] == "6"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"


def test_server_properties_escape_backslashes() -> None:
    text = render_server_properties(
        host="127.0.0.1", port=1, controller_port=2, data_dir=Path("a\\b"), num_partitions=1
    )
    assert _parse(text)["log.dirs"] == "a\\\\b"


def test_new_cluster_id_is_kafka_uuid() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_defaults_and_layout(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path / "kafka")
    assert kafka.bootstrap == "127.0.0.1:9092"
    home = (tmp_path / "kafka").resolve()
    assert kafka.libs_dir == home / "libs"
    assert kafka.data_dir == home / "data"
    assert kafka.properties_path == home / "server.properties"
    assert LocalKafka(tmp_path, port=29092).bootstrap == "127.0.0.1:29092"
    assert POM.is_file() and LOG4J2_CONFIG.is_file()


def test_not_running_without_pid_file(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path)
    assert not kafka.is_running()
    kafka.stop()  # no error when nothing runs
    (tmp_path / "kafka.pid").write_text("999999999\n")  # stale
    assert not kafka.is_running()
    kafka.stop()
    assert not (tmp_path / "kafka.pid").exists()


def test_start_reports_busy_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        kafka = LocalKafka(tmp_path, port=port, controller_port=port)
        with pytest.raises(KafkaLocalError, match=f"port {port}"):
            kafka.start(timeout_s=1)


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    kafka = LocalKafka(tmp_path, java="no-such-java-binary")
    with pytest.raises(KafkaLocalError, match="Java not found"):
        kafka._java_executable()


def test_cli_status_when_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--home", str(tmp_path)]) == 1
    assert "stopped" in capsys.readouterr().out
