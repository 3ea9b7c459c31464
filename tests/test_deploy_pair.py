"""The hot-standby pair's deploy files: deploy/compose.pair.yml adds a second callhub that
runs with the same configuration as the first (the same database and PBXs) but its own
spool volume and ports, and deploy/prometheus/prometheus-pair.yml scrapes both."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import (
    COMPOSE,
    DEPLOY,
    PROMETHEUS,
    bind_mounts,
    callhub_settings,
    check_scrape_config,
    example_env,
    service_env,
)

from callhub.config import load_settings

PAIR = DEPLOY / "compose.pair.yml"
PROMETHEUS_PAIR = DEPLOY / "prometheus" / "prometheus-pair.yml"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def test_the_standby_service_is_the_first_one_with_its_own_spool_and_ports() -> None:
    env = example_env()
    base, pair = load(COMPOSE)["services"], load(PAIR)["services"]
    first, standby = base["callhub"], pair["callhub-standby"]
    first_env, standby_env = service_env(first, env), service_env(standby, env)
    # Everything but the two listening addresses is the first one's.
    differ = {k for k in first_env.keys() | standby_env.keys()
              if first_env.get(k) != standby_env.get(k)}
    assert differ == {"CALLHUB_API_LISTEN", "CALLHUB_FASTAGI_LISTEN"}
    for key in ("build", "network_mode", "depends_on", "command"):
        assert standby[key] == first[key], key
    mounts = bind_mounts(standby)
    settings = load_settings(mounts[standby_env["CALLHUB_CONFIG"]], env=standby_env)
    first_settings = callhub_settings(env)
    assert settings.database_url == first_settings.database_url
    assert settings.database_url.startswith("postgresql")  # a pair needs PostgreSQL
    assert settings.pbxs == first_settings.pbxs
    assert settings.api_listen != first_settings.api_listen
    assert settings.fastagi_listen != first_settings.fastagi_listen
    # Its own spool: a volume of its own at the spool's place.
    volume = next(v for v in standby["volumes"] if v.endswith(":/var/lib/callhub"))
    first_volume = next(v for v in first["volumes"] if v.endswith(":/var/lib/callhub"))
    assert volume != first_volume and volume.split(":")[0] in load(PAIR)["volumes"]
    # Its API is published and probed on its own port, and Prometheus scrapes both.
    port = settings.api_listen[1]
    assert any(str(p).endswith(f":{port}") for p in pair["asterisk"]["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(standby["healthcheck"]["test"])
    [mount] = pair["prometheus"]["volumes"]
    source, target = mount.split(":")[:2]
    assert (COMPOSE.parent / source).resolve() == PROMETHEUS_PAIR.resolve()
    assert target in bind_mounts(base["prometheus"])  # in place of prometheus.yml
    job = next(j for j in load(PROMETHEUS_PAIR)["scrape_configs"]
               if j["job_name"] == "callhub")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"asterisk:{first_settings.api_listen[1]}", f"asterisk:{port}"}
    single = load(PROMETHEUS)
    assert {k: v for k, v in load(PROMETHEUS_PAIR).items() if k != "scrape_configs"} == {
        k: v for k, v in single.items() if k != "scrape_configs"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_pair_scrape_config(tmp_path: Path) -> None:
    check_scrape_config(load(PROMETHEUS_PAIR), tmp_path)
