"""Log lines (securemail/logs.py): one line per record, the JSON schema, addresses as configured."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from securemail.errors import ConfigError
from securemail.logs import (SCHEMA, Addresses, JsonFormatter, LogSettings, TextFormatter, configure, event,
                             log_key, under_journald)

KEY = b"k" * 32


def record(logger: logging.Logger, fmt: logging.Formatter, emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def accepted(logger):
    event(logger, "accepted", queue_id="abc", listener="relay", peer="127.0.0.3",
          sender="Alice.Martin@Interieur.gouv.fr", recipients=["bruno@justice.gouv.fr", "carla@justice.gouv.fr"],
          verdict="accepted", reply_code=250, duration=0.0123)


@pytest.mark.parametrize("mode", ["full", "hashed", "none"])
def test_json_event_has_every_schema_key_and_addresses_as_configured(mode):
    line = record(logging.getLogger("t.json"), JsonFormatter("serve", Addresses(mode, KEY)), accepted)
    assert line.count("\n") == 1
    obj = json.loads(line)
    assert list(obj) == list(SCHEMA)
    assert obj["event"] == "accepted" and obj["role"] == "serve" and obj["level"] == "INFO"
    assert obj["queue_id"] == "abc" and obj["listener"] == "relay" and obj["peer"] == "127.0.0.3"
    assert obj["from_domain"] == "interieur.gouv.fr"
    assert obj["to_domains"] == ["justice.gouv.fr"]
    assert obj["verdict"] == "accepted" and obj["reply_code"] == 250 and obj["duration"] == 0.0123
    assert obj["time"].endswith("Z") and obj["pid"] == os.getpid()
    if mode == "full":
        assert obj["from"] == "Alice.Martin@interieur.gouv.fr" and obj["to"][0] == "bruno@justice.gouv.fr"
    elif mode == "hashed":
        assert obj["from"].startswith("hmac-") and obj["from"].endswith("@interieur.gouv.fr")
        assert "alice" not in line.lower() and "bruno" not in line and "carla" not in line
        assert obj["to"][0] != obj["to"][1]                       # two people stay two
        again = json.loads(record(logging.getLogger("t.json2"), JsonFormatter("serve", Addresses(mode, KEY)),
                                  accepted))
        assert again["from"] == obj["from"]                        # and one stays one
    else:
        assert obj["from"] is None and obj["to"] is None
        assert "alice" not in line.lower() and "bruno" not in line


def test_hash_depends_on_the_key():
    assert Addresses("hashed", KEY).address("bruno@x.fr") != Addresses("hashed", b"other" * 8).address("bruno@x.fr")
    with pytest.raises(ConfigError):
        Addresses("hashed", b"")


def test_free_text_loses_local_parts_and_key_directory_names():
    a = Addresses("hashed", KEY)
    text = a.text("maildir: delivered to bruno.durand+x@justice.gouv.fr, from <alice@interieur.gouv.fr>; "
                  "GET /.well-known/openpgpkey/justice.gouv.fr/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=bruno.durand")
    assert "bruno" not in text and "alice" not in text and "iy9q119eutrkn8s1mk4r39qejnbu3n5q" not in text
    assert "@justice.gouv.fr" in text and "@interieur.gouv.fr" in text and "?l=hmac-" in text
    assert a.text(text) == text                                   # hashed once, not twice
    assert Addresses("none").text("to bruno@justice.gouv.fr") == "to *@justice.gouv.fr"
    assert Addresses("full").text("to bruno@justice.gouv.fr") == "to bruno@justice.gouv.fr"


def test_text_line_is_one_line_without_control_characters():
    def emit(logger):
        logger.warning("HELO %s", "evil\r\nINFO serve[1] forged: accepted\x1b[31m")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed for bruno@justice.gouv.fr")
    out = record(logging.getLogger("t.text"), TextFormatter("delivery", Addresses("hashed", KEY)), emit)
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith("WARNING delivery[") and "\\r\\nINFO serve[1] forged" in lines[0]
    assert "\x1b" not in out and "\\x1b[31m" in lines[0]
    assert "exception=Traceback" in lines[1] and "ValueError: boom" in lines[1] and "bruno" not in lines[1]


def test_text_event_shows_its_fields():
    out = record(logging.getLogger("t.text2"), TextFormatter("serve", Addresses("full")), accepted)
    assert out.startswith("INFO serve[") and " t.text2: accepted queue_id=abc listener=relay " in out
    assert "to_domains=justice.gouv.fr" in out and "reply_code=250" in out and "duration=0.0123" in out


def test_journald_gets_the_syslog_priority(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert not under_journald(f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(f)
        out = record(logging.getLogger("t.j"), JsonFormatter("serve", Addresses("none"), priority=True),
                     lambda lg: lg.error("x"))
    assert out.startswith("<3>{") and json.loads(out[3:])["level"] == "ERROR"


def test_settings_and_configure(tmp_path):
    assert LogSettings.from_table({}) == LogSettings("text", "hashed", "info")
    assert LogSettings.from_table({"format": "json", "addresses": "none"}).format == "json"
    for bad in ({"format": "xml"}, {"addresses": "clear"}, {"level": "trace"}, {"colour": True}):
        with pytest.raises(ConfigError):
            LogSettings.from_table(bad)
    key = log_key(tmp_path)
    assert len(key) == 32 and log_key(tmp_path) == key
    assert (tmp_path / "log.key").stat().st_mode & 0o777 == 0o600
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(LogSettings(format="json"), "crypto", home=tmp_path, stream=stream)
        logging.getLogger("t.conf").info("to bruno@justice.gouv.fr")
        logging.getLogger("mail.log").info("aiosmtpd chatter")     # quiet below debug
    finally:
        root.handlers[:], root.level = saved
    (line,) = stream.getvalue().splitlines()
    obj = json.loads(line)
    assert obj["role"] == "crypto" and obj["event"] == "log" and "bruno" not in line
