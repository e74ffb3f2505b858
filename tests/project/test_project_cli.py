"""`todal import` and `todal annotate` through `todal.cli.main`: exit codes and one-line errors."""

from __future__ import annotations

import socket

import pytest

from serverkit import make_project
from todal.cli import main


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path, 4)


def todal(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# --- import -----------------------------------------------------------------------------------
def test_import_where_no_row_can_be_used_fails_in_one_line(project, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nnot/there.png,Bag\na/img_00000.png,Cat\n")
    rc, out, err = todal(capsys, "import", project, bad, "--format", "csv")
    assert rc == 2 and out.count("skipped: ") == 2
    assert err.count("\n") == 1 and "Nothing was imported" in err and "2 rows" in err


def test_import_of_a_file_without_label_rows_fails_in_one_line(project, tmp_path, capsys):
    empty = tmp_path / "header.csv"
    empty.write_text("path,label\n\n")
    rc, _, err = todal(capsys, "import", project, empty, "--format", "csv")
    assert rc == 2 and err.count("\n") == 1 and "Nothing was imported" in err and "no label rows" in err


def test_import_of_rows_already_there_succeeds(project, tmp_path, capsys):
    good = tmp_path / "good.csv"
    good.write_text("path,label\na/img_00000.png,Bag\n")
    assert todal(capsys, "import", project, good, "--format", "csv")[0] == 0
    rc, out, _ = todal(capsys, "import", project, good, "--format", "csv")
    assert rc == 0 and "imported 0 labels (1 already there)" in out


# --- annotate ---------------------------------------------------------------------------------
def test_annotate_and_the_server_module_take_the_same_options(project, monkeypatch):
    import todal.project.server as server

    calls = []
    monkeypatch.setattr(server, "serve", lambda *a, **kw: calls.append((a, kw)))
    args = [str(project), "--host", "0.0.0.0", "--port", "8000", "--token", "t" * 20, "--quiet"]
    assert main(["annotate", *args]) == 0 and server.main(args) == 0
    assert calls[0] == calls[1] == ((str(project),), {"host": "0.0.0.0", "port": 8000, "token": "t" * 20,
                                                      "quiet": True})


def test_annotate_on_a_port_in_use_fails_in_one_line(project, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        rc, out, err = todal(capsys, "annotate", project, "--port", port)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("todal: error: ") and f"port {port}" in err and "--port" in err


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_annotate_on_an_impossible_port_fails_in_one_line(project, capsys, port):
    rc, _, err = todal(capsys, "annotate", project, "--port", port)
    assert rc == 2 and err.count("\n") == 1 and "[0, 65535]" in err
