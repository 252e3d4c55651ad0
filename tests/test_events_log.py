"""events.jsonl survives a full disk: only whole lines, the lost event counted."""

import errno
import json
import os

from inspect_edge.config import EventsConfig
from inspect_edge.events import EventRecorder, append_whole_line


def _disk_fills_after(monkeypatch, n_bytes):
    """os.write that writes n_bytes of the next call, then fails as a full disk does."""
    real_write = os.write
    state = {"armed": True}

    def write(fd, data):
        if state["armed"]:
            state["armed"] = False
            real_write(fd, bytes(data[:n_bytes]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_write_that_fills_the_disk_leaves_only_complete_lines(tmp_path, monkeypatch):
    rec = EventRecorder(tmp_path / "run", EventsConfig())
    rec._append_log({"frame": 1, "defects": 2})
    _disk_fills_after(monkeypatch, 7)
    rec._append_log({"frame": 2, "defects": 1})  # lost: counted, not half-written
    rec._append_log({"frame": 3, "defects": 4})
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    assert [json.loads(x)["frame"] for x in lines] == [1, 3]
    assert rec.counts()["log_errors"] == 1


def test_a_torn_last_line_from_a_crash_is_ended_before_the_next_record(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"frame":1}\n{"fra')  # power cut mid-line, before this fix existed
    append_whole_line(log, b'{"frame":2}\n')
    lines = log.read_text().splitlines()
    assert lines[0] == '{"frame":1}' and lines[-1] == '{"frame":2}' and len(lines) == 3
