"""Resolving ``from_pretrained`` names: a local directory, or a Hugging Face Hub repo id.

A repo id (``"SenseTime/deformable-detr"``) goes through ``huggingface_hub`` (an optional
dependency) and its cache, honouring ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
``force_download`` and the ``HF_HUB_OFFLINE`` / ``HF_HUB_CACHE`` / ``HF_HOME`` environment
variables, read at call time. Offline, a file missing from the cache raises ``OSError`` saying what
to download and where it goes. Every model family and processor calls these functions.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

_TRUE = {"1", "on", "yes", "true"}


@dataclass
class HubOptions:
    """Where and how to look a repo id up (the ``transformers`` names and defaults)."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None
    force_download: bool = False
    subfolder: str = ""
    proxies: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.revision is not None and not isinstance(self.revision, str):
            raise TypeError(f"revision must be a str (branch, tag or commit), got {type(self.revision).__name__}")
        if not isinstance(self.local_files_only, bool):
            raise TypeError(f"local_files_only must be a bool, got {self.local_files_only!r}")
        if not isinstance(self.subfolder, str):
            raise TypeError(f"subfolder must be a str, got {type(self.subfolder).__name__}")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) set to a true value, read now."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The Hub cache folder: ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (read at call time, unlike ``huggingface_hub``'s constants)."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


_FILE_ENDINGS = (".pth", ".pt", ".bin", ".json", ".safetensors")
_MAX_REPO_PART = 96


def _hub_name_part(part: str) -> bool:
    """One part of a repo id as the Hub allows it: letters, digits, ``-_.``, at most 96 characters,
    starting and ending with a letter, digit or ``_``, and no ``--`` or ``..``."""
    return (
        0 < len(part) <= _MAX_REPO_PART
        and all(ch.isalnum() or ch in "-_." for ch in part)
        and (part[0].isalnum() or part[0] == "_")
        and (part[-1].isalnum() or part[-1] == "_")
        and "--" not in part
        and ".." not in part
    )


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` is to be looked up on the Hugging Face Hub rather than on the disk.

    Decided from the name alone, before any network call. A name is a local path (False) when it
    exists; starts with ``.``, ``/`` or ``~``; holds a backslash; ends with ``/`` or ``.``; holds
    ``..`` or more than one ``/``; ends like a weights or JSON file; or when its first component
    (``runs`` of ``runs/t1``) exists here. Otherwise it is a repo id when it is ``name`` or
    ``owner/name`` made of Hub-legal parts (see ``_hub_name_part``).
    """
    if not isinstance(name, str) or not name:
        return False
    if os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name or name.endswith(("/", ".", *_FILE_ENDINGS)):
        return False
    parts = name.split("/")
    if len(parts) > 2 or (len(parts) == 2 and os.path.exists(parts[0])):
        return False
    return all(_hub_name_part(part) for part in parts)


def _import_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as error:  # pragma: no cover - huggingface_hub is installed with transformers
        raise ImportError(
            "loading a Hub repo id needs huggingface_hub (pip install huggingface_hub); or pass a local directory"
        ) from error
    return huggingface_hub


def resolve_file(name_or_path: str | os.PathLike, filename: str, options: HubOptions | None = None, *, required: bool = True) -> str | None:
    """Local path of ``filename`` in a directory or in the Hub repo ``name_or_path``.

    Args:
        name_or_path: a local directory, or a repo id (``"owner/name"``).
        filename: the file inside it (``"config.json"``, ``"model.safetensors"``, ...).
        options: revision, cache, token, offline switches.
        required: when False, a file the repo does not have gives None instead of raising.

    Raises:
        FileNotFoundError: a local directory without the file (when ``required``).
        OSError: a repo id whose file cannot be had (offline and not cached: the message says what
            to download and where to put it).
    """
    options = options or HubOptions()
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        path = os.path.join(name, options.subfolder, filename)
        if os.path.isfile(path):
            return path
        if required:
            raise FileNotFoundError(f"{filename} not found in {os.path.join(name, options.subfolder)!r}")
        return None
    if not looks_like_repo_id(name):
        raise FileNotFoundError(f"{name!r} is neither a local directory nor a Hugging Face Hub repo id")
    hub = _import_hub()
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = options.local_files_only or hub_offline()
    cache = hub_cache_dir(options.cache_dir)
    try:
        return hub.hf_hub_download(
            name,
            filename,
            subfolder=options.subfolder or None,
            revision=options.revision,
            cache_dir=cache,
            local_files_only=offline,
            token=options.token,
            force_download=options.force_download,
            proxies=options.proxies,
        )
    except LocalEntryNotFoundError as error:
        if not required and _cached_revision_exists(cache, name, options.revision):
            return None  # the snapshot is cached, this optional file is just not part of it
        why = "offline (HF_HUB_OFFLINE=1 or local_files_only=True)" if offline else "the Hub could not be reached"
        raise OSError(
            f"{filename!r} of {name!r} (revision {options.revision or 'main'}) is not in the Hugging Face cache "
            f"{cache!r} and {why}. Download it on a connected machine with `huggingface-cli download {name} "
            f"{filename}{' --revision ' + options.revision if options.revision else ''} --cache-dir {cache}` "
            f"(or copy the repo's files into a local directory and pass that directory)"
        ) from error
    except EntryNotFoundError:  # after LocalEntryNotFoundError, its subclass
        if required:
            raise OSError(f"{name!r} (revision {options.revision or 'main'}) has no file {filename!r}") from None
        return None
    except HFValidationError as error:  # a name the Hub refuses (looks_like_repo_id lets few through)
        raise FileNotFoundError(f"{name!r} is neither a local directory nor a valid Hugging Face Hub repo id: {error}") from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise OSError(f"{name!r} (revision {options.revision or 'main'}) is not a Hub repo this token can read: {error}") from error


def _cached_revision_exists(cache: str, repo_id: str, revision: str | None) -> bool:
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    ref = os.path.join(folder, "refs", revision or "main")
    if os.path.isfile(ref):
        return True
    return revision is not None and os.path.isdir(os.path.join(folder, "snapshots", revision))


def push_to_hub(save: Any, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                token: str | bool | None = None, revision: str | None = None, create_pr: bool = False) -> Any:
    """Write with ``save(directory)`` into a temporary folder and upload it to ``repo_id``.

    Returns ``huggingface_hub``'s commit info. Needs ``huggingface_hub`` and network access.
    """
    if not isinstance(repo_id, str) or not looks_like_repo_id(repo_id):
        raise ValueError(f"repo_id must be a Hub repo id such as 'owner/name', got {repo_id!r}")
    hub = _import_hub()
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload with models",
                                 revision=revision, create_pr=create_pr)


class PushToHubMixin:
    """``push_to_hub(repo_id, ...)`` for anything with ``save_pretrained(directory)``."""

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False,
                    safe_serialization: bool = True) -> Any:
        """Upload ``save_pretrained``'s files to the Hub repo ``repo_id`` (created if missing)."""
        import inspect

        takes_format = "safe_serialization" in inspect.signature(self.save_pretrained).parameters

        def save(folder: str) -> None:
            if takes_format:
                self.save_pretrained(folder, safe_serialization=safe_serialization)
            else:
                self.save_pretrained(folder)

        return push_to_hub(save, repo_id, commit_message=commit_message, private=private, token=token, revision=revision, create_pr=create_pr)
