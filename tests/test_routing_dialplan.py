"""The shipped dialplan, run: deploy/asterisk/extensions.conf's inbound extension is walked
step by step (variables, CUT, $[...] expressions, GotoIf, While/EndWhile, ExecIf, Dial) with
the variables a real FastAGI round trip set, and the Dial()s it would make are compared with
the rota: every agent rings for its own timeout, the fallback for the line's, and an older
callhub (no CALLHUB_RING_TIMEOUTS) or no callhub at all still gets a sensible Dial.

The walker knows only the applications and functions this dialplan uses; anything else fails
the test, so a change to the dialplan that it cannot follow is noticed, not skipped."""

from __future__ import annotations

import asyncio
import operator
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from routing_fixtures import HOTLINE_DID, AgiServer, berlin

from callhub.sim.agi_client import AgiAnswer, agi_request, asterisk_environment
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.routed_calls import AgiCallSimulator

EXTENSIONS = Path(__file__).parent.parent / "deploy" / "asterisk" / "extensions.conf"
Step = tuple[str | None, str]  # (label, "App(args)")
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge}


def parse(text: str) -> tuple[dict[str, str], dict[str, dict[str, list[Step]]]]:
    """[globals] and every context's extensions as (label, application) steps."""
    globals_: dict[str, str] = {}
    contexts: dict[str, dict[str, list[Step]]] = {}
    context = ""
    exten = ""
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            context = line.strip("[]")
            contexts[context] = {}
            continue
        if context == "globals":
            key, _, value = line.partition("=")
            globals_[key.strip()] = value.strip()
            continue
        kind, _, rest = line.partition("=>")
        if kind.strip() == "exten":
            exten, _, rest = rest.strip().partition(",")
        priority, _, app = rest.strip().partition(",")
        label = re.fullmatch(r"\w+\((\w+)\)", priority)
        contexts[context].setdefault(exten, []).append((label[1] if label else None, app))
    return globals_, contexts


