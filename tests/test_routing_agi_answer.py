"""The answer's one `EXEC MSet` line read back through the port of Asterisk's two parsers
(res_agi.c parse_args, main/app.c __ast_app_separate_args): any value arrives as sent, and
the port itself follows the C on the cases its comments and MSet's documentation name."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from callhub.routing.agi_answer import MAX_LINE, fits, mset_commands, mset_value, quote
from callhub.routing.chooser import Decision
from callhub.routing.fastagi import decision_variables
from callhub.routing.model import Agent
from callhub.sim.agi_parse import agi_variables, parse_args, separate_args

NAMES = [f"CALLHUB_V{i}" for i in range(8)]
# what either parser treats specially, plus spaces, tabs and some non-ASCII
HOSTILE = st.text(alphabet=st.sampled_from(list('\\",()[]=|; \t${}ab&Zü张\'')), max_size=40)


@given(st.lists(HOSTILE, min_size=1, max_size=8))
def test_any_values_arrive_intact(values: list[str]) -> None:
    variables = list(zip(NAMES, values, strict=False))
    [line] = mset_commands(variables)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert agi_variables(line.decode("utf-8").rstrip("\n")) == variables


@given(st.lists(st.text(alphabet=st.sampled_from(list("(,\\\"x张")), max_size=300),
                min_size=8, max_size=8))
def test_long_answers_are_split_into_lines_res_agi_reads_whole(values: list[str]) -> None:
    variables = list(zip(NAMES, values, strict=True))
    lines = mset_commands(variables)
    assert all(len(line) <= MAX_LINE for line in lines)
    read = [p for line in lines for p in agi_variables(line.decode("utf-8").rstrip("\n"))]
    assert read == variables  # in order: the last variable in the last line


def test_the_escapes() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert mset_value('a,b"c\\d(e)[f]=g') == 'a\\,b\\"c\\\\d\\(e\\)\\[f\\]=g'


def test_parse_args_as_res_agi() -> None:
    assert parse_args('EXEC MSet "a b\\"c\\\\d"') == ["EXEC", "MSet", 'a b"c\\d']
    assert parse_args('SET VARIABLE X ""') == ["SET", "VARIABLE", "X", ""]
    assert parse_args("a\\ b  c") == ["a b", "c"]  # an escaped space outside quotes


def test_separate_args_as_app_c() -> None:
    assert separate_args("a,(b,c),[d,e],f", ",", 99) == ["a", "(b,c)", "[d,e]", "f"]
    assert separate_args('x="a,b",y', ",", 99) == ["x=a,b", "y"]  # quotes dropped
    assert separate_args("a\\,b,c\\\\", ",", 99) == ["a,b", "c\\"]
    assert separate_args("a,", ",", 99) == ["a", ""]  # a trailing delimiter: one more
    assert separate_args("n=v=(w", "=", 2) == ["n", "v=(w"]  # the last takes the rest as is
    assert separate_args('n="v"', "=", 2) == ["n", '"v"']


def test_mset_as_asterisk_documents_it() -> None:
    """MSet strips the double quotes around a value; a comma needs a backslash."""
    assert agi_variables('EXEC MSet "A=\\"x\\",B=1\\\\,2"') == [("A", "x"), ("B", "1,2")]
    assert agi_variables('SET VARIABLE A "b c"') == [("A", "b c")]
    assert agi_variables("NOOP") == []


@given(st.integers(1, 150), st.integers(5, 60))
def test_a_target_list_longer_than_a_line_keeps_the_first_agents_that_fit(
        agents: int, name_length: int) -> None:
    """Many agents on duty with long interface names: every command is one line res_agi
    reads whole, and the targets and their timeouts are the first agents, as many as fit."""
    interfaces = [f"PJSIP/{'d' * name_length}{i:03d}" for i in range(agents)]
    decision = Decision("hotline", "routed", tuple(
        Agent(id=f"a{i}", name=f"a{i}", interface=iface) for i, iface in enumerate(interfaces)),
        ring_timeout=15, ring_timeouts=tuple(10 + i % 20 for i in range(agents)))
    lines = mset_commands(decision_variables(decision))
    assert all(len(line) <= MAX_LINE for line in lines)
    got = dict(p for line in lines for p in agi_variables(line.decode().rstrip("\n")))
    sent = got["CALLHUB_TARGETS"].split("&")
    assert sent == interfaces[:len(sent)] and int(got["CALLHUB_TARGET_COUNT"]) == len(sent)
    assert got["CALLHUB_RING_TIMEOUTS"].split("&") == [
        str(t) for t in decision.target_timeouts[:len(sent)]]
    assert got["CALLHUB_ROUTE_RESULT"] == "routed"
    if len(sent) < agents:  # cut only where one more would not fit
        assert not fits("CALLHUB_TARGETS", "&".join(interfaces[:len(sent) + 1]))
