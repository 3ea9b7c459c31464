"""Settings: TOML plus CALLHUB_* overrides; bad values name the key; secrets masked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from traces_fixtures import all_traces

from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.cli import main
from callhub.config import ConfigError, load_settings

GOOD = """
database_url = "postgresql+asyncpg://callhub:s3cret-db@db:5432/callhub"
timezone = "Asia/Shanghai"
[api]
listen = "0.0.0.0:8081"
tokens = ["admin:admin-token-123", "viewer:viewer-token-123"]
[[pbx]]
name = "main"
username = "callhub"
secret = "ami-secret-xyz"
ring_cadence_seconds = 6
inbound_contexts = ["from-pstn"]
[pbx.agents]
"PJSIP/1001" = "李娜"
[pbx.lines]
"4008001000" = "front-desk"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callhub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_file_loads_with_types_and_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), env={})
    pbx = settings.pbx("main")
    assert pbx.ring_cadence_seconds == 6.0 and pbx.port == 5038
    assert pbx.agents["PJSIP/1001"] == "李娜" and pbx.line_for("4008001000") == "front-desk"
    assert pbx.line_for("4008009999") == "4008009999"
    assert settings.api_listen == ("0.0.0.0", 8081)
    assert settings.fastagi_listen == ("127.0.0.1", 4573)
    assert [t.role for t in settings.api_tokens] == ["admin", "viewer"]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {"CALLHUB_CONFIG": str(write(tmp_path, GOOD)),
           "CALLHUB_API_LISTEN": "127.0.0.1:9999",
           "CALLHUB_DATABASE_URL": "sqlite+aiosqlite:///x.db",
           "CALLHUB_API_TOKENS": "supervisor:sup-token-123",
           "CALLHUB_PBX_MAIN_SECRET": "from-env-secret"}
    settings = load_settings(None, env=env)
    assert settings.api_listen == ("127.0.0.1", 9999)
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
    assert [t.role for t in settings.api_tokens] == ["supervisor"]
    assert settings.pbx("main").secret == "from-env-secret"


@pytest.mark.parametrize(("text", "key"), [
    ("[[pbx]]\nname='a'\nring_cadence_seconds = 0\n", "pbx[a].ring_cadence_seconds"),
    ("[[pbx]]\nname='a'\nring_cadence_seconds = 'five'\n", "pbx[a].ring_cadence_seconds"),
    ("[[pbx]]\nname='a'\nport = 70000\n", "pbx[a].port"),
    ("[[pbx]]\nname='a'\nsurprise = 1\n", "pbx[a].surprise"),
    ("[[pbx]]\nport = 1\n", "pbx[0].name"),
    ("[[pbx]]\nname='a'\n[[pbx]]\nname='a'\n", "pbx"),
    # CALLHUB_PBX_MAIN_SECRET would reach both, and "pbx 1" and "pbx_1" share one AMI state
    # file, each reading the other's gap.
    ("[[pbx]]\nname='Main'\n[[pbx]]\nname='main'\n", "pbx"),
    ("[[pbx]]\nname='pbx 1'\n[[pbx]]\nname='pbx_1'\n", "pbx"),
    # The calls' pbx column is 64 long: PostgreSQL refused (quarantined) every call.
    (f"[[pbx]]\nname='{'总' * 65}'\n", f"pbx[{'总' * 65}].name"),
    ("categories = ['repair', '" + "类" * 65 + "']\n", "categories"),  # the calls' column
    # cut to the calls' line column, the call matched neither its targets nor the rota
    (f"[[pbx]]\nname='a'\n[pbx.lines]\n'4008001004' = '{'线' * 129}'\n",
     "pbx[a].lines.4008001004"),
    ("timezone = 'Mars/Olympus'\n", "timezone"),
    ("timezone = 'America'\n", "timezone"),  # a folder of the tz database
    ("[api]\nlisten = 'nowhere'\n", "api.listen"),
    ("[api]\ntokens = ['root:abcdefghij']\n", "api.tokens"),
    ("[api]\ntokens = ['admin:short']\n", "api.tokens"),
    ("database_url = 'callhub.db'\n", "database_url"),
    ("event_loop = 'trio'\n", "event_loop"),
    ("[[pbx]]\nname='a'\n[pbx.agents]\n'PJSIP/1' = 3\n", "pbx[a].agents.PJSIP/1"),
    # TOML writes inf and nan: no time, rate or count of callhub's may be either.
    ("stale_call_seconds = inf\n", "stale_call_seconds"),
    ("[desk]\npoll_seconds = inf\n", "desk.poll_seconds"),
    ("[desk.targets]\nmissed = nan\n", "desk.targets.missed"),
    ("[sms]\ngateway = 'webhook'\nurl = 'http://127.0.0.1:9/send'\nlease_seconds = inf\n",
     "sms.lease_seconds"),
    ("[sms]\ngateway = 'webhook'\nurl = 'http://127.0.0.1:9/send'\nretry_max_seconds = inf\n",
     "sms.retry_max_seconds"),
])
def test_a_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), env={})
    assert str(err.value).startswith(f"{key}:")


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^CALLHUB_API_LISTEN:"):
        load_settings(None, env={"CALLHUB_API_LISTEN": "8080"})


