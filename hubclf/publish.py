"""One commit to a Hub repo as a transaction: retried on transient errors, undone on failure.

``hub.push_to_hub`` checks the model folder locally, then calls ``commit_to_hub``, which

1. reads the repo's visibility (``repo_info``) and refuses ``private=True`` for an existing public repo;
2. creates the repo (and the target branch) only when missing, remembering what this call created;
3. commits all files in one ``create_commit``;
4. when anything after the first write fails, deletes what step 2 created (the repo, else the branch) and says in
   the error what was removed and what, if anything, is left on the Hub.

Every Hub call is retried on transient failures: HTTP 408/429/5xx and dropped connections or timeouts
(``httpx2.TransportError``), ``RetryPolicy.attempts`` times in all with exponential backoff, within
``RetryPolicy.total_s``. Other errors (401, 403, 404, 409, 422...) fail at once. huggingface_hub itself already
retries the single requests inside a commit (preupload, LFS batch, each LFS upload and verify, with its
``http_backoff``) but not the commit request, ``create_repo``, ``create_branch`` or ``repo_info``.

A retried commit cannot commit twice: huggingface_hub drops files whose content the branch already has, so if an
attempt landed but its answer was lost, the next one changes nothing and returns the head commit.

    commit = commit_to_hub(api, "me/flowers", make_operations, commit_message="Upload", private=True)
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import httpx2
from huggingface_hub import CommitInfo, CommitOperation, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hubclf.logs import redact

__all__ = [
    "RetryPolicy", "DEFAULT_RETRY", "PublishError", "VisibilityError", "commit_to_hub", "is_transient", "with_retries",
]  # fmt: skip

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one Hub call: waits ``base_wait_s``, 2x, 4x... capped at ``max_wait_s``."""

    attempts: int = 4  # in all, the first one included
    base_wait_s: float = 1.0
    max_wait_s: float = 16.0
    total_s: float = 120.0  # no retry starts once this much time has passed since the first attempt


DEFAULT_RETRY = RetryPolicy()


class VisibilityError(ValueError):
    """``private=True`` for a repo that exists and is public: refused before anything is written."""


class PublishError(RuntimeError):
    """A commit to the Hub failed; ``hub_state`` says what was cleaned up and what is left on the Hub."""

    def __init__(self, cause: BaseException, hub_state: str):
        self.cause, self.hub_state = cause, hub_state
        super().__init__(f"{describe_error(cause)}. {hub_state}")


