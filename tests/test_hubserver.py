"""The local Hub used by the tests, driven by the real huggingface_hub client over HTTP (tests/hubserver.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

from tests.hub_fixtures import set_hub_offline
from tests.hubserver import HubServer, lfs_pointer


def _make_folder(folder: Path, notes: str) -> dict[str, torch.Tensor]:
    """A text file (a regular upload) and a safetensors file (an LFS upload, by the Hub's .gitattributes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(notes)
    tensors = {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "bias": torch.ones(3)}
    save_file(tensors, folder / "model.safetensors")
    return tensors


def _push_timm_model(hub: HubServer, repo_id: str, folder: Path) -> torch.nn.Module:
    """timm's tiny ``test_resnet``, saved in timm's Hub format and pushed: what ``hf-hub:`` loading expects."""
    model = timm.create_model("test_resnet", num_classes=3).eval()
    save_for_hf(model, folder, safe_serialization=True)
    _push(hub, repo_id, folder, "Add timm model")
    return model


def _push(hub: HubServer, repo_id: str, folder: Path, message: str) -> str:
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message).oid


def test_create_repo_then_exist_ok(use_hub, new_repo_id):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("create")

    url = api.create_repo(repo_id)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(repo_id)
    again = api.create_repo(repo_id, exist_ok=True)

    assert url == again == f"{use_hub.endpoint}/{repo_id}"
    assert url.repo_id == repo_id
    assert conflict.value.response.status_code == 409
    assert api.list_repo_files(repo_id) == [".gitattributes"]  # the Hub's initial commit


def test_upload_folder_sends_weights_through_lfs(use_hub, new_repo_id, tmp_path):
    repo_id = new_repo_id("lfs")
    tensors = _make_folder(tmp_path / "model", "first")
    first_request = len(use_hub.requests)

    commit = _push(use_hub, repo_id, tmp_path / "model", "Add model")

    siblings = HfApi().model_info(repo_id, files_metadata=True).siblings
    lfs_info = {sibling.rfilename: sibling.lfs for sibling in siblings}
    assert lfs_info["notes.txt"] is None
    oid = lfs_info["model.safetensors"].sha256
    new_requests = use_hub.requests[first_request:]
    sent = [(request.server, request.method, request.path.split("?")[0]) for request in new_requests]
    assert ("api", "POST", f"/{repo_id}.git/info/lfs/objects/batch") in sent
    assert ("storage", "PUT", f"/upload/{repo_id}/{oid}") in sent
    # git holds a git-lfs pointer, the bytes are in the LFS store: the layout olah reads.
    repo, local_weights = use_hub.repo(repo_id), tmp_path / "model" / "model.safetensors"
    assert repo.git("show", f"{commit}:model.safetensors") == lfs_pointer(oid, local_weights.stat().st_size)
    assert repo.lfs_object_path(oid).read_bytes() == local_weights.read_bytes()

    weights = hf_hub_download(repo_id, "model.safetensors")
    notes = hf_hub_download(repo_id, "notes.txt")

    assert Path(notes).read_text() == "first"
    loaded = load_file(weights)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[key], tensors[key]) for key in tensors)
    assert Path(weights).parent.name == commit  # the snapshot folder is named after X-Repo-Commit


def test_second_commit_keeps_the_first_revision(use_hub, new_repo_id, tmp_path):
    repo_id = new_repo_id("revisions")
    _make_folder(tmp_path / "model", "v1")
    first = _push(use_hub, repo_id, tmp_path / "model", "v1")
    (tmp_path / "model" / "notes.txt").write_text("v2")
    second = _push(use_hub, repo_id, tmp_path / "model", "v2")
    api = HfApi(token=use_hub.token)
    api.create_branch(repo_id, branch="stable", revision=first)

    assert first != second
    assert api.repo_info(repo_id).sha == second
    assert api.repo_info(repo_id, revision=first).sha == first
    assert Path(hf_hub_download(repo_id, "notes.txt", revision=first)).read_text() == "v1"
    assert Path(hf_hub_download(repo_id, "notes.txt", revision="stable")).read_text() == "v1"
    assert Path(hf_hub_download(repo_id, "notes.txt")).read_text() == "v2"
    assert [commit.title for commit in api.list_repo_commits(repo_id)] == ["v2", "v1", "initial commit"]
    # Unchanged weights were not uploaded again: one LFS object for two commits.
    lfs_store = use_hub.repo(repo_id).path / ".git" / "lfs" / "objects"
    assert len([path for path in lfs_store.rglob("*") if path.is_file()]) == 1


def test_pull_request_commit_stays_off_main(use_hub, new_repo_id):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("pr")
    api.create_repo(repo_id)

    commit = api.upload_file(path_or_fileobj=b"proposal", path_in_repo="notes.txt", repo_id=repo_id, create_pr=True)

    assert commit.pr_url == f"{use_hub.endpoint}/{repo_id}/discussions/1"
    assert Path(hf_hub_download(repo_id, "notes.txt", revision="refs/pr/1")).read_bytes() == b"proposal"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "notes.txt")


def test_download_works_offline_from_the_cache(use_hub, new_repo_id, tmp_path, monkeypatch):
    repo_id = new_repo_id("offline")
    _make_folder(tmp_path / "model", "cached")
    _push(use_hub, repo_id, tmp_path / "model", "Add model")
    online = hf_hub_download(repo_id, "model.safetensors")
    requests_before = len(use_hub.requests)

    set_hub_offline(monkeypatch)
    offline = hf_hub_download(repo_id, "model.safetensors")

    assert offline == online
    assert len(use_hub.requests) == requests_before  # not a single HTTP request