def test_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[[pbx]\n"), env={})


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read .*: Is a directory"),
    (b'timezone = "\xff"\n', "is not UTF-8 text"),
    (b"a = " + b"[" * 100_000, "is not valid TOML: nested too deeply"),
])
def test_an_unreadable_config_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
        message: str) -> None:
    path = tmp_path / "callhub.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})
    assert main(["config", "check", str(path)]) != 0
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.splitlines()) == 1


def test_config_check_prints_settings_with_secrets_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["pbxs"][0]["secret"] == "***"
    assert shown["api_tokens"][0] == {"role": "admin", "token": "***"}
    for secret in ("ami-secret-xyz", "admin-token-123", "s3cret-db"):
        assert secret not in out
    assert shown["pbxs"][0]["agents"]["PJSIP/1001"] == "李娜"


def test_config_check_of_a_bad_file_exits_2_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(write(tmp_path, "[api]\nlisten = 'x'\n"))]) == 2
    assert "api.listen" in capsys.readouterr().err


def test_every_traces_expected_config_is_a_valid_pbx_table() -> None:
    for path in all_traces():
        truth = load_truth(path)
        pbx = pbx_from_truth(truth)
        assert pbx.name == truth["expected"]["config"]["pbx"]
        assert dict(pbx.agents) == truth["expected"]["config"]["agents"]


@pytest.mark.parametrize("argv", [
    ["--config", "{f}", "config", "check"],
    ["config", "check", "--config", "{f}"],
    ["config", "--config", "{f}", "check"],
])
def test_config_option_works_before_or_after_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main([a.format(f=path) for a in argv]) == 0
    assert json.loads(capsys.readouterr().out)["timezone"] == "Asia/Shanghai"


def test_every_command_accepts_config_after_it() -> None:
    from callhub.cli import build_parser
    parser = build_parser()
    for argv in (["run", "--config", "x.toml"], ["db", "upgrade", "--config", "x.toml"],
                 ["replay", "--config", "x.toml", "t.ami"],
                 ["report", "--config", "x.toml", "--date", "today"],
                 ["rota", "show", "--config", "x.toml"]):
        assert parser.parse_args(argv).config == "x.toml", argv


