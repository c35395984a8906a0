"""Hugging Face Hub ids as model names: `Qwen/Qwen2.5-0.5B-Instruct` is the folder of its snapshot
in the local HF cache (`HF_HOME`, or `HF_HUB_CACHE`), found without a network. Downloading into
the cache takes consent: `model.allow_download=true`, or `HF_HUB_OFFLINE=0` in the environment
(treerl sets `HF_HUB_OFFLINE=1` when it is not set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from treerl.errors import UserError

HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]
"""What a download fetches: the configs, the weights as safetensors (treerl loads no other kind),
the tokenizer and chat template, and the model's own code (run only with
model.trust_remote_code=true)."""
OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}
"""Values of HF_HUB_OFFLINE that huggingface_hub reads as offline."""


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repository id: `name` or `owner/name`."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def downloads_allowed(allow_download: bool) -> bool:
    """model.allow_download, or HF_HUB_OFFLINE set to anything huggingface_hub reads as online
    (`0`); read when the model loads, so that treerl's own default (1) forbids it."""
    return allow_download or os.environ.get("HF_HUB_OFFLINE", "1").upper() not in OFFLINE_VALUES


@contextmanager
def hub_reachable() -> Iterator[None]:
    """huggingface_hub may reach the Hub for the duration: its offline flag is read from the
    environment once, at import, where treerl set HF_HUB_OFFLINE=1."""
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline


def hub_snapshot(repo_id: str, allow_download: bool) -> Path:
    """The folder of a Hub model's snapshot in the local HF cache, downloaded into it first where
    downloads are allowed (downloads_allowed); a UserError in one line when it is not there, or the
    download fails."""
    if not downloads_allowed(allow_download):
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except LocalEntryNotFoundError as err:
            incomplete = (
                "is incomplete there"
                if isinstance(err, IncompleteSnapshotError)
                else "is not there"
            )
            raise UserError(
                f"model '{repo_id}' is no local directory, and as a Hugging Face Hub id it "
                f"{incomplete} (the local cache {constants.HF_HUB_CACHE}); treerl downloads "
                "nothing unless told: set model.allow_download=true (or HF_HUB_OFFLINE=0)"
            ) from None
    try:
        with hub_reachable():
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except OSError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"model '{repo_id}' is no local directory, and downloading it from the Hugging Face "
            f"Hub failed: {reason}"
        ) from None
