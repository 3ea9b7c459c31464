"""Deployment files: they parse, and they agree with what callhub exports and reads.

Docker, Prometheus, Grafana and Asterisk cannot run here, so each file is read
the way its program reads it and checked against callhub itself: metric
names against a live registry, environment variables against the settings
loader, ports and user names across compose, prometheus.yml, manager.conf and
the example configuration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from metrics_fixtures import make_record

from callhub.ami import native
from callhub.ami.correlator import ROUTE_RESULT_VARIABLE
from callhub.api.health import OPERATIONS as HEALTH_OPERATIONS
from callhub.api.limits import HttpLimits
from callhub.config import ENV_OVERRIDES, Settings, load_settings, parse_listen
from callhub.metrics.collectors import CallhubMetrics
from callhub.metrics.http import METRICS_PATH
from callhub.routing.metrics import RoutingMetrics
from callhub.sms.metrics import SmsMetrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "callhub.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE_CONFIG = DEPLOY / "callhub.toml"
MANAGER = DEPLOY / "asterisk" / "manager.conf"
QUEUES = DEPLOY / "asterisk" / "queues.conf"
EXTENSIONS = DEPLOY / "asterisk" / "extensions.conf"
UNIT = DEPLOY / "systemd" / "callhub.service"

METRIC = re.compile(r"\b(callhub_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(callhub_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')


# -- what callhub exports ------------------------------------------------------------------

def exported() -> dict[str, set[str]]:
    """Every sample name callhub serves -> its label names (le included for buckets).

    Every metric is given a value first, so that labelled ones have a series.
    """
    metrics = CallhubMetrics(agents=["PJSIP/1001"], pbxs=["main"], clock=lambda: 1.8e9)
    metrics.observe_call(make_record(arrived_at=1.8e9 - 60, outcome="abandoned", reason="in_queue",
                                     short_abandon=True, answered_at=None))
    metrics.observe_call(make_record(arrived_at=1.8e9 - 30))
    for gauge in (metrics.active_calls, metrics.ami_connected):
        gauge.labels("main").set(1)
    for counter in (metrics.ami_events, metrics.ami_malformed, metrics.ami_reconnects):
        counter.labels("main").inc()
    metrics.observe_callback(60)
    routing = RoutingMetrics(metrics.registry)
    routing.route_requests.labels("hotline", "agents").inc()
    routing.route_seconds.observe(0.001)
    sms = SmsMetrics(metrics.registry, lines=["hotline"])
    sms.sent("hotline", 30.0)
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    # A gauge computed at scrape time from a rota has no series without one.
    names.setdefault("callhub_agents_on_duty", {"line"})
    return names


def rendered_le(name: str) -> set[str]:
    """The `le` values a histogram is served with (the client writes 3 as "3.0")."""
    metrics = CallhubMetrics()
    metrics.observe_call(make_record())
    return {s.labels["le"] for f in metrics.registry.collect() for s in f.samples
            if s.name == name and "le" in s.labels}


def check_promql(expr: str, where: str, names: dict[str, set[str]]) -> None:
    for metric in METRIC.findall(expr):
        assert metric in names, f"{where}: {metric} is not exported by callhub"
    for metric, matchers in SELECTOR.findall(expr):
        for label, value in MATCHER.findall(matchers):
            assert label in names[metric], f"{where}: {metric} has no label {label!r}"
            if label == "le":
                assert value in rendered_le(metric), (
                    f"{where}: {metric} has no bucket le={value!r} "
                    f"(served: {sorted(rendered_le(metric))})")


# -- dashboard and alert rules -------------------------------------------------------------

def dashboard_queries(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query in a dashboard: panel targets and variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            is_query = key in ("expr", "definition") or (
                key == "query" and "callhub_" in str(value))
            if is_query and isinstance(value, str):
                yield f"{path}.{key}", value
            else:
                yield from dashboard_queries(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            title = value.get("title", i) if isinstance(value, dict) else i
            yield from dashboard_queries(value, f"{path}[{title}]")


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_dashboard_parses_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = exported()
    queries = list(dashboard_queries(dashboard["panels"]))
    queries += list(dashboard_queries(dashboard["templating"]))
    assert len(queries) >= 20
    for where, expr in queries:
        check_promql(expr, where, names)
    used = {m for _, expr in queries for m in METRIC.findall(expr)}
    # The panels the issue asks for: each needs its metric on the wall.
    for metric in ("callhub_answered_within_rings_ratio", "callhub_call_rings_bucket",
                   "callhub_calls_total", "callhub_call_reasons_total",
                   "callhub_worklist_pending", "callhub_callback_seconds_bucket",
                   "callhub_agent_attempts_total", "callhub_ami_connected",
                   "callhub_db_buffered_calls", "callhub_db_write_errors_total",
                   "callhub_answered_within_target_ratio", "callhub_line_answer_rate_target"):
        assert metric in used, f"the dashboard shows nothing of {metric}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for where, expr in queries:
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables or var.startswith("__"), f"{where}: ${var} is undefined"
    # No target typed into the dashboard: each line's is the exported gauge (issue 13).
    assert "target" not in variables


def test_alert_rules_parse_use_exported_metrics_and_cover_the_issue() -> None:
    names = exported()
    rules = alert_rules()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        check_promql(rule["expr"], rule["alert"], names)
    by_metric = {m: r for r in rules for m in METRIC.findall(r["expr"])}
    # Each line against its own target: the gauge of its answer-rate target, no number.
    ratio = by_metric["callhub_answered_within_target_ratio"]
    assert ratio["for"] == "30m"
    assert re.search(r"<\s*on\s*\(line\)\s*callhub_line_answer_rate_target", ratio["expr"])
    assert not re.search(r"<\s*[0-9.]+", ratio["expr"])
    assert by_metric["callhub_ami_connected"]["for"] == "1m"
    assert "2 * 3600" in by_metric["callhub_worklist_oldest_pending_timestamp_seconds"]["expr"]
    assert "callhub_db_write_errors_total" in by_metric
    assert "callhub_db_buffered_calls" in by_metric
    # The alert's target is the one the dashboard draws beside each line's ratio.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    drawn = [expr for _, expr in dashboard_queries(dashboard["panels"])]
    assert any(expr.strip() == "callhub_line_answer_rate_target" for expr in drawn)


def test_docs_promql_uses_exported_metrics_and_served_buckets() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = {page.relative_to(ROOT): re.findall(r"```promql\n(.*?)```",
                                                  page.read_text(encoding="utf-8"), re.S)
              for page in pages}
    assert blocks[Path("docs/metrics.md")], "docs/metrics.md has no ```promql block"
    names = exported()
    for page, found in blocks.items():
        for block in found:
            check_promql(block, str(page), names)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus')")
def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path: Path) -> None:
    rules = subprocess.run(["promtool", "check", "rules", str(ALERTS)],
                           capture_output=True, text=True, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    check_scrape_config(yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8")), tmp_path)


def check_scrape_config(config: dict[str, Any], tmp_path: Path) -> None:
    """promtool accepts a shipped scrape config with the shipped alert rules."""
    config["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    checked = subprocess.run(["promtool", "check", "config", str(path)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- docker compose -----------------------------------------------------------------------

VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def substitute(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} interpolation."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise AssertionError(f"compose needs ${name}: {arg}")
        return ""

    return VARIABLE.sub(one, value)


def example_env() -> dict[str, str]:
    """The variables deploy/compose.env.example tells the admin to set."""
    env = {}
    for line in (DEPLOY / "compose.env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def service_env(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: substitute(str(v), env) for k, v in raw.items()}


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (./...)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def callhub_settings(env: Mapping[str, str]) -> Settings:
    """What callhub in compose would run with: its mounted config plus its environment."""
    service = compose()["services"]["callhub"]
    container_env = service_env(service, env)
    config = bind_mounts(service)[container_env["CALLHUB_CONFIG"]]
    return load_settings(config, env=container_env)


def test_compose_wires_the_five_services_with_existing_files() -> None:
    services = compose()["services"]
    assert set(services) == {"asterisk", "postgres", "callhub", "prometheus", "grafana"}
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: mounts missing {source} at {target}"
    assert services["callhub"]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "the image must not run as root"
    assert re.search(r'^ENTRYPOINT \["callhub"\]', dockerfile, re.M)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (NAME, arguments), stage by stage (a FROM starts one;
    continued lines joined, comments left out)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, args = line.strip().partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((name.upper(), args.strip()))
    return stages


def test_the_image_is_built_with_the_compiled_hot_path() -> None:
    """The build stage gets every file the package's build reads (without setup.py the
    wheel is plain Python, and the image ran the AMI hot path at a third more CPU), and
    the image's build stops when the hot path would run as Python."""
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage with the compiler, then the image"
    copied = {source for name, args in stages[0] if name == "COPY"
              for source in args.split()[:-1]}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", "setup.py", pyproject["project"]["readme"], "callhub"}
    assert needed <= copied, f"the build stage lacks {sorted(needed - copied)}"
    assert any(name == "RUN" and "wheel" in args for name, args in stages[0])
    assert any(name == "COPY" and args.startswith("--from=") for name, args in stages[-1])
    checks = [re.search(r"python -c '([^']*)'", args) for name, args in stages[-1]
              if name == "RUN" and "native.CHOSEN" in args]
    assert len(checks) == 1 and checks[0], "one RUN in the image checks the hot path"
    # The check itself, run here: it passes exactly when the hot path runs compiled.
    check = checks[0].group(1)
    here = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    assert here.returncode == (0 if native.CHOSEN.runs == "compiled" else 1), here.stderr
    assert f"AMI hot path: {native.CHOSEN.runs}" in here.stdout
    python = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, native.PURE_PYTHON: "1"}, check=False)
    assert python.returncode == 1 and "AMI hot path: python" in python.stdout