@pytest.mark.parametrize(("given", "runs_on"), [
    ("postgresql://callhub:pw@db/callhub", "postgresql+asyncpg://callhub:pw@db/callhub"),
    ("postgres://callhub:pw@db:5433/callhub", "postgresql+asyncpg://callhub:pw@db:5433/callhub"),
    ("PostgreSQL+AsyncPG://db/callhub", "postgresql+asyncpg://db/callhub"),
    ("sqlite:///var/lib/callhub/calls.db", "sqlite+aiosqlite:///var/lib/callhub/calls.db"),
    ("sqlite+aiosqlite:///calls.db", "sqlite+aiosqlite:///calls.db"),
])
def test_a_database_url_as_libpq_writes_it_runs_on_the_async_driver(
        tmp_path: Path, given: str, runs_on: str) -> None:
    """SQLAlchemy's default drivers for these (psycopg2, pysqlite) are not installed or not
    async: `postgresql://...` was a ModuleNotFoundError traceback at the first connect."""
    text = (f"database_url = '{given}'\nread_database_url = '{given}'\n"
            f"[[pbx]]\nname = 'main'\ncel_database_url = '{given}'\n")
    settings = load_settings(write(tmp_path, text), env={})
    assert settings.database_url == settings.read_database_url == runs_on
    assert settings.pbx("main").cel_database_url == runs_on
    assert load_settings(None, env={"CALLHUB_DATABASE_URL": given}).database_url == runs_on


@pytest.mark.parametrize("url", ["mysql://callhub@db/callhub", "postgresql+psycopg2://db/c",
                                 "sqlite+pysqlite:///c.db", "oracle://db/c"])
def test_a_database_callhub_does_not_run_on_is_named_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    scheme = url.split("://")[0] + "://"
    for key, text in (("database_url", f"database_url = '{url}'\n"),
                      ("pbx[main].cel_database_url",
                       f"[[pbx]]\nname = 'main'\ncel_database_url = '{url}'\n")):
        assert main(["config", "check", str(write(tmp_path, text))]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert key in err and "PostgreSQL" in err and repr(scheme) in err
    said = err.strip().split(f"{key}: ", 1)[1]
    assert_the_command_line_says(capsys, url, said)


# The options that take a database URL on the command line, with what else each command needs.
URL_OPTIONS = [
    ("report", ["report"], "--database-url"),
    ("db upgrade", ["db", "upgrade"], "--database-url"),
    ("db current", ["db", "current"], "--database-url"),
    ("backfill", ["backfill", "--from", "2026-11-29", "--to", "2026-11-30", "--pbx", "main"],
     "--cel-database-url"),
]


def assert_the_command_line_says(capsys: pytest.CaptureFixture[str], url: str,
                                 said: str) -> None:
    """The URL given on the command line is refused as in the config file and the
    environment: exit 2, the same words. It was an 'ArgumentError' at the first connect
    (exit 1), or a traceback (a port that is not a number): the one check was there, for the
    URLs of every source, and the command line's had no other (9b78f9f)."""
    for command, words, option in URL_OPTIONS:
        with pytest.raises(SystemExit) as exited:
            main([*words, option, url])
        assert exited.value.code == 2, command
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"callhub {command}: error: argument {option}: {said}"


@pytest.mark.parametrize("url", ["", " "], ids=["empty", "blank"])
def test_an_empty_database_url_on_the_command_line_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        url: str) -> None:
    """It fell back silently to the configured database (or the PBX's CEL database)."""
    monkeypatch.chdir(tmp_path)  # where the default database would be, were it used
    monkeypatch.delenv("CALLHUB_DATABASE_URL", raising=False)
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    assert_the_command_line_says(
        capsys, url, "must not be empty (leave the option out for the configured one)")