def _expression(text: str) -> str:
    """Asterisk's $[...]: quoted strings, numbers, = != < <= > >= + - & |."""
    tokens = re.findall(r'"[^"]*"|!=|<=|>=|[=<>+\-&|]|[^\s"=<>+\-&|!]+', text)

    def value(token: str) -> str:
        return token[1:-1] if token.startswith('"') else token

    def truthy(v: str) -> bool:
        return v not in ("", "0")

    def split(items: list[str], ops: tuple[str, ...]) -> tuple[list[str], str, list[str]] | None:
        for i in range(len(items) - 1, -1, -1):
            if items[i] in ops:
                return items[:i], items[i], items[i + 1:]
        return None

    def evaluate(items: list[str]) -> str:
        for ops in (("|",), ("&",), ("=", "!=", "<", "<=", ">", ">="), ("+", "-")):
            parts = split(items, ops)
            if parts is None:
                continue
            left, op, right = evaluate(parts[0]), parts[1], evaluate(parts[2])
            if op == "|":
                return "1" if truthy(left) or truthy(right) else "0"
            if op == "&":
                return "1" if truthy(left) and truthy(right) else "0"
            if op in ("+", "-"):
                result = float(left) + (float(right) if op == "+" else -float(right))
                return str(int(result)) if result.is_integer() else str(result)
            try:
                holds = COMPARE[op](float(left), float(right))
            except ValueError:
                holds = COMPARE[op](left, right)
            return "1" if holds else "0"
        assert len(items) == 1, f"cannot evaluate $[{text}]"
        return value(items[0])

    return evaluate(tokens)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Substitute ${VAR}, ${CUT(VAR,sep,n)} and $[expression], innermost first."""
    while True:
        start = max(text.rfind("${"), text.rfind("$["))
        if start < 0:
            return text
        close = text.index("}" if text[start + 1] == "{" else "]", start)
        inner = text[start + 2:close]
        if text[start + 1] == "[":
            value = _expression(inner)
        elif cut := re.fullmatch(r"CUT\((\w+),(.),(\d+)\)", inner):
            fields = variables.get(cut[1], "").split(cut[2])
            n = int(cut[3])
            value = fields[n - 1] if n <= len(fields) else ""
        else:
            assert re.fullmatch(r"\w+", inner), f"the walker does not know ${{{inner}}}"
            value = variables.get(inner, "")
        text = text[:start] + value + text[close + 1:]


def run_dialplan(did: str, agi: Callable[[str], dict[str, str] | None],
                 answers: Callable[[str], bool] = lambda device: False,
                 context: str = "from-pstn",
                 globals_set: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
    """The Dial()s an inbound call on `did` makes: (device, timeout) in order. `agi(url)`
    returns the variables callhub set, or None when the AGI connection failed.
    `globals_set` changes [globals] as an admin would (e.g. CALLHUB_AGI_2 for a pair)."""
    globals_, contexts = parse(EXTENSIONS.read_text(encoding="utf-8"))
    extens = contexts[context]
    exten = next(e for e in extens if e == did or (e.startswith("_X") and did.isdigit()))
    variables = {**globals_, **(globals_set or {}), "EXTEN": did}
    dials: list[tuple[str, int]] = []
    steps = extens[exten]
    i = 0

    def matching(index: int, step: int, open_: str, close: str) -> int:
        depth = 0
        while True:
            app = steps[index][1]
            depth += app.startswith(open_ + "(")
            depth -= app.startswith(close + "(")
            if depth == 0:
                return index
            index += step

    for _ in range(1000):
        app_name, _, args = steps[i][1].partition("(")
        args = args[:-1]
        if app_name == "ExecIf":  # ExecIf(cond?App(args)): both expanded first
            cond, _, app = expand(args, variables).partition("?")
            if cond not in ("", "0"):
                app_name, _, args = app.partition("(")
                args = args[:-1]
            else:
                app_name = "NoOp"
        elif app_name not in ("While", "GotoIf"):
            args = expand(args, variables)
        nxt = i + 1
        if app_name == "NoOp":
            pass
        elif app_name == "Set":
            name, _, value = args.partition("=")
            variables[name.lstrip("_")] = expand(value, variables)
        elif app_name == "AGI":
            assert args.startswith("agi://"), args
            answer = agi(args)
            variables["AGISTATUS"] = "FAILURE" if answer is None else "SUCCESS"
            variables.update(answer or {})
        elif app_name == "GotoIf":
            cond, _, targets = expand(args, variables).partition("?")
            if_true, _, if_false = targets.partition(":")
            target = if_true if cond not in ("", "0") else if_false
            if target:
                if "," in target:
                    exten, _, _ = target.partition(",")
                    steps, nxt = extens[exten], 0
                else:
                    nxt = next(n for n, (label, _) in enumerate(steps) if label == target)
        elif app_name == "While":
            if expand(args, variables) in ("", "0"):
                nxt = matching(i, 1, "While", "EndWhile") + 1
        elif app_name == "EndWhile":
            nxt = matching(i, -1, "EndWhile", "While")
        elif app_name == "Dial":
            device, _, timeout = args.partition(",")
            dials.append((device, int(timeout.split(",")[0])))
            variables["DIALSTATUS"] = "ANSWER" if answers(device) else "NOANSWER"
        elif app_name == "Hangup":
            return dials
        else:
            raise AssertionError(f"the walker does not know {app_name}()")
        i = nxt
    raise AssertionError("the dialplan did not end")


def test_expressions_and_cut() -> None:
    variables = {"T": "PJSIP/1&PJSIP/2", "I": "2", "E": ""}
    assert expand("${CUT(T,&,${I})}", variables) == "PJSIP/2"
    assert expand("${CUT(T,&,3)}", variables) == ""
    assert expand('$["${E}" = ""]', variables) == "1"
    assert expand("$[${I} <= 2]", variables) == "1" and expand("$[${I} + 1]", variables) == "3"
    assert expand('$["a" != "a" | "${E}" = ""]', variables) == "1"


async def fastagi_variables(server: AgiServer, did: str = HOTLINE_DID) -> dict[str, str]:
    env = asterisk_environment(did=did, caller="+8613800000011", host=server.host,
                               port=server.port)
    answer = await agi_request(server.host, server.port, env)
    assert answer.answered
    return answer.variables


async def test_each_agent_rings_for_its_own_timeout(agi_server: AgiServer) -> None:
    variables = await fastagi_variables(agi_server)
    urls: list[str] = []

    def agi(url: str) -> dict[str, str]:
        urls.append(url)
        return variables

    # ann the line's 12 s, ben his own 20 s, cai the hotline's 8 s, the fallback the line's
    assert run_dialplan(HOTLINE_DID, agi) == [
        ("PJSIP/1001", 12), ("PJSIP/1002", 20), ("PJSIP/1003", 8), ("PJSIP/1000", 12)]
    assert len(urls) == 1 and urls[0].startswith("agi://")  # asked callhub once
    # the next call starts at ben; each timeout stays with its agent
    variables = await fastagi_variables(agi_server)
    assert run_dialplan(HOTLINE_DID, lambda url: variables,
                        answers=lambda device: device == "PJSIP/1003") == [
        ("PJSIP/1002", 20), ("PJSIP/1003", 8)]


async def test_the_simulator_rings_as_the_dialplan_does(agi_server: AgiServer,
                                                        ami_simulator: AmiSimulator) -> None:
    sim = AgiCallSimulator(ami_simulator, agi_server.host, agi_server.port)
    answer, devices, timeouts = await sim.route(HOTLINE_DID, "+8613800000011", 1.8e9)
    assert run_dialplan(HOTLINE_DID, lambda url: answer.variables) == list(
        zip(devices, timeouts, strict=True))


async def test_an_older_callhub_without_per_agent_timeouts(agi_server: AgiServer) -> None:
    variables = await fastagi_variables(agi_server)
    del variables["CALLHUB_RING_TIMEOUTS"]
    assert run_dialplan(HOTLINE_DID, lambda url: variables) == [
        ("PJSIP/1001", 12), ("PJSIP/1002", 12), ("PJSIP/1003", 12), ("PJSIP/1000", 12)]


async def test_nobody_on_duty_rings_the_fallback(agi_server: AgiServer) -> None:
    agi_server.router.clock = lambda: berlin("2026-12-25 10:00")  # closed for Christmas
    variables = await fastagi_variables(agi_server)
    assert run_dialplan(HOTLINE_DID, lambda url: variables) == [("PJSIP/1000", 12)]


@pytest.mark.parametrize("variables", [None, {}])  # no connection; connected, no answer
def test_callhub_not_answering_dials_the_dialplan_default(
        variables: dict[str, str] | None) -> None:
    globals_, _ = parse(EXTENSIONS.read_text(encoding="utf-8"))
    assert run_dialplan(HOTLINE_DID, lambda url: variables) == [
        (globals_["CALLHUB_DEFAULT"], int(globals_["CALLHUB_DEFAULT_TIMEOUT"]))]


# -- a pair: the dialplan asks the first callhub, then the second (issue 11) -------------


def agi_url(host: str, port: int) -> str:
    return f"agi://{host}:{port}/route"


async def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


def asked_over_the_network(answers: Mapping[str, AgiAnswer]
                           ) -> tuple[Callable[[str], dict[str, str] | None], list[str]]:
    """An `agi(url)` for run_dialplan from real FastAGI answers (None when the connection
    failed, as AGISTATUS=FAILURE), and the list of the URLs asked, in order."""
    asked: list[str] = []

    def agi(url: str) -> dict[str, str] | None:
        asked.append(url)
        answer = answers[url]
        return None if answer.status != "SUCCESS" else dict(answer.variables)

    return agi, asked


async def ask(url: str) -> AgiAnswer:
    host, _, port = url.removeprefix("agi://").removesuffix("/route").rpartition(":")
    env = asterisk_environment(did=HOTLINE_DID, caller="+8613800000011", host=host,
                               port=int(port))
    return await agi_request(host, int(port), env)


async def test_the_first_callhub_down_the_second_answers(agi_server: AgiServer) -> None:
    dead = agi_url("127.0.0.1", await closed_port())
    live = agi_url(agi_server.host, agi_server.port)
    answers = {dead: await ask(dead), live: await ask(live)}
    assert answers[dead].status == "FAILURE" and answers[live].answered
    agi, asked = asked_over_the_network(answers)
    dials = run_dialplan(HOTLINE_DID, agi, globals_set={"CALLHUB_AGI": dead,
                                                         "CALLHUB_AGI_2": live})
    assert asked == [dead, live]
    assert dials == [("PJSIP/1001", 12), ("PJSIP/1002", 20), ("PJSIP/1003", 8),
                     ("PJSIP/1000", 12)]  # the agents callhub #2 chose, then the fallback


async def test_the_first_callhub_answers_the_second_is_not_asked(agi_server: AgiServer
                                                                 ) -> None:
    live = agi_url(agi_server.host, agi_server.port)
    dead = agi_url("127.0.0.1", await closed_port())
    answers = {live: await ask(live)}
    agi, asked = asked_over_the_network(answers)
    dials = run_dialplan(HOTLINE_DID, agi, globals_set={"CALLHUB_AGI": live,
                                                         "CALLHUB_AGI_2": dead})
    assert asked == [live]
    assert dials[0] == ("PJSIP/1001", 12)


@pytest.mark.parametrize("first", ["refused", "no answer"])
async def test_both_callhubs_down_dials_the_default(first: str) -> None:
    globals_, _ = parse(EXTENSIONS.read_text(encoding="utf-8"))
    default = (globals_["CALLHUB_DEFAULT"], int(globals_["CALLHUB_DEFAULT_TIMEOUT"]))
    one = agi_url("127.0.0.1", await closed_port())
    two = agi_url("127.0.0.1", await closed_port())
    answers = {one: await ask(one), two: await ask(two)}
    if first == "no answer":  # connected, then closed before CALLHUB_ROUTE_RESULT
        answers[one] = AgiAnswer(status="SUCCESS", variables={"CALLHUB_TARGETS": "PJSIP/1001"})
    agi, asked = asked_over_the_network(answers)
    assert run_dialplan(HOTLINE_DID, agi, globals_set={"CALLHUB_AGI": one,
                                                       "CALLHUB_AGI_2": two}) == [default]
    assert asked == [one, two]
    # one callhub only (CALLHUB_AGI_2 empty, as shipped): asked once, then the default
    agi, asked = asked_over_the_network(answers)
    assert run_dialplan(HOTLINE_DID, agi, globals_set={"CALLHUB_AGI": one}) == [default]
    assert asked == [one]


async def test_the_simulator_fails_over_as_the_dialplan_does(agi_server: AgiServer,
                                                             ami_simulator: AmiSimulator
                                                             ) -> None:
    port = await closed_port()
    sim = AgiCallSimulator(ami_simulator, "127.0.0.1", port,
                           second=(agi_server.host, agi_server.port))
    answer, devices, timeouts = await sim.route(HOTLINE_DID, "+8613800000011", 1.8e9)
    assert answer.answered
    assert list(zip(devices, timeouts, strict=True)) == [
        ("PJSIP/1001", 12), ("PJSIP/1002", 20), ("PJSIP/1003", 8), ("PJSIP/1000", 12)]
