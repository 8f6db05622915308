"""hubclf.publish through ``push_to_hub``: local checks before any request, retries, cleanup, visibility, no secrets.

The local test Hub (``tests/hubserver.py``) is made to fail with ``fail_next`` / ``drop_connection_next``.
Retries wait a few milliseconds here (``fast_retries``); huggingface_hub's own LFS retry still waits its 1 s.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import CommitOperationAdd, HfApi

from hubclf import publish
from hubclf.cli import main
from hubclf.hub import from_pretrained, push_to_hub, save_pretrained
from hubclf.publish import RetryPolicy, is_transient
from tests.image_folders import HEIGHT, WIDTH, make_image_folder

ARCH = "hubclf_alexnet_slim"
LABELS = ["daisy", "rose", "tulip"]
SIGNED = re.compile(r"[?&](?:expires|signature)=")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(ARCH, num_classes=len(LABELS), img_size=(64, 64)).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return save_pretrained(model, tmp_path_factory.mktemp("publish") / "flowers", label_names=LABELS)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(publish, "DEFAULT_RETRY", RetryPolicy(attempts=4, base_wait_s=0.01, max_wait_s=0.05))


def requests_for(hub, repo_id: str, since: int = 0) -> list:
    """Requests (API and storage) that name ``repo_id`` in their path or body."""
    name = repo_id.split("/")[1]
    return [r for r in hub.requests[since:] if name in r.path or (r.body is not None and name.encode() in r.body)]


def commit_requests(hub, repo_id: str, since: int = 0) -> list:
    return [r for r in requests_for(hub, repo_id, since) if r.method == "POST" and "/commit/" in r.path]


def assert_same_logits(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


# ---- retries ------------------------------------------------------------------------------------------------------
def test_a_commit_that_fails_once_is_retried_and_lands_once(use_hub, new_repo_id, saved, caplog):
    hub, repo_id = use_hub, new_repo_id("retry")
    hub.fail_next("commit", status=500, times=1)
    caplog.set_level(logging.INFO)
    push_to_hub(saved, repo_id, token=hub.token)
    assert len(commit_requests(hub, repo_id)) == 2  # the failed attempt and the retry
    commits = HfApi(token=hub.token).list_repo_commits(repo_id)
    assert len(commits) == 2  # the repo's initial commit + exactly one upload
    assert "commit to" in caplog.text and "retry 1/3" in caplog.text


def test_a_connection_dropped_mid_lfs_upload_is_retried(use_hub, new_repo_id, saved, caplog):
    hub, repo_id = use_hub, new_repo_id("dropped")
    hub.drop_connection_next("storage_upload")
    caplog.set_level(logging.DEBUG)
    push_to_hub(saved, repo_id, token=hub.token)
    push_log = caplog.text
    uploads = [r for r in requests_for(hub, repo_id) if r.server == "storage" and r.method == "PUT"]
    assert len(uploads) == 2  # the dropped one and huggingface_hub's retry
    assert_same_logits(from_pretrained(saved), from_pretrained(repo_id))
    # huggingface_hub logs the failed PUT with its signed URL; the query string must not reach the log.
    assert "thrown while requesting PUT" in push_log and "?<redacted>" in push_log
    assert not SIGNED.search(push_log)
    assert all(SIGNED.search(r.path) for r in uploads)  # ... although every upload URL was signed


def test_a_client_error_is_not_retried(use_hub, new_repo_id, saved):
    hub, repo_id = use_hub, new_repo_id("rejected")
    hub.fail_next("commit", status=422, times=None)
    with pytest.raises(RuntimeError, match="422.*the repo .* that this push created was deleted"):
        push_to_hub(saved, repo_id, token=hub.token)
    assert len(commit_requests(hub, repo_id)) == 1


@pytest.mark.parametrize(
    "error, transient",
    [(publish.httpx2.RemoteProtocolError("Server disconnected"), True), (ValueError("bad input"), False)],
)
def test_is_transient_for_transport_errors(error, transient):
    assert is_transient(error) is transient


# ---- cleanup --------------------------------------------------------------------------------------------------
def test_a_failed_push_deletes_the_repo_it_created(use_hub, new_repo_id, saved):
    hub, repo_id = use_hub, new_repo_id("cleanup")
    hub.fail_next("commit", status=500, times=None)
    with pytest.raises(RuntimeError) as error:
        push_to_hub(saved, repo_id, token=hub.token)
    message = str(error.value)
    assert message.startswith(f"push to {repo_id} failed (the local save in {saved} is unchanged): ")
    assert "500" in message and f"the repo {repo_id} that this push created was deleted" in message
    assert len(commit_requests(hub, repo_id)) == 4  # RetryPolicy.attempts
    assert not hub.repo(repo_id).exists()


def test_a_failed_push_to_a_new_branch_deletes_the_branch(use_hub, new_repo_id, saved):
    hub, repo_id = use_hub, new_repo_id("branch")
    push_to_hub(saved, repo_id, token=hub.token)
    api = HfApi(token=hub.token)
    head = api.repo_info(repo_id).sha
    hub.fail_next("commit", status=503, times=None)
    retrained = timm.create_model(ARCH, num_classes=len(LABELS), img_size=(64, 64))  # new content: a real commit
    with pytest.raises(RuntimeError, match=f"the branch v2 that this push created was deleted, so {repo_id} is as"):
        push_to_hub(retrained, repo_id, token=hub.token, revision="v2", label_names=LABELS)
    assert [branch.name for branch in api.list_repo_refs(repo_id).branches] == ["main"]
    assert api.repo_info(repo_id).sha == head


def test_a_failed_push_to_an_existing_repo_leaves_it_as_it_was(use_hub, new_repo_id, saved):
    hub, repo_id = use_hub, new_repo_id("existing")
    HfApi(token=hub.token).create_repo(repo_id)
    hub.fail_next("commit", status=500, times=None)
    with pytest.raises(RuntimeError, match=f"No commit was made; {repo_id} existed before and is as it was"):
        push_to_hub(saved, repo_id, token=hub.token)
    assert hub.repo(repo_id).exists() and len(HfApi(token=hub.token).list_repo_commits(repo_id)) == 1


def test_what_cleanup_could_not_remove_is_named(use_hub, new_repo_id, saved):
    hub, repo_id = use_hub, new_repo_id("leftover")
    hub.fail_next("commit", status=500, times=None)
    hub.fail_next("delete_repo", status=403, times=None)
    with pytest.raises(RuntimeError) as error:
        push_to_hub(saved, repo_id, token=hub.token)
    message = str(error.value)
    assert f"The repo {repo_id} that this push created is still on the Hub (deleting it failed: " in message
    assert f"`hf repos delete {repo_id}`" in message and "\n" not in message
    assert hub.repo(repo_id).exists()


def test_an_interrupted_push_deletes_the_repo_it_created(use_hub, new_repo_id, caplog):
    hub, repo_id = use_hub, new_repo_id("interrupted")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish.commit_to_hub(HfApi(token=hub.token), repo_id, interrupted, commit_message="never")
    assert not hub.repo(repo_id).exists()
    assert f"push interrupted: No commit was made; the repo {repo_id} that this push created was deleted" in caplog.text


# ---- checked before any request ------------------------------------------------------------------------------
def _weights_do_not_fit(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(num_classes=5, label_names=[f"c{i}" for i in range(5)])
    (folder / "config.json").write_text(json.dumps(config))


def _card_does_not_parse(folder: Path) -> None:
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")


def _card_is_missing(folder: Path) -> None:
    (folder / "README.md").unlink()


def _config_is_invalid(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["pretrained_cfg"]
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "breakage, error, message",
    [
        (_weights_do_not_fit, ValueError, r"num_classes is 5, but the classifier head.fc.weight .* shape \[3, 256\]"),
        (_card_does_not_parse, ValueError, "not a model card huggingface_hub can parse"),
        (_card_is_missing, FileNotFoundError, "has no README.md"),
        (_config_is_invalid, ValueError, "not a valid hubclf config"),
    ],
)
def test_a_broken_folder_fails_before_any_request(use_hub, new_repo_id, saved, tmp_path, breakage, error, message):
    hub, repo_id = use_hub, new_repo_id("broken")
    folder = Path(shutil.copytree(saved, tmp_path / "broken"))
    breakage(folder)
    since = len(hub.requests)
    with pytest.raises(error, match=message):
        push_to_hub(folder, repo_id, token=hub.token)
    assert requests_for(hub, repo_id, since) == []  # not even a read: no create_repo, nothing on the Hub
    assert not hub.repo(repo_id).exists()


# ---- visibility -------------------------------------------------------------------------------------------------
def test_private_push_to_a_public_repo_is_refused_before_writing(use_hub, new_repo_id, saved, monkeypatch, capsys):
    hub, repo_id = use_hub, new_repo_id("public")
    api = HfApi(token=hub.token)
    api.create_repo(repo_id, private=False)
    since = len(hub.requests)
    with pytest.raises(ValueError, match=f"{repo_id} already exists as a public repo"):
        push_to_hub(saved, repo_id, token=hub.token, private=True)
    assert [r.method for r in requests_for(hub, repo_id, since)] == ["GET"]  # repo_info only
    assert len(api.list_repo_commits(repo_id)) == 1 and not api.repo_info(repo_id).private

    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert main(["push", str(saved), repo_id, "--private", "--no-verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hubclf push: error: private=True, but") and "\n" not in err


def test_an_existing_private_repo_stays_private(use_hub, new_repo_id, saved):
    hub, repo_id = use_hub, new_repo_id("private")
    api = HfApi(token=hub.token)
    api.create_repo(repo_id, private=True)
    push_to_hub(saved, repo_id, token=hub.token)  # private=None: keep what is there
    push_to_hub(saved, repo_id, token=hub.token, private=False, commit_message="again")  # stays private too
    assert api.repo_info(repo_id).private
    push_to_hub(saved, new_repo_id("new-private"), token=hub.token, private=True)


# ---- no secrets in logs ----------------------------------------------------------------------------------------
def test_the_signed_urls_come_from_httpx_info_lines(use_hub, new_repo_id, tmp_path, caplog):
    """The control: without hubclf's redaction, a plain upload logs signed storage URLs at INFO (httpx2)."""
    hub, repo_id = use_hub, new_repo_id("control")
    api = HfApi(token=hub.token)
    api.create_repo(repo_id)
    caplog.set_level(logging.INFO)
    api.upload_file(path_or_fileobj=b"\0" * 1024, path_in_repo="blob.bin", repo_id=repo_id)
    signed = [r for r in caplog.records if SIGNED.search(r.getMessage())]
    assert signed and {r.name for r in signed} == {"httpx2"}
    assert all(r.levelno == logging.INFO and "HTTP Request: PUT" in r.getMessage() for r in signed)