@pytest.mark.parametrize(("url", "says"), [
    # Read as the host "s3cret@db": callhub waited for ever for a host that is not there.
    ("postgresql://callhub:pa@s3cret@db/callhub", "must be URL-encoded as %40"),
    ("postgresql://callhub:pw@db:99999/callhub", "the port must be 1-65535, got 99999"),
    ("postgresql://callhub:pw@db:54x2/callhub", "the port must be a number"),
])
def test_a_database_url_that_cannot_reach_any_host_is_refused_without_its_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, says: str) -> None:
    assert main(["config", "check", str(write(tmp_path, f"database_url = '{url}'\n"))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "database_url" in err and says in err
    assert "s3cret" not in err and "pw" not in err.replace("postgresql", "")
    assert_the_command_line_says(capsys, url, err.strip().split("database_url: ", 1)[1])


def test_config_check_masks_a_password_in_the_database_urls_query(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("postgresql+asyncpg://callhub@db:5432/callhub?password=q-s3cret&sslmode=require"
           "&sslpassword=key-s3cret")
    path = write(tmp_path, f"database_url = '{url}'\n")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "q-s3cret" not in out and "key-s3cret" not in out
    shown = json.loads(out)["database_url"]
    assert "password=***" in shown and "sslpassword=***" in shown and "sslmode=require" in shown


@pytest.mark.parametrize("tokens", [
    "viewer:viewer-token-123,s3cret-without-role",
    "viewer:viewer-token-123,s3cret:looks-like-a-role",
    "viewer:viewer-token-123,admin:s3cret",
])
def test_a_malformed_token_entry_is_named_by_position_without_its_secret(tokens: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"CALLHUB_API_TOKENS": tokens})
    message = str(err.value)
    assert message.startswith("CALLHUB_API_TOKENS: entry 2:")
    assert "s3cret" not in message and "viewer-token-123" not in message


def test_config_check_without_tokens_warns_that_every_route_answers_401(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLHUB_API_TOKENS", raising=False)
    assert main(["config", "check", str(write(tmp_path, "timezone = 'UTC'\n"))]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["api_tokens"] == []
    assert "401" in captured.err and "CALLHUB_API_TOKENS" in captured.err
    assert "[api]" in captured.err
    assert main(["config", "check", str(write(tmp_path, GOOD))]) == 0
    assert "401" not in capsys.readouterr().err


@pytest.mark.parametrize(("env", "variable"), [
    ({"CALLHUB_TIMEZONE": "Mars/Olympus"}, "CALLHUB_TIMEZONE"),
    ({"CALLHUB_STALE_CALL_SECONDS": "0"}, "CALLHUB_STALE_CALL_SECONDS"),
    ({"CALLHUB_STALE_CALL_SECONDS": "inf"}, "CALLHUB_STALE_CALL_SECONDS"),
    ({"CALLHUB_PBX_MAIN_PORT": "70000"}, "CALLHUB_PBX_MAIN_PORT"),
    ({"CALLHUB_PBX_MAIN_PORT": "ami"}, "CALLHUB_PBX_MAIN_PORT"),
    ({"CALLHUB_EVENT_LOOP": "tokio"}, "CALLHUB_EVENT_LOOP"),
])
def test_a_bad_environment_value_names_its_variable(
        tmp_path: Path, env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, GOOD), env=env)
    assert str(err.value).startswith(f"{variable}:")


def test_pbx_environment_overrides_reach_their_pbx(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), env={
        "CALLHUB_PBX_MAIN_HOST": "pbx.example", "CALLHUB_PBX_MAIN_PORT": "15038",
        "CALLHUB_PBX_MAIN_USERNAME": "other"})
    pbx = settings.pbx("main")
    assert (pbx.host, pbx.port, pbx.username, pbx.secret) == (
        "pbx.example", 15038, "other", "ami-secret-xyz")


def test_cel_keys_default_to_none_and_cel_and_are_masked_in_config_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_settings(write(tmp_path, GOOD), env={}).pbx("main").cel_database_url is None
    assert load_settings(write(tmp_path, GOOD), env={}).pbx("main").cel_table == "cel"
    url = "postgresql+asyncpg://asterisk:cel-s3cret@pbxdb/asterisk"
    text = GOOD.replace('secret = "ami-secret-xyz"\n',
                        f'secret = "ami-secret-xyz"\ncel_database_url = "{url}"\n'
                        'cel_table = "asterisk.cel"\n')
    path = write(tmp_path, text)
    pbx = load_settings(path, env={}).pbx("main")
    assert (pbx.cel_database_url, pbx.cel_table) == (url, "asterisk.cel")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cel-s3cret" not in out
    shown = json.loads(out)["pbxs"][0]
    assert shown["cel_database_url"] == "postgresql+asyncpg://asterisk:***@pbxdb/asterisk"
    assert shown["cel_table"] == "asterisk.cel"
    from_env = load_settings(path, env={"CALLHUB_PBX_MAIN_CEL_DATABASE_URL": "sqlite:///c.db"})
    assert from_env.pbx("main").cel_database_url == "sqlite+aiosqlite:///c.db"
    assert main(["config", "check", str(write(tmp_path, text.replace(url, "cel-s3cret")))]) == 2
    err = capsys.readouterr().err
    assert "cel_database_url" in err and "cel-s3cret" not in err


def test_the_event_loop_is_uvloop_where_installed_unless_asyncio_is_asked_for(
        tmp_path: Path) -> None:
    import asyncio

    from callhub import loops

    async def which() -> str:
        return loops.kind(asyncio.get_running_loop())

    default = load_settings(None, env={})
    assert default.event_loop == "auto"
    assert loops.run(which(), default.event_loop) == "uvloop"  # a dependency of callhub
    chosen = load_settings(write(tmp_path, "event_loop = 'uvloop'\n"),
                           env={"CALLHUB_EVENT_LOOP": "asyncio"})
    assert loops.run(which(), chosen.event_loop) == "asyncio"


@pytest.mark.parametrize(("argv", "prog", "argument"), [
    (["config", "check", ""], "callhub config check", "file"),
    (["--config", "", "config", "check"], "callhub", "--config"),
    (["config", "check", "--config", ""], "callhub config check", "--config"),
    (["report", "--config="], "callhub report", "--config"),
    (["replay", "--pbx", "", "x.ami"], "callhub replay", "--pbx"),
], ids=["check-file", "config-before", "config-after", "config-equals", "replay-pbx"])
def test_an_empty_config_file_name_is_refused_not_taken_for_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], prog: str, argument: str) -> None:
    """`config check ""` checked the built-in defaults and said all was well (exit 0), as
    if no file was named: a script's unset variable passed for a valid config."""
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # where the defaults' database is, were they taken
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (f"{prog}: error: argument {argument}: must not be empty "
                                    "(leave it out for the default)")