def test_compose_environment_is_callhub_configuration() -> None:
    env = example_env()
    service = compose()["services"]["callhub"]
    container_env = service_env(service, env)
    settings = callhub_settings(env)
    pbx_vars = {f"CALLHUB_PBX_{re.sub(r'[^0-9A-Za-z]', '_', p.name).upper()}_{key}"
                for p in settings.pbxs for key in ("HOST", "PORT", "USERNAME", "SECRET")}
    for var in container_env:
        assert var in ENV_OVERRIDES or var in pbx_vars or var == "CALLHUB_CONFIG", (
            f"callhub reads no {var}")
    # Each variable reached the setting it names.
    assert settings.database_url == container_env["CALLHUB_DATABASE_URL"]
    assert settings.api_listen == parse_listen(container_env["CALLHUB_API_LISTEN"], "api")
    main = settings.pbx("main")
    assert main.secret == env["CALLHUB_AMI_SECRET"]
    # Every ${VAR:?} compose insists on is in the example .env.
    for var, op, _ in VARIABLE.findall(COMPOSE.read_text(encoding="utf-8")):
        if op in (":?", "?"):
            assert var in env, f"compose.env.example lacks {var}"


def test_compose_ports_and_hosts_line_up() -> None:
    env = example_env()
    data = compose()
    services = data["services"]
    settings = callhub_settings(env)
    callhub = services["callhub"]
    # callhub shares Asterisk's network namespace, so AMI and FastAGI stay on loopback.
    assert callhub["network_mode"] == "service:asterisk"
    main = settings.pbx("main")
    assert main.host == "127.0.0.1"
    assert settings.fastagi_listen[0] == "127.0.0.1"
    # Its API port is published on the namespace's owner and scraped there.
    api_port = settings.api_listen[1]
    published = [str(p) for p in services["asterisk"]["ports"]]
    assert any(p.endswith(f":{api_port}") for p in published), published
    scrape = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "callhub")
    assert job["metrics_path"] == METRICS_PATH
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"asterisk:{api_port}"]
    # The database URL points at the postgres service with its user, password and db.
    pg = service_env(services["postgres"], env)
    url = settings.database_url
    assert url.startswith("postgresql+asyncpg://")
    assert (f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
            f"{pg['POSTGRES_DB']}") in url
    assert callhub["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Its health check asks the API's token-free liveness route on the API port.
    probe = " ".join(callhub["healthcheck"]["test"])
    health = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+?)'", probe)
    assert health and int(health.group(1)) == api_port, probe
    assert any(op.path == health.group(2) and op.role is None for op in HEALTH_OPERATIONS)
    # Prometheus loads the alert rules from where compose mounts them.
    prom_mounts = bind_mounts(services["prometheus"])
    for rule_file in scrape["rule_files"]:
        assert prom_mounts[rule_file] == ALERTS.resolve()
    # Grafana's provisioned data source is this Prometheus, its dashboards this folder.
    graf_mounts = bind_mounts(services["grafana"])
    provisioning = graf_mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "callhub.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert graf_mounts[folder] == DASHBOARD.parent.resolve()


