"""hubclf.logs: tokens and signed storage URLs are redacted from log records, in every logger and handler."""

from __future__ import annotations

import logging

import pytest

from hubclf.logs import install_log_redaction, redact, redacted_logs

TOKEN = "hf_" + "aB3" * 12


@pytest.mark.parametrize(
    "text, expected",
    [
        ("PUT http://127.0.0.1:1/upload/a/b/0f?expires=1700&signature=f00d 200",
         "PUT http://127.0.0.1:1/upload/a/b/0f?<redacted> 200"),
        ("GET https://bucket.s3.amazonaws.com/x?X-Amz-Algorithm=AWS4&X-Amz-Signature=abc",
         "GET https://bucket.s3.amazonaws.com/x?<redacted>"),
        ("'https://cdn-lfs.hf.co/repos/x?response-content-disposition=a&Expires=1&Policy=p&Key-Pair-Id=k'",
         "'https://cdn-lfs.hf.co/repos/x?<redacted>'"),
        ('"PUT /upload/me/m/0f?expires=1&signature=2 HTTP/1.1" 200 -',
         '"PUT /upload/me/m/0f?<redacted> HTTP/1.1" 200 -'),
        (f"token {TOKEN} and Authorization: Bearer {TOKEN}", "token <redacted> and Authorization: Bearer <redacted>"),
        ("GET https://huggingface.co/api/models?search=alexnet&limit=5", None),  # an unsigned query stays readable
        ("is this a question? yes=no", None),
        # Credentials in a URL's user information (an HF_ENDPOINT behind a proxy), wherever the URL is quoted.
        ("cannot reach http://me:s3cret@proxy.local:8080/api/models/x ('http://tok@h/')",
         "cannot reach http://<redacted>@proxy.local:8080/api/models/x ('http://<redacted>@h/')"),
        ("mail me at me@example.com or see https://example.com/a@b", None),  # no "://" before the "@"
    ],
)  # fmt: skip
def test_redact(text, expected):
    assert redact(text) == (text if expected is None else expected)


def test_records_are_redacted_inside_the_block_only(caplog):
    log = logging.getLogger("httpx2")  # the logger that prints request URLs at INFO
    caplog.set_level(logging.INFO)
    url = "http://storage/objects/a?expires=1&signature=2"
    before = logging.getLogRecordFactory()
    with redacted_logs():
        with redacted_logs():  # nests without wrapping twice
            log.info("HTTP Request: GET %s %r", url, "HTTP/1.1 200 OK")
        try:
            raise OSError(f"failed {url} with {TOKEN}")
        except OSError:
            log.exception("download failed")
    assert logging.getLogRecordFactory() is before
    log.info("outside %s", url)
    redacted, traceback_record, outside = caplog.records
    assert redacted.getMessage() == "HTTP Request: GET http://storage/objects/a?<redacted> 'HTTP/1.1 200 OK'"
    assert "signature" not in caplog.text.split("outside")[0] and TOKEN not in caplog.text
    assert "failed http://storage/objects/a?<redacted> with <redacted>" in traceback_record.exc_text
    assert outside.getMessage() == f"outside {url}"  # the factory was restored


def test_install_is_idempotent(monkeypatch):
    monkeypatch.setattr(logging, "_logRecordFactory", logging.getLogRecordFactory())  # restored after the test
    install_log_redaction()
    first = logging.getLogRecordFactory()
    install_log_redaction()
    assert logging.getLogRecordFactory() is first and first.hubclf_redacts
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "token %s", (TOKEN,), None)
    assert record.getMessage() == "token <redacted>"