async def test_a_pbx_without_its_ami_login_is_warned_by_check_and_refused_by_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`config check` passed a [[pbx]] with no secret and `run` then refused it naming
    `CALLHUB_PBX_<NAME>_SECRET`, a variable nobody can set. Both now name the PBX's own
    variable; check warns (the secret often comes from the service's environment file,
    not the admin's shell) and stays quiet once it is given."""
    from dataclasses import replace

    from callhub.daemon import Daemon, StartupError, running

    monkeypatch.delenv("CALLHUB_PBX_LAB_2_SECRET", raising=False)
    path = write(tmp_path, '[[pbx]]\nname = "lab-2"\nusername = "callhub"\n')
    said = "pbx[lab-2]: no secret to log in to AMI (`secret` or CALLHUB_PBX_LAB_2_SECRET)"
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"callhub: {said}: callhub run will not start without it")
    monkeypatch.setenv("CALLHUB_PBX_LAB_2_SECRET", "from-the-environment")
    assert main(["config", "check", str(path)]) == 0
    assert "to log in to AMI" not in capsys.readouterr().err
    monkeypatch.delenv("CALLHUB_PBX_LAB_2_SECRET")
    settings = replace(load_settings(str(path)), api_listen=("127.0.0.1", 0),
                       spool_dir=str(tmp_path / "spool"),
                       database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(StartupError) as refused:
        async with running(Daemon(settings)):
            pass
    assert str(refused.value) == said