# -- Asterisk configuration ---------------------------------------------------------------

def asterisk_conf(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of an Asterisk .conf file -> (key, value) in order (repeats kept)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(?<!\\);.*", "", raw).strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\](\(.*\))?", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        assert current is not None, f"{path.name}: {raw!r} before any [section]"
        match = re.fullmatch(r"([^=]+?)\s*=>?\s*(.*)", line)
        assert match, f"{path.name}: cannot parse {raw!r}"
        current.append((match.group(1).strip(), match.group(2).strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def test_manager_conf_gives_callhub_a_least_privilege_local_user() -> None:
    conf = asterisk_conf(MANAGER)
    general = dict(conf["general"])
    assert general["enabled"] == "yes"
    assert general["bindaddr"] == "127.0.0.1"
    assert general["timestampevents"] == "yes"  # the correlator times calls by it
    settings = load_settings(EXAMPLE_CONFIG, env={})
    main = settings.pbx("main")
    assert int(general["port"]) == main.port
    user = conf[main.username or ""]
    read = set(values(user, "read")[0].split(","))
    write = set(values(user, "write")[0].split(","))
    assert read == {"call", "agent", "dialplan"}
    # CoreShowChannels (reporting) only: shipped read-only. The PJSIP endpoint listings
    # need "system" (which also allows Reload, Restart): an opt-in the docs describe.
    assert write == {"reporting"}
    assert not write & {"call", "originate", "command", "config", "agent", "user", "all"}
    assert values(user, "deny") == ["0.0.0.0/0.0.0.0"]
    assert values(user, "permit") == ["127.0.0.1/255.255.255.255"]
    assert values(user, "secret") and values(user, "secret")[0]
    assert set(conf) == {"general", main.username}


def test_queues_conf_members_are_configured_agents() -> None:
    conf = asterisk_conf(QUEUES)
    settings = load_settings(EXAMPLE_CONFIG, env={})
    agents = set(settings.pbx("main").agents)
    queues = {name: section for name, section in conf.items() if name != "general"}
    assert queues
    for name, section in queues.items():
        members = [m.split(",")[0] for m in values(section, "member")]
        assert members and set(members) <= agents, (name, members)
        assert dict(section)["ringinuse"] == "no"


def dialplan(section: list[tuple[str, str]]) -> dict[str, list[str]]:
    """exten/same lines of one context -> extension -> its applications in order."""
    extens: dict[str, list[str]] = {}
    current = ""
    for key, value in section:
        if key == "exten":
            current, _, rest = value.partition(",")
            extens.setdefault(current, []).append(rest.partition(",")[2])
        elif key == "same":
            extens[current].append(value.partition(",")[2])
    return extens


def test_extensions_conf_routes_through_callhub_and_falls_back() -> None:
    conf = asterisk_conf(EXTENSIONS)
    settings = load_settings(EXAMPLE_CONFIG, env={})
    main = settings.pbx("main")
    globals_ = dict(conf.get("globals", []))
    text = EXTENSIONS.read_text(encoding="utf-8")
    host, port = settings.fastagi_listen
    assert f"agi://{host}:{port}/" in text, "the dialplan must ask callhub's FastAGI"
    for context in main.inbound_contexts:
        assert context in conf, f"no [{context}] for inbound calls"
        extens = dialplan(conf[context])
        routed = next(apps for apps in extens.values() if any(
            a.startswith("AGI(") for a in apps))
        # The loop over the targets callhub returned, each with its own ring timeout: the
        # i-th of CALLHUB_RING_TIMEOUTS, else the line's CALLHUB_RING_TIMEOUT (the dialplan
        # run itself: tests/test_routing_dialplan.py).
        assert any(a.startswith("While(") for a in routed)
        assert any("CALLHUB_TARGETS" in a for a in routed if a.startswith("Dial("))
        assert any("CUT(CALLHUB_RING_TIMEOUTS," in a for a in routed)
        assert any("${CALLHUB_RING_TIMEOUT}" in a for a in routed if not a.startswith("Dial("))
        # When the AGI fails (callhub down or silent), the second of a pair is asked, then
        # a jump to a plain Dial.
        assert "AGI(${CALLHUB_AGI_2})" in routed and "CALLHUB_AGI_2" in globals_
        jump = next(a for a in routed if a.startswith("GotoIf(") and '!= "SUCCESS"' in a)
        assert "AGISTATUS" in jump
        target = re.search(r"\?([\w-]+),1\)", jump)
        assert target, jump
        fallback = extens[target.group(1)]
        dials = [a for a in fallback if a.startswith("Dial(")]
        assert dials and "CALLHUB_TARGET" not in dials[0], fallback
        # ... whose device is set in the dialplan itself, not by callhub.
        for var in re.findall(r"\$\{(\w+)\}", dials[0]):
            assert globals_.get(var), f"{var} has no value in [globals]"
    # The routing result callhub sets is the one the correlator reads from VarSet.
    assert ROUTE_RESULT_VARIABLE in text


# -- systemd ------------------------------------------------------------------------------

def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_unprivileged_hardened_and_can_write_its_state() -> None:
    service = unit_file(UNIT)["Service"]
    one = {k: v[-1] for k, v in service.items()}
    assert one["User"] not in ("", "root") and one["Group"] not in ("", "root")
    assert one["Restart"] == "on-failure"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "ProtectHome": "yes", "PrivateDevices": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert one.get(key) == value, key
    assert "CALLHUB_CONFIG=/etc/callhub/callhub.toml" in service["Environment"]
    # file descriptors for every connection the API lets in, several times over
    assert int(one["LimitNOFILE"]) >= 4 * HttpLimits().max_connections
    assert one["ExecStart"].split()[1:] == ["run"]
    writable = one["ReadWritePaths"].split()
    settings = load_settings(EXAMPLE_CONFIG, env={})
    db_path = settings.database_url.split(":///", 1)[1]
    for path in (db_path, settings.spool_dir):
        assert any(Path(path).is_relative_to(w) for w in writable), (
            f"{path} is not writable under ProtectSystem=strict")


def test_the_commands_the_deploy_files_run_exist() -> None:
    """systemd's Exec lines, the image's entrypoint and compose's command parse as callhub CLI."""
    from callhub.cli import build_parser

    service = unit_file(UNIT)["Service"]
    commands = [line.split()[1:] for key in ("ExecStartPre", "ExecStart")
                for line in service.get(key, [])]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd
    commands.append(json.loads(cmd.group(1)))
    commands.append(compose()["services"]["callhub"]["command"])
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`callhub {' '.join(argv)}` is not a callhub command")
