"""``sipcluster user add|set`` never take a password from argv (``ps`` and shell
history show it): a prompt, asked twice, or the first line of standard input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import cli
from cluster.auth.users import UserDirectory

ROOT = Path(__file__).resolve().parents[1]


def test_a_password_on_the_command_line_is_refused_with_the_reason(capsys):
    assert cli.main(["user", "add", "alice@localhost", "s3cret", "--etcd", "http://127.0.0.1:1"]) == 2
    assert "not taken on the command line" in capsys.readouterr().err


def test_the_password_is_read_from_the_first_line_of_stdin():
    assert cli.read_password("a@b", True, io.StringIO("pw with spaces \nignored\n")) == "pw with spaces "
    with pytest.raises(ValueError, match="empty"):
        cli.read_password("a@b", True, io.StringIO("\n"))
    with pytest.raises(ValueError, match="--password-stdin"):
        cli.read_password("a@b", False, io.StringIO("not a tty\n"))


def test_the_prompt_asks_twice_and_refuses_a_mismatch(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    answers = iter(["first", "second", "same", "same"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(answers))
    with pytest.raises(ValueError, match="differ"):
        cli.read_password("a@b", False, Tty())
    assert cli.read_password("a@b", False, Tty()) == "same"


def _run(*args: str, input: str, etcd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPCLUSTER_")}
    return subprocess.run([sys.executable, "-m", "cluster.cli", "user", *args, "--etcd", etcd,
                           "--prefix", "/cli-pw"], input=input, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def test_add_and_set_take_the_password_from_stdin(etcd_server):
    added = _run("add", "carol@localhost", "--password-stdin", input="first-pw\n", etcd=etcd_server.endpoint)
    assert added.returncode == 0, added.stderr
    directory = UserDirectory(etcd_server.client(), "/cli-pw")
    before = directory.get("carol@localhost")
    changed = _run("set", "carol@localhost", "forward_busy=sip:vm@localhost", "--password-stdin",
                   input="second-pw\n", etcd=etcd_server.endpoint)
    assert changed.returncode == 0, changed.stderr
    after = directory.get("carol@localhost")
    assert after.ha1_md5 != before.ha1_md5 and after.realm == before.realm
    assert after.settings == {"forward_busy": "sip:vm@localhost"}