def describe_error(error: BaseException) -> str:
    """One line for an HTTP error, secrets redacted: huggingface_hub's messages span several lines.

    describe_error(error)  # "Client error '401 Unauthorized' for url '...' Invalid credentials in ..."
    """
    lines = [line.strip() for line in redact(str(error)).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith("For more information check"))
    return text.rstrip(".") or type(error).__name__


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None) if isinstance(error, HfHubHTTPError) else None
    return None if response is None else response.status_code


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: HTTP 408/429/5xx, dropped connections and timeouts.

    is_transient(httpx2.RemoteProtocolError("Server disconnected"))  # True
    """
    status = _status(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(error, httpx2.TransportError)


def _wait_s(error: BaseException, attempt: int, policy: RetryPolicy) -> float:
    wait = policy.base_wait_s * 2 ** (attempt - 1)
    response = getattr(error, "response", None) if isinstance(error, HfHubHTTPError) else None
    retry_after = response.headers.get("Retry-After") if response is not None else None
    if retry_after is not None and retry_after.strip().isdigit():  # the seconds form; HTTP dates are rare here
        wait = max(wait, float(retry_after))
    return min(wait, policy.max_wait_s)


def with_retries(what: str, call: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """``call()``, retried on transient errors as ``policy`` says; the last error is raised as is.

    info = with_retries("read me/flowers", lambda: api.repo_info("me/flowers"))
    """
    policy = policy or DEFAULT_RETRY
    start = time.monotonic()
    for attempt in itertools.count(1):
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt >= policy.attempts:
                raise
            wait = _wait_s(error, attempt, policy)
            if time.monotonic() - start + wait > policy.total_s:
                raise
            logger.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                what, describe_error(error), attempt, policy.attempts - 1, wait,
            )  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclasses.dataclass
class _Created:
    """What this push created on the Hub, so a failure can remove exactly that and nothing else."""

    repo: bool = False
    branch: str | None = None
    committing: bool = False


def commit_to_hub(
    api: HfApi,
    repo_id: str,
    make_operations: Callable[[], list[CommitOperation]],
    *,
    commit_message: str,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    retry: RetryPolicy | None = None,
) -> CommitInfo:
    """Create ``repo_id`` / ``revision`` if missing and commit ``make_operations()`` in one commit, as a transaction.

    ``private``: ``True`` creates a private repo and refuses an existing public one (``VisibilityError``, before any
    write); ``False`` creates a public repo; ``None`` creates a public one; an existing repo keeps its visibility
    unless refused. ``make_operations`` is called once per commit attempt (operations are single-use). ``retry``
    defaults to ``DEFAULT_RETRY``. On failure raises ``PublishError``, after removing the repo or branch this call
    created.

        commit = commit_to_hub(api, "me/flowers", lambda: [CommitOperationAdd("a.txt", b"hi")], commit_message="hi")
    """
    retry = retry or DEFAULT_RETRY
    existing_private = _visibility(api, repo_id, retry)
    if existing_private is not None:
        _check_visibility(repo_id, private, existing_private)
    created = _Created()
    try:
        if existing_private is None:
            created.repo = _create_repo(api, repo_id, bool(private), retry)
            if not created.repo:  # someone created it since we looked: judge it like any existing repo
                _check_visibility(repo_id, private, _visibility(api, repo_id, retry))
        if revision is not None and not create_pr and _create_branch(api, repo_id, revision, retry):
            created.branch = revision
        created.committing = True
        return with_retries(
            f"commit to {repo_id}",
            lambda: api.create_commit(
                repo_id, make_operations(), commit_message=commit_message, revision=revision, create_pr=create_pr
            ),
            retry,
        )
    except (VisibilityError, PublishError):
        raise  # found before this push wrote anything
    except KeyboardInterrupt as interrupt:  # Ctrl-C in a long upload: still take back the empty repo or branch
        logger.warning("push interrupted: %s", _undo(api, repo_id, created, existing_private is not None, interrupt,
                                                      retry))  # fmt: skip
        raise
    except Exception as error:
        existed = existing_private is not None
        raise PublishError(error, _undo(api, repo_id, created, existed, error, retry)) from error


def _visibility(api: HfApi, repo_id: str, retry: RetryPolicy) -> bool | None:
    """``repo_info(...).private``, or None when the repo does not exist (or is not visible to this token)."""
    try:
        return bool(with_retries(f"read {repo_id}", lambda: api.repo_info(repo_id), retry).private)
    except RepositoryNotFoundError:
        return None
    except Exception as error:
        raise PublishError(error, "Nothing was written to the Hub.") from error


def _check_visibility(repo_id: str, private: bool | None, existing_private: bool | None) -> None:
    if private and existing_private is False:
        raise VisibilityError(
            f"private=True, but {repo_id} already exists as a public repo, and hubclf never publishes into a repo more "
            f"visible than asked. Make it private first (`hf repos settings {repo_id} --private`), or push without "
            f"--private / private=True. Nothing was written to the Hub."
        )
    if private is False and existing_private:
        logger.info("%s exists and is private; it stays private", repo_id)


def _create_repo(api: HfApi, repo_id: str, private: bool, retry: RetryPolicy) -> bool:
    """Create the repo; True if this call created it, False if it appeared meanwhile."""
    attempts = itertools.count(1)

    def create() -> bool:
        attempt = next(attempts)
        try:
            api.create_repo(repo_id, private=private, exist_ok=False)
        except HfHubHTTPError as error:
            if _status(error) != 409:
                raise
            # 409 after a failed attempt: that attempt created it and lost its answer. On the first: someone else.
            return attempt > 1
        return True

    created = with_retries(f"create {repo_id}", create, retry)
    if created:
        logger.info("created %s repo %s", "private" if private else "public", repo_id)
    return created


def _create_branch(api: HfApi, repo_id: str, branch: str, retry: RetryPolicy) -> bool:
    """Create ``branch`` off main; True if this call created it, False if it existed."""
    attempts = itertools.count(1)

    def create() -> bool:
        attempt = next(attempts)
        try:
            api.create_branch(repo_id, branch=branch, exist_ok=False)
        except HfHubHTTPError as error:
            if _status(error) != 409:
                raise
            return attempt > 1
        return True

    return with_retries(f"create branch {branch} of {repo_id}", create, retry)


def _undo(api: HfApi, repo_id: str, created: _Created, existed: bool, error: BaseException, retry: RetryPolicy) -> str:
    """Remove what this push created; return one sentence on what the Hub holds now."""
    if created.committing and _status(error) is None and isinstance(error, httpx2.TransportError):
        outcome = "The last commit attempt lost its connection, so whether it reached the Hub is unknown"
    else:
        outcome = "No commit was made"
    if created.repo:
        try:
            with_retries(f"delete {repo_id}", lambda: api.delete_repo(repo_id), retry)
        except Exception as cleanup_error:
            return (
                f"{outcome}. The repo {repo_id} that this push created is still on the Hub (deleting it failed: "
                f"{describe_error(cleanup_error)}); delete it with `hf repos delete {repo_id}`."
            )
        return f"{outcome}; the repo {repo_id} that this push created was deleted, so nothing is left on the Hub."
    if created.branch is not None:
        branch = created.branch
        try:
            with_retries(f"delete branch {branch}", lambda: api.delete_branch(repo_id, branch=branch), retry)
        except Exception as cleanup_error:
            return (
                f"{outcome}. The branch {branch} of {repo_id} that this push created is still on the Hub (deleting it "
                f"failed: {describe_error(cleanup_error)}); delete it with "
                f"`hf repos branch delete {repo_id} {branch}`."
            )
        return f"{outcome}; the branch {branch} that this push created was deleted, so {repo_id} is as it was."
    if not existed:
        return f"{outcome}, and nothing was created on the Hub."
    return f"{outcome}; {repo_id} existed before and is as it was."
