"""Fetching pretrained files and Hugging Face Hub repositories into binder's cache.

Design:

* :func:`binder.download.download` (re-exported here) fetches plain HTTP(S) files: resumable,
  never half-written, size and SHA-256 checked. Files whose publisher gives no checksum (Meta's
  ImageBind weights) are *trusted on first use*: the digest computed while streaming is kept in a
  sidecar and every later cache hit is checked against it.
* A registry (:data:`PRETRAINED`, :func:`register_pretrained`) names well-known files; each is
  registered by the module that owns it (``imagebind_huge`` by :mod:`binder.imagebind`). The URL of each can be
  redirected with ``BINDER_PRETRAINED_URL_<NAME>`` (mirrors, air-gapped sites, tests).
* :func:`resolve` turns the *source* string a user passes into a local path: an existing path,
  a registered name, an http(s) URL, or ``hf-hub:org/name[@revision]`` (via ``huggingface_hub``).
* Cache layout under :func:`cache_dir`: ``pretrained/<filename>``, ``downloads/<sha256(url)[:16]>/
  <basename>`` and ``huggingface/`` (Hub snapshots, in huggingface_hub's own layout).

Every failure is a :class:`binder.errors.ModelLoadError` naming the URL or file and what was
expected. Importing this module is cheap (``huggingface_hub`` is imported on first use, torch
never). Concurrent downloads of one file are not coordinated; the size and digest checks catch
the resulting corruption.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from binder.download import cache_dir as _cache_root  # ``resolve`` has a parameter named ``cache_dir``
from binder.download import (
    PathLike,
    _normalise_sha256,
    cache_dir,
    download,
)
from binder.errors import BinderInputError, ModelLoadError
from binder.extension import Registry

logger = logging.getLogger(__name__)

__all__ = ["PretrainedFile", "Resolved", "cache_dir", "download", "fetch_pretrained", "get_pretrained",
           "list_pretrained", "pretrained_url", "push_folder_to_hub", "register_pretrained", "resolve", "url_env_var"]

URL_ENV_PREFIX = "BINDER_PRETRAINED_URL_"
HUB_PREFIX = "hf-hub:"
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class PretrainedFile:
    """A named file binder knows how to fetch.

    Attributes:
        name: Registry key, e.g. ``"imagebind_huge"``.
        url: Where to download it from (see :func:`pretrained_url` for the override).
        filename: The file's name in ``cache_dir()/pretrained/``.
        kind: What it holds: ``"imagebind"`` (an official ImageBind checkpoint) or ``"binder"``
            (an archive of a binder model folder); :func:`resolve` returns it as ``Resolved.kind``.
        size: Size in bytes, when published.
        sha256: Hex digest, when published; otherwise trusted on first use.
        description: One line for humans.
    """

    name: str
    url: str
    filename: str
    kind: str
    size: int | None = None
    sha256: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name):
            raise BinderInputError(f"pretrained name must be letters, digits, '_', '.' or '-', got {self.name!r}")
        if not self.filename or Path(self.filename).name != self.filename or self.filename in (".", ".."):
            raise BinderInputError(f"filename of {self.name!r} must be a plain file name, got {self.filename!r}")
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise BinderInputError(f"url of {self.name!r} must be http(s), got {self.url!r}")
        if self.size is not None and self.size < 0:
            raise BinderInputError(f"size of {self.name!r} must be >= 0, got {self.size}")
        object.__setattr__(self, "sha256", _normalise_sha256(self.sha256))


PRETRAINED: Registry = Registry("pretrained name", group="binder.pretrained", builtin=("binder.imagebind",),
                                error=ModelLoadError)


def register_pretrained(entry: PretrainedFile, *, replace: bool = False) -> PretrainedFile:
    """Add ``entry`` to :data:`PRETRAINED`; refused if its name is taken by another entry and not ``replace``."""
    return PRETRAINED.register(entry.name, entry, replace=replace)


def list_pretrained() -> list[str]:
    """Names of the registered pretrained files, sorted."""
    return PRETRAINED.list()


def get_pretrained(name: str) -> PretrainedFile:
    """The registered entry ``name``; ModelLoadError listing the known names otherwise."""
    return PRETRAINED.get(name)


def url_env_var(name: str) -> str:
    """The environment variable overriding the URL of ``name``: ``BINDER_PRETRAINED_URL_<NAME>``."""
    return URL_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def pretrained_url(entry: str | PretrainedFile) -> str:
    """The URL ``entry`` is downloaded from, honouring ``BINDER_PRETRAINED_URL_<NAME>``.

    A value ending in ``/`` is a base URL that the entry's filename is appended to
    (``https://mirror/imagebind/`` -> ``https://mirror/imagebind/imagebind_huge.pth``); any
    other value is the file's full URL. The pinned size and sha256 still apply to a mirror.
    """
    entry = get_pretrained(entry) if isinstance(entry, str) else entry
    override = os.environ.get(url_env_var(entry.name), "").strip()
    if not override:
        return entry.url
    url = override + urllib.parse.quote(entry.filename) if override.endswith("/") else override
    logger.info("Downloading %s from %s (set by %s)", entry.name, url, url_env_var(entry.name))
    return url


def fetch_pretrained(name: str, *, cache_dir: PathLike | None = None, verify: bool = True,
                     progress: bool = True) -> Path:
    """Download the registered file ``name`` into ``cache_dir()/pretrained/`` (once); return it."""
    entry = get_pretrained(name)
    dest = _cache_root(cache_dir) / "pretrained" / entry.filename
    return download(pretrained_url(entry), dest, sha256=entry.sha256, size=entry.size,
                    progress=progress, verify=verify)


# --------------------------------------------------------------------------- resolve
@dataclass(frozen=True)
class Resolved:
    """What :func:`resolve` found: ``kind`` (``"path"``, or a registered entry's kind), the local
    ``path`` (file or folder) and the ``source`` string the caller passed."""

    kind: str
    path: Path
    source: str


def resolve(source: PathLike, *, cache_dir: PathLike | None = None, revision: str | None = None,
            verify: bool = True, progress: bool = True) -> Resolved:
    """Turn ``source`` into a local file or folder, downloading it into the cache when needed.

    Accepted forms, tried in this order: ``hf-hub:org/name[@revision]`` (a Hub snapshot
    folder), an ``http(s)://`` URL (a file in ``cache_dir()/downloads/``), an existing local
    path (``~`` expanded), a registered pretrained name (see :func:`list_pretrained`).

    Args:
        source: What to resolve.
        cache_dir: Cache root; defaults to :func:`cache_dir`.
        revision: Branch, tag or commit of an ``hf-hub:`` source.
        verify: Hash cached downloads before returning them.
        progress: Show progress bars.

    Raises:
        ModelLoadError: ``source`` matches no accepted form or cannot be fetched.
        BinderInputError: ``revision`` is given for a source that is not ``hf-hub:``, or disagrees
            with the ``@revision`` in it.
    """
    text = os.fspath(source)
    root = _cache_root(cache_dir)
    if text.startswith(HUB_PREFIX):
        return _resolve_hub(text, revision, root, progress)
    if revision is not None:
        raise BinderInputError(f"revision={revision!r} only applies to hf-hub: sources, got {text!r}")
    if urllib.parse.urlsplit(text).scheme in ("http", "https"):
        dest = root / "downloads" / hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] / _url_basename(text)
        return Resolved("path", download(text, dest, verify=verify, progress=progress), text)
    local = Path(text).expanduser()
    if text and local.exists():
        return Resolved("path", local.absolute(), text)
    if text in PRETRAINED:
        path = fetch_pretrained(text, cache_dir=root, verify=verify, progress=progress)
        return Resolved(PRETRAINED.get(text).kind, path, text)
    raise ModelLoadError(_unknown_source(text))


def _url_basename(url: str) -> str:
    """The file name a URL's path ends in (percent-decoded), or ``download``."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]).replace(os.sep, "_")
    return name if name not in ("", ".", "..") else "download"


def _unknown_source(text: str) -> str:
    """The error message for a source of no accepted form, listing the forms."""
    if text.startswith(("/", "./", "../", "~")) or os.sep in text and not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return f"model path {text!r} does not exist (expected a binder model folder or an ImageBind checkpoint)"
    hint = f" (did you mean hf-hub:{text}?)" if re.fullmatch(r"[\w.-]+/[\w.-]+", text) else ""
    return (f"Cannot resolve {text!r}{hint}: it is not an existing file or folder, a registered "
            "pretrained name, an http(s) URL or a Hugging Face Hub id. Accepted forms:\n"
            "  - a path to an existing file or folder (~ is expanded)\n"
            f"  - a registered pretrained name: {', '.join(list_pretrained()) or '(none registered)'}\n"
            "  - an http:// or https:// URL of a file\n"
            "  - hf-hub:org/name or hf-hub:org/name@revision (a Hugging Face Hub repository)")


# --------------------------------------------------------------------------- Hugging Face Hub
def _hub_endpoint() -> str | None:
    """``$HF_ENDPOINT`` read now, not when huggingface_hub was imported (None: its default)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _parse_hub(source: str, revision: str | None) -> tuple[str, str | None]:
    """(repo_id, revision) from ``hf-hub:org/name[@revision]`` and the ``revision`` argument."""
    repo_id, at, pinned = source[len(HUB_PREFIX):].partition("@")
    if not _HUB_ID_RE.fullmatch(repo_id) or (at and not pinned):
        raise ModelLoadError(f"Invalid Hugging Face Hub source {source!r}: expected hf-hub:org/name "
                             "or hf-hub:org/name@revision")
    if revision is not None and pinned and revision != pinned:
        raise BinderInputError(f"revision={revision!r} disagrees with the revision in {source!r}")
    return repo_id, revision or pinned or None


class _SilentTqdm(tqdm):
    """A tqdm that never draws: given to huggingface_hub when ``progress=False``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _resolve_hub(source: str, revision: str | None, root: Path, progress: bool) -> Resolved:
    """Download (or find in the cache) a snapshot of a Hub repository."""
    import huggingface_hub

    repo_id, rev = _parse_hub(source, revision)
    endpoint = _hub_endpoint()
    hub_cache = root / "huggingface"
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=rev, cache_dir=hub_cache, endpoint=endpoint,
            tqdm_class=None if progress else _SilentTqdm)
    # huggingface_hub raises its own errors, OSErrors and httpx2 transport errors (e.g. a proxy
    # error); all become one ModelLoadError with the original chained.
    except Exception as err:
        raise _hub_error(err, repo_id, rev, endpoint, hub_cache) from err
    logger.info("Resolved %s to %s", source, folder)
    return Resolved("path", Path(folder), source)


def _hub_error(err: Exception, repo_id: str, rev: str | None, endpoint: str | None,
               hub_cache: Path) -> ModelLoadError:
    """A clear ModelLoadError for a failed ``snapshot_download``."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    where = endpoint or constants.ENDPOINT
    what = f"Hugging Face Hub repository {repo_id!r}" + (f" at revision {rev!r}" if rev else "")
    if isinstance(err, hf.RevisionNotFoundError):
        msg = (f"Revision {rev or 'main'!r} of Hugging Face Hub repository {repo_id!r} was not found on "
               f"{where}: expected an existing branch, tag or commit hash.")
    elif isinstance(err, hf.GatedRepoError):
        msg = (f"{what} is gated: accept its conditions on {where}/{repo_id} and log in "
               "(`hf auth login` or HF_TOKEN).")
    elif isinstance(err, hf.RepositoryNotFoundError):
        msg = (f"{what} was not found on {where}: it does not exist, or it is private and no valid "
               "token is set (`hf auth login` or HF_TOKEN).")
    elif isinstance(err, hf.IncompleteSnapshotError):
        msg = (f"{what}: the Hub at {where} could not be reached and the cached snapshot in {hub_cache} "
               "is incomplete; rerun with network access to complete it.")
    elif isinstance(err, hf.LocalEntryNotFoundError):
        msg = (f"Cannot fetch {what}: the Hub at {where} could not be reached (offline mode such as "
               f"HF_HUB_OFFLINE=1, or a connection error) and no cached snapshot exists in {hub_cache}.")
    elif isinstance(err, hf.HFValidationError):
        msg = f"Invalid Hugging Face Hub repository id {repo_id!r}: {err}"
    else:
        msg = f"Fetching {what} from {where} failed: {type(err).__name__}: {err}"
    return ModelLoadError(msg)


def push_folder_to_hub(folder: PathLike, repo_id: str, *, token: str | None = None,
                       private: bool = False, revision: str | None = None,
                       commit_message: str = "Upload binder model") -> str:
    """Upload a saved model folder to the Hub repository ``repo_id`` (created when missing).

    Args:
        folder: The folder to upload (e.g. one written by ``binder.save``).
        repo_id: ``org/name`` on the Hub.
        token: Hub token; defaults to the logged-in token or ``HF_TOKEN``.
        private: Create the repository as private (an existing one keeps its visibility).
        revision: Branch to commit to (created from ``main`` when missing); default ``main``.
        commit_message: The commit's title.

    Returns:
        The commit's URL (or, failing that, the repository's URL).

    Raises:
        ModelLoadError: ``folder`` is not a folder, or the Hub refused the upload.
    """
    from huggingface_hub import HfApi

    path = Path(folder).expanduser()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise ModelLoadError(f"Cannot push {path} to Hugging Face Hub repository {repo_id!r}: "
                             f"expected a folder (a saved binder model), but it {state}.")
    api = HfApi(token=token, endpoint=_hub_endpoint())
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=path, revision=revision,
                                   commit_message=commit_message)
    except Exception as err:  # Hub, OS and transport errors alike, chained below
        raise ModelLoadError(f"Uploading {path} to Hugging Face Hub repository {repo_id!r} failed: "
                             f"{type(err).__name__}: {err}") from err
    url = str(getattr(commit, "commit_url", None) or repo_url)
    logger.info("Pushed %s to %s", path, url)
    return url
