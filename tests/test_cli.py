"""hubclf.cli: every error is one line on stderr and exit status 2, also one that bad input cannot explain."""

from __future__ import annotations

import pytest

from hubclf.cli import commands as cli


def fail_like_a_library(args):
    # What a bare `assert lr_min >= 0` deep inside a library raises (pytest would rewrite an assert written here).
    raise AssertionError


def test_an_internal_error_is_one_line_and_exit_2_naming_itself(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_run_train", fail_like_a_library)
    code = cli.main(["train", "--model", "hubclf_alexnet", "--data", "photos", "--output-dir", "out", "--epochs", "3"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "hubclf train: error: internal error, AssertionError (HUBCLF_DEBUG=1 shows the traceback; please report it)"
    ]


def test_hubclf_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_run_train", fail_like_a_library)
    monkeypatch.setenv("HUBCLF_DEBUG", "1")
    with pytest.raises(AssertionError):
        cli.main(["train", "--model", "hubclf_alexnet", "--data", "photos", "--output-dir", "out", "--epochs", "3"])


def test_a_user_error_is_not_called_internal(monkeypatch, capsys):
    def missing_file(args):
        raise FileNotFoundError("photos/ does not exist")

    monkeypatch.setattr(cli, "_run_train", missing_file)
    assert cli.main(["train", "--model", "m", "--data", "photos", "--output-dir", "out"]) == 2
    assert capsys.readouterr().err == "hubclf train: error: photos/ does not exist\n"


def test_a_bad_optimisation_value_is_refused_before_anything_runs(tmp_path, capsys):
    # min_lr -1 used to reach timm's CosineLRScheduler after the data was loaded, as a bare AssertionError traceback.
    code = cli.main(["train", "--model", "hubclf_alexnet_slim", "--data", str(tmp_path / "no-such-data"),
                     "--output-dir", str(tmp_path / "out"), "--min-lr", "-1"])  # fmt: skip
    assert code == 2 and capsys.readouterr().err == "hubclf train: error: min_lr must be at least 0, got -1.0\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("port", ["-1", "0", "65536", "http"])
def test_app_port_outside_the_tcp_range_is_an_argument_error(port, capsys):
    # It reached the socket's bind() as an OverflowError.
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["app", "me/model", "--port", port])
    assert exit_info.value.code == 2
    error = f"hubclf app: error: argument --port: a TCP port is a number between 1 and 65535, got '{port}'"
    assert capsys.readouterr().err.splitlines()[-1] == error
    assert cli.build_parser().parse_args(["app", "me/model", "--port", "65535"]).port == 65535


def test_version_names_hubclf_and_the_libraries_a_bug_report_needs(capsys):
    import timm
    import torch

    import hubclf

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"hubclf {hubclf.__version__} (torch {torch.__version__.split('+')[0]}, ")
    assert f"timm {timm.__version__}" in printed and printed.count("\n") == 1


def test_train_logs_once_per_line_with_libraries_that_print_their_own(monkeypatch):
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # a fresh process, as `hubclf train` runs in; restored afterwards
    monkeypatch.setattr(root, "level", root.level)
    cli._log_to_stderr()
    [handler] = root.handlers
    assert root.level == logging.INFO

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, "Retrying in 1s [Retry 1/5].", None, None)

    # huggingface_hub's and datasets' own handlers already print these; hubclf's and other libraries' come out here
    assert not handler.filter(record("huggingface_hub.utils._http"))
    assert not handler.filter(record("datasets.load"))
    assert handler.filter(record("hubclf.train.loop")) and handler.filter(record("timm.models._builder"))
    monkeypatch.setattr(root, "handlers", [handler])
    cli._log_to_stderr()  # logging already set up (by the caller, or pytest): left alone
    assert root.handlers == [handler]
