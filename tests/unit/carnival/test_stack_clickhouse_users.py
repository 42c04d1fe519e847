"""A secured local stack's embedded ClickHouse: a users file with the password hashed; clients find it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from carnival.stack import clickhouse_server
from core.settings import CLICKHOUSE_SECRET_KEY, SECRETS_FILE, STACK_SHAPE_FILE, Settings


def _secured(tmp_path: Path) -> Settings:
    (tmp_path / STACK_SHAPE_FILE).write_text(json.dumps({"brokers": 1, "secure": True}))
    return Settings.from_env(
        {"CARNIVAL_DATA_DIR": str(tmp_path), "CARNIVAL_CLICKHOUSE_URL": "http://localhost:8123"}
    )


def test_the_users_file_holds_a_hash_and_default_sees_only_system(tmp_path: Path) -> None:
    settings = _secured(tmp_path)
    clickhouse_server.write_users(settings)
    password = json.loads((tmp_path / SECRETS_FILE).read_text())[CLICKHOUSE_SECRET_KEY]
    users = (tmp_path / "clickhouse" / "users.xml").read_text()
    assert password not in users and hashlib.sha256(password.encode()).hexdigest() in users
    default = users[users.index("<default>") : users.index("</default>")]
    assert "<allow_databases><database>system</database></allow_databases>" in default
    sp = clickhouse_server.paths(tmp_path)
    assert f"<path>{sp.root / 'users.xml'}</path>" in clickhouse_server.config_xml(sp, 1, 2)


def test_an_unsecured_stack_has_no_users_file(tmp_path: Path) -> None:
    settings = _secured(tmp_path)
    clickhouse_server.write_users(settings)
    settings.stack_secure = False
    clickhouse_server.write_users(settings)
    sp = clickhouse_server.paths(tmp_path)
    assert not (sp.root / "users.xml").exists() and "user_directories" not in clickhouse_server.config_xml(
        sp, 1, 2
    )


def test_clients_of_a_secured_stack_use_its_clickhouse_user_unless_told_otherwise(tmp_path: Path) -> None:
    clickhouse_server.write_users(_secured(tmp_path))  # makes the data dir's secrets
    password = json.loads((tmp_path / SECRETS_FILE).read_text())[CLICKHOUSE_SECRET_KEY]
    settings = _secured(tmp_path)
    assert (
        settings.clickhouse.user == "carnival" and settings.clickhouse.password.get_secret_value() == password
    )
    own = Settings.from_env({"CARNIVAL_DATA_DIR": str(tmp_path), "CARNIVAL_CLICKHOUSE_USER": "analyst",
                             "CARNIVAL_CLICKHOUSE_PASSWORD": "theirs"})  # fmt: skip
    assert own.clickhouse.user == "analyst" and own.clickhouse.password.get_secret_value() == "theirs"
    remote = Settings.from_env(
        {"CARNIVAL_DATA_DIR": str(tmp_path), "CARNIVAL_CLICKHOUSE_URL": "https://ch.example:8443"}
    )
    assert remote.clickhouse.user == "default"  # not the embedded engine: its password is not sent there