def test_missing_file_and_revision_raise_the_client_errors(use_hub, new_repo_id):
    repo_id = new_repo_id("errors")
    HfApi(token=use_hub.token).create_repo(repo_id)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nowhere.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(new_repo_id("never-created"))


def test_writes_need_a_valid_token(use_hub, new_repo_id):
    repo_id = new_repo_id("auth")
    HfApi(token=use_hub.token).create_repo(repo_id)

    with pytest.raises(HfHubHTTPError) as anonymous_create:
        HfApi(token=False).create_repo(new_repo_id("anonymous"))
    with pytest.raises(HfHubHTTPError) as anonymous_upload:
        HfApi(token=False).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    with pytest.raises(HfHubHTTPError) as wrong_token:
        HfApi(token="hf_not_a_valid_token").upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)

    assert anonymous_create.value.response.status_code == 401
    assert anonymous_upload.value.response.status_code == 401
    assert wrong_token.value.response.status_code == 401
    assert HfApi().list_repo_files(repo_id) == [".gitattributes"]


def test_private_repo_is_unreadable_without_token(use_hub, new_repo_id):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("private")
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="notes.txt", repo_id=repo_id)

    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "notes.txt", token=False)

    assert api.model_info(repo_id).private is True
    assert Path(hf_hub_download(repo_id, "notes.txt", token=use_hub.token)).read_bytes() == b"secret"


def test_delete_repo(use_hub, new_repo_id):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("delete")
    api.create_repo(repo_id)

    api.delete_repo(repo_id)

    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id)


def test_delete_branch(use_hub, new_repo_id):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("branches")
    api.create_repo(repo_id)
    api.create_branch(repo_id, branch="dev")  # POST and DELETE share the path: each must reach its own handler
    api.delete_branch(repo_id, branch="dev")
    assert [branch.name for branch in api.list_repo_refs(repo_id).branches] == ["main"]


def test_injected_faults_fail_the_next_requests_then_stop(use_hub, new_repo_id, tmp_path):
    api = HfApi(token=use_hub.token)
    repo_id = new_repo_id("faults")
    use_hub.fail_next("create_repo", status=503, times=2)
    for _ in range(2):
        with pytest.raises(HfHubHTTPError, match="(?s)503.*Injected fault"):
            api.create_repo(repo_id)
    api.create_repo(repo_id)  # the fault is used up

    _make_folder(tmp_path / "model", "dropped once")
    use_hub.drop_connection_next("storage_upload")
    _push(use_hub, repo_id, tmp_path / "model", "survives a dropped upload")  # huggingface_hub retries the PUT
    uploads = [r for r in use_hub.requests if r.server == "storage" and r.method == "PUT" and repo_id in r.path]
    assert len(uploads) == 2

    with pytest.raises(ValueError, match="no endpoint 'lfs_upload'.*storage_upload"):
        use_hub.fail_next("lfs_upload")


def test_token_only_ever_travels_in_the_authorization_header(use_hub, new_repo_id, tmp_path):
    repo_id = new_repo_id("token")
    _make_folder(tmp_path / "model", "token check")
    first_request = len(use_hub.requests)
    _push(use_hub, repo_id, tmp_path / "model", "Add model")
    hf_hub_download(repo_id, "model.safetensors", token=use_hub.token, force_download=True)

    sent = use_hub.requests[first_request:]
    assert any(request.headers.get("authorization") == f"Bearer {use_hub.token}" for request in sent)
    # The storage host (S3/CDN on the real Hub) is reached through signed URLs: the client must not send the token.
    assert not [request for request in sent if request.server == "storage" and "authorization" in request.headers]
    assert use_hub.find_secret(use_hub.token) == []


def test_olah_serves_the_same_repos(hub_server, use_olah, new_repo_id, tmp_path):
    repo_id = new_repo_id("olah")
    tensors = _make_folder(tmp_path / "model", "v1")
    first = _push(hub_server, repo_id, tmp_path / "model", "v1")
    (tmp_path / "model" / "notes.txt").write_text("v2")
    second = _push(hub_server, repo_id, tmp_path / "model", "v2")
    hub_requests = len(hub_server.requests)

    api = HfApi()  # now pointed at olah
    assert api.model_info(repo_id, revision="main").sha == second
    assert api.model_info(repo_id, revision=first).sha == first
    weights = hf_hub_download(repo_id, "model.safetensors")
    snapshot = snapshot_download(repo_id, revision=first)

    assert all(torch.equal(load_file(weights)[key], tensors[key]) for key in tensors)
    assert Path(hf_hub_download(repo_id, "notes.txt")).read_text() == "v2"
    assert (Path(snapshot) / "notes.txt").read_text() == "v1"
    snapshot_files = sorted(path.name for path in Path(snapshot).iterdir())
    assert snapshot_files == [".gitattributes", "model.safetensors", "notes.txt"]
    assert len(hub_server.requests) == hub_requests  # every byte above came through olah


def test_timm_loads_hf_hub_models_from_the_test_hub(use_hub, new_repo_id, tmp_path):
    repo_id = new_repo_id("timm")
    model = _push_timm_model(use_hub, repo_id, tmp_path / "model")

    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()

    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))


def test_timm_loads_hf_hub_models_through_olah(hub_server, use_olah, new_repo_id, tmp_path):
    repo_id = new_repo_id("timm-olah")
    model = _push_timm_model(hub_server, repo_id, tmp_path / "model")
    hub_requests = len(hub_server.requests)

    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()

    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))
    assert len(hub_server.requests) == hub_requests
