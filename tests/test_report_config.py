"""`[report]` and `[report.smtp]`: defaults, errors that name the key, the password masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callhub.cli import main
from callhub.config import ConfigError, load_settings

MAILING = """
timezone = "Asia/Shanghai"
[report]
schedule = "weekly"
send_at = "7:30"
recipients = ["leader@example.com"]
lang = "en"
[report.smtp]
host = "smtp.example.com"
port = 587
starttls = true
username = "callhub"
password = "smtp-pass-9876"
from = "callhub@example.com"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callhub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_report_is_off_by_default_in_zh_html() -> None:
    report = load_settings(None, env={}).report
    assert (report.schedule, report.period, report.format, report.lang) == \
        ("off", None, "html", "zh")


def test_a_mailing_section_loads(tmp_path: Path) -> None:
    report = load_settings(write(tmp_path, MAILING), env={}).report
    assert report.period == "week" and report.send_time == (7, 30) and report.send_at == "07:30"
    assert report.smtp.from_address == "callhub@example.com" and report.smtp.starttls
    assert report.recipients == ("leader@example.com",)


@pytest.mark.parametrize(("change", "key"), [
    (('schedule = "weekly"', 'schedule = "hourly"'), "report.schedule"),
    (('send_at = "7:30"', 'send_at = "25:00"'), "report.send_at"),
    (('recipients = ["leader@example.com"]', 'recipients = ["leader"]'), "report.recipients"),
    (('recipients = ["leader@example.com"]', 'recipients = []'), "report.recipients"),
    (('lang = "en"', 'lang = "fr"'), "report.lang"),
    (('port = 587', 'port = 70000'), "report.smtp.port"),
    (('starttls = true', 'starttls = true\nssl = true'), "report.smtp.ssl"),
    (('host = "smtp.example.com"', ''), "report.smtp.host"),
    (('from = "callhub@example.com"', ''), "report.smtp.from"),
    (('port = 587', 'port = 587\nsender = "x"'), "report.smtp.sender"),
])
def test_a_bad_report_key_is_named(tmp_path: Path, change: tuple[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, MAILING.replace(*change)), env={})
    assert str(err.value).startswith(key + ":"), str(err.value)


def test_the_smtp_password_is_masked_and_never_echoed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(write(tmp_path, MAILING))]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)["report"]
    assert shown["smtp"]["password"] == "***" and "smtp-pass-9876" not in out
    assert shown["smtp"]["from"] == "callhub@example.com"
    bad = MAILING.replace('password = "smtp-pass-9876"', "password = 9876")
    assert main(["config", "check", str(write(tmp_path, bad))]) == 2
    err = capsys.readouterr().err
    assert "report.smtp.password" in err and "9876" not in err


def test_the_smtp_password_may_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MAILING.replace('password = "smtp-pass-9876"', ""))
    report = load_settings(path, env={"CALLHUB_REPORT_SMTP_PASSWORD": "from-env-123"}).report
    assert report.smtp.password == "from-env-123" and report.smtp.username == "callhub"
    no_user = MAILING.replace('username = "callhub"', "").replace(
        'password = "smtp-pass-9876"', "")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, no_user), env={"CALLHUB_REPORT_SMTP_PASSWORD": "x" * 9})
    assert "username" in str(err.value) and "x" * 9 not in str(err.value)
