"""Every recorded trace replays to its ground truth (shared/traces/README.md says how)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from traces_fixtures import all_traces

from callhub.ami.correlator import Correlator
from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth, truth_path
from callhub.ami.parser import iter_file_messages
from callhub.ami.replay import replay_file
from callhub.cli import main
from callhub.records import CallRecord
from callhub.sim.ami_user import AmiUser, event_offsets


@pytest.mark.parametrize("path", all_traces(), ids=lambda p: p.stem)
def test_trace_replays_to_its_ground_truth(path: Path) -> None:
    truth = load_truth(path)
    records = replay_file(path, pbx_from_truth(truth))
    assert compare(records, truth) == []


@pytest.mark.parametrize("path", all_traces(), ids=lambda p: p.stem)
def test_trace_replays_identically_from_any_read_size(path: Path) -> None:
    """Reads of 1..7 bytes split every header and multi-byte name: same records."""
    from callhub.ami.parser import iter_messages
    from callhub.ami.replay import replay_messages

    data = path.read_bytes()
    pbx = pbx_from_truth(load_truth(path))
    whole = [r.to_dict() for r in replay_file(path, pbx)]
    size = 1 + len(data) % 7
    chunks = (data[i:i + size] for i in range(0, len(data), size))
    assert [r.to_dict() for r in replay_messages(iter_messages(chunks), pbx)] == whole


@pytest.mark.parametrize("path", all_traces(), ids=lambda p: p.stem)
def test_the_correlator_fed_only_what_its_filter_keeps_gives_the_same_records(
        path: Path) -> None:
    """The splitter skips events the correlator says it does not read: nothing it does
    read may be among them (a handler added without its event would show here)."""
    from callhub.ami.parser import MessageSplitter

    pbx = pbx_from_truth(load_truth(path))
    whole = [r.to_dict() for r in replay_file(path, pbx)]
    correlator = Correlator(pbx)
    splitter = MessageSplitter(wanted=correlator.event_filter())
    filtered = [r.to_dict() for m in iter_file_messages(path, splitter)
                for r in correlator.feed(m)]
    assert splitter.skipped > 0
    assert filtered == whole


MANAGER_CONF = Path(__file__).resolve().parent.parent / "deploy" / "asterisk" / "manager.conf"


@pytest.mark.parametrize("path", all_traces(), ids=lambda p: p.stem)
def test_what_asterisk_sends_the_shipped_ami_user_gives_the_ground_truth(path: Path) -> None:
    """deploy/asterisk/manager.conf's [callhub] user reads only some event classes and
    filters CEL out: Asterisk never sends it the rest, so no record may need it."""
    from callhub.ami.parser import iter_messages
    from callhub.ami.replay import replay_messages

    data = path.read_bytes()
    sent, _ = shipped_user().cut(data, event_offsets(data))
    assert len(sent) < len(data)  # the recording session read every class
    truth = load_truth(path)
    records = list(replay_messages(iter_messages([sent]), pbx_from_truth(truth)))
    assert compare(records, truth) == []


def test_the_shipped_ami_user_is_sent_its_classes_without_cel() -> None:
    user = shipped_user()
    hangup = b"Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/1001-1\r\n\r\n"
    cel = b"Event: CEL\r\nPrivilege: call,all\r\nEventName: HANGUP\r\n\r\n"
    cdr = b"Event: Cdr\r\nPrivilege: cdr,all\r\nDisposition: ANSWERED\r\n\r\n"
    varset = b"Event: VarSet\r\nPrivilege: dialplan,all\r\nVariable: X\r\n\r\n"
    assert [user.sends(e) for e in (hangup, cel, cdr, varset)] == [True, False, False, True]


def shipped_user() -> AmiUser:
    return AmiUser.from_manager_conf(MANAGER_CONF)


def test_replay_command_prints_records_that_match_every_ground_truth(
        capsys: pytest.CaptureFixture[str]) -> None:
    traces = all_traces()
    assert main(["replay", *map(str, traces)]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [CallRecord.from_dict(json.loads(line)) for line in lines]
    for path in traces:
        truth = load_truth(path)
        wanted = {c["linkedid"] for c in truth["expected"]["calls"]}
        assert compare([r for r in records if r.linkedid in wanted], truth) == []
    assert len(records) == sum(len(load_truth(p)["expected"]["calls"]) for p in traces)


@pytest.mark.parametrize("path", all_traces(), ids=lambda p: p.stem)
def test_nothing_of_a_trace_stays_open_and_replay_records_its_calls_only(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pickups, transfers, Local chains, queue retries: once every event of a trace is fed,
    no call is open (nothing for `expire` to close hours later as a bogus incomplete
    record), no device is busy, and `callhub replay` prints the trace's calls, once each."""
    truth = load_truth(path)
    wanted = sorted(c["linkedid"] for c in truth["expected"]["calls"])
    correlator = Correlator(pbx_from_truth(truth))
    finished = [r.linkedid for m in iter_file_messages(path) for r in correlator.feed(m)]
    assert correlator.active_calls == 0
    assert correlator.busy_interfaces() == set()
    assert sorted(finished) == wanted
    assert main(["replay", str(path)]) == 0
    printed = [json.loads(line)["linkedid"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(printed) == wanted


def test_replay_check_reports_a_mismatch(tmp_path: Path) -> None:
    """--check fails when the ground truth disagrees (here: a cadence that changes rings)."""
    source = all_traces()[0]
    truth = load_truth(source)
    truth["expected"]["calls"][0]["outcome"] = "missed"
    (tmp_path / source.name).write_bytes(source.read_bytes())
    (tmp_path / source.with_suffix(".json").name).write_text(json.dumps(truth))
    out = io.StringIO()
    from callhub.ami.replay import replay_command
    from callhub.cli import build_parser
    args = build_parser().parse_args(["replay", "--check", str(tmp_path / source.name)])
    assert replay_command(args, out) == 1
    assert "outcome 'answered' != 'missed'" in out.getvalue()


def test_replay_table_and_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = all_traces()[0]
    config = tmp_path / "callhub.toml"
    config.write_text('[[pbx]]\nname = "desk"\nring_cadence_seconds = 6.0\n')
    assert main(["--config", str(config), "replay", "--format", "table", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["linkedid", "direction", "called_number"]
    assert len(out) == 1 + len(load_truth(path)["expected"]["calls"])


def test_replay_of_a_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent/x.ami"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_replay_of_a_file_that_is_not_an_ami_trace_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A binary, a log or an empty file has no AMI events: said, exit 2, not a silent 0."""
    log = tmp_path / "asterisk.log"
    log.write_text("[Nov 29 10:00:01] NOTICE[123] chan_pjsip.c: Call from 1001\n")
    empty = tmp_path / "empty.ami"
    empty.write_bytes(b"")
    for path in (sys.executable, str(log), str(empty)):
        assert main(["replay", path]) == 2, path
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines() == [
            f"callhub replay: no AMI events in {path} (not a recorded AMI stream)"]
    trace = all_traces()[0]  # beside a real trace: its records, and still exit 2
    assert main(["replay", str(log), str(trace)]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(load_truth(trace)["expected"]["calls"])
    assert err.splitlines() == [
        f"callhub replay: no AMI events in {log} (not a recorded AMI stream)"]
    assert main(["replay", "--check", str(log), str(trace)]) == 2
    assert capsys.readouterr().out.splitlines()[-1] == "1 of 2 traces match"


def test_replay_of_a_directory_is_its_traces_in_name_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces = all_traces()[:2]
    for trace in reversed(traces):
        for path in (trace, truth_path(trace)):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "notes.txt").write_text("not a trace")
    assert main(["replay", "--check", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in out[:2]] == [str(tmp_path / t.name) for t in traces]
    assert out[-1] == "2 of 2 traces match"


def test_replay_of_a_directory_without_traces_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path)]) == 2
    assert "no .ami traces in the directory" in capsys.readouterr().err


def test_installed_console_script_replays() -> None:
    path = all_traces()[0]
    done = subprocess.run([sys.executable, "-m", "callhub", "replay", str(path)],
                          capture_output=True, text=True, check=True)
    record = json.loads(done.stdout.splitlines()[0])
    assert record["linkedid"] == load_truth(path)["expected"]["calls"][0]["linkedid"]
