"""The Hub side: the repository id, the token, and the upload itself through huggingface_hub.

The token comes from HF_TOKEN or the user's login (`hf auth login`), through huggingface_hub.get_token();
it is handed to the client and never printed or written.

Upload: `HfApi.create_repo(exist_ok=True)` then `HfApi.upload_folder`. In huggingface_hub 1.x/2.x
upload_folder is the resumable path (there is no separate upload_large_folder in the installed 2.4): with
hf_xet installed (the default) it streams files through Xet storage in several commits when the folder is
large, and re-running the same call skips committed files and already-stored chunks; without hf_xet it
uploads large files through the Git LFS batch API, whose server skips objects it already holds, then
commits once. Rerunning a failed publish therefore sends only what has not arrived. `delete_patterns="*"`
makes the repository hold exactly the verified folder: files of an earlier publish that this folder no
longer has (an old adapter/, stale plots) are deleted in the same commit, so the card never describes files
that contradict it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from extend.cli import CommandError
from extend.publish.export_info import is_hub_id

NO_TOKEN = "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use dry_run=true)"


class PublishError(CommandError):
    """Publishing stopped: a staged folder failed verification, or the Hub refused the upload."""


def repo_id_problems(repo_id: str | None, key: str = "publish.repo_id") -> list[str]:
    if repo_id is None:
        return [f"{key} is missing: give repo_id=ORG/NAME"]
    if not is_hub_id(repo_id, namespace_required=True):
        return [f"{key}={repo_id!r} is not a Hub repository id: use ORG/NAME (letters, digits, '-', '_', '.'; no '--' "
                "or '..'; neither part starting or ending with '-' or '.'; at most 96 characters)"]
    return []


def hub_token() -> str | None:
    """The token huggingface_hub would use: HF_TOKEN, else the stored login."""
    return get_token()


def repo_url(repo_id: str) -> str:
    return f"{constants.ENDPOINT}/{repo_id}"


def upload(folder: Path, repo_id: str, token: str, private: bool, commit_message: str) -> str:
    """Create the repository if needed and make it hold exactly `folder`; returns the commit's URL."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                   delete_patterns="*")
    except HfHubHTTPError as err:
        detail = (err.server_message or str(err)).strip().splitlines()[0]
        raise PublishError(f"the Hub refused the upload to {repo_id} (HTTP {err.response.status_code}: {detail}); "
                           "rerun the same command to resume once it is fixed") from err
    return commit.commit_url
