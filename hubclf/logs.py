"""Keep Hub tokens and signed storage URLs out of every log line.

huggingface_hub and httpx log request URLs: httpx2 at INFO (``HTTP Request: PUT https://...``), huggingface_hub's
retry warnings at WARNING (``Retrying ... PUT https://...``). Uploads and downloads of large files go to signed
storage URLs whose query string (``?expires=...&signature=...``, ``X-Amz-Signature=...``) is a credential for that
object until it expires, so a shared train log must not show it. A URL's user information
(``http://user:password@host``, as in an ``HF_ENDPOINT`` behind a proxy) is a credential too. Redaction happens
where log records are created (a log record factory), so it covers every logger and every handler, pytest's
``caplog`` included.

    from hubclf.logs import redact, redacted_logs
    redact("PUT https://s3/x?X-Amz-Signature=abc")   # 'PUT https://s3/x?<redacted>'
    redact("http://me:pw@proxy:8080/api")            # 'http://<redacted>@proxy:8080/api'
    with redacted_logs():
        api.create_commit(...)
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["redact", "redacted_logs", "install_log_redaction"]

REDACTED = "<redacted>"
# User and org tokens (hf_..., api_org_...), and whatever follows "Bearer" in a header dump.
_TOKEN = re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{16,}\b|(?<=Bearer )[^\s'\",]+")
# A query string (of a full URL or of a bare path, as in server request lines) ...
_QUERY = re.compile(r"\?([^\s'\"<>#]+)")
# ... is a credential when it carries one of these parameters (S3 / CloudFront / the Hub's own storage signatures).
# The user information of a URL (``scheme://user:password@host``): everything between "://" and the "@" that ends
# the authority, which RFC 3986 lets hold neither "/", "?", "#" nor whitespace.
_USERINFO = re.compile(r"(?<=://)[^\s/?#@'\"<>]+@")
_SIGNED_PARAM = re.compile(
    r"(?:^|&)(?:x-amz-[\w-]*|signature|expires|policy|key-pair-id|sig|token|access_token)=", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with tokens, the user information of URLs and the query strings of signed URLs replaced by
    ``<redacted>``.

    redact("GET /objects/a/b?expires=1&signature=f00 200")  # 'GET /objects/a/b?<redacted> 200'
    """
    text = _USERINFO.sub(f"{REDACTED}@", text)
    text = _QUERY.sub(lambda m: f"?{REDACTED}" if _SIGNED_PARAM.search(m.group(1)) else m.group(0), text)
    return _TOKEN.sub(REDACTED, text)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it itself when a handler formats it
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Exception messages carry URLs too (e.g. an HTTP error for a signed upload URL).
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


def _redacting(factory: Any) -> Any:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _redact_record(record)
        return record

    make_record.hubclf_redacts = True  # type: ignore[attr-defined]
    make_record.wrapped = factory  # type: ignore[attr-defined]
    return make_record


def install_log_redaction() -> None:
    """Redact every log record of this process from now on (the CLI calls this once). Idempotent.

    install_log_redaction()
    """
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "hubclf_redacts", False):
        logging.setLogRecordFactory(_redacting(factory))


@contextlib.contextmanager
def redacted_logs() -> Iterator[None]:
    """Redact every log record created inside the block (``push_to_hub`` runs in one). Nests; restores on exit.

    with redacted_logs():
        hf_hub_download(repo_id, "model.safetensors")
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "hubclf_redacts", False):
        yield
        return
    ours = _redacting(factory)
    logging.setLogRecordFactory(ours)
    try:
        yield
    finally:
        if logging.getLogRecordFactory() is ours:  # someone else replaced it meanwhile: leave theirs in place
            logging.setLogRecordFactory(factory)