def test_no_token_or_signed_url_in_the_push_log_or_cli_output(use_hub, new_repo_id, saved, monkeypatch, caplog, capsys):
    hub, repo_id = use_hub, new_repo_id("quiet")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    caplog.set_level(logging.DEBUG)
    hub.fail_next("commit", status=502, times=1)  # a retry warning in the log too
    assert main(["push", str(saved), repo_id]) == 0  # verifies: downloads through signed redirects as well
    captured = capsys.readouterr()
    everything = caplog.text + captured.out + captured.err
    assert "verified" in captured.err and "retry 1/3" in captured.err
    assert "HTTP Request: PUT" in caplog.text and "?<redacted>" in caplog.text
    assert hub.token not in everything and not SIGNED.search(everything)


def test_train_with_push_logs_no_signed_url(use_hub, new_repo_id, tmp_path, monkeypatch, caplog, capsys):
    hub, repo_id = use_hub, new_repo_id("train-push")
    data = make_image_folder(tmp_path / "data", 2, per_class=2, split="train")
    make_image_folder(data, 2, per_class=1, split="validation", seed=1)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    caplog.set_level(logging.INFO)  # what `hubclf train` shows
    args = ["train", "--model", ARCH, "--data", str(data), "--img-size", str(HEIGHT), str(WIDTH), "--no-pretrained",
            "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--output-dir", str(tmp_path / "out"),
            "--push-to-hub", repo_id]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    everything = caplog.text + captured.out + captured.err
    assert f"pushed to {hub.endpoint}/{repo_id}/commit/" in captured.out
    assert "HTTP Request: PUT" in caplog.text and "?<redacted>" in caplog.text
    assert hub.token not in everything and not SIGNED.search(everything)


def test_commit_to_hub_builds_fresh_operations_per_attempt(use_hub, new_repo_id):
    hub, repo_id = use_hub, new_repo_id("fresh-ops")
    hub.fail_next("commit", status=500, times=2)
    built = []

    def operations():
        built.append([CommitOperationAdd(path_in_repo="weights.bin", path_or_fileobj=b"\1" * 2048)])
        return built[-1]

    commit = publish.commit_to_hub(HfApi(token=hub.token), repo_id, operations, commit_message="three tries")
    assert len(built) == 3 and len({id(ops[0]) for ops in built}) == 3
    assert HfApi(token=hub.token).list_repo_commits(repo_id)[0].commit_id == commit.oid
