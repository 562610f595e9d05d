"""Models from the Hugging Face Hub, through huggingface_hub and its own cache (so models a user already has are
reused): which files Folio needs, a pull with byte progress, ETA and cancel, a disk-space check before it starts,
checksums after it, removal, and the access token for gated models.

A pull takes only config, generation config, tokenizer and chat-template files and the safetensors weights (the
shards the weight index names, or model.safetensors): never code, pickled weights or other formats. It fetches
each missing file with `hf_hub_download` at the commit the hub names, so the cache's refs and snapshots are
huggingface_hub's own. Files already in the cache are not fetched again, so a cancelled or failed pull resumes at
the first file it had not finished; within a file, huggingface_hub resumes a dropped connection with a range
request (it restarts a file the process stopped in the middle of). Downloads go over plain HTTP
(HF_HUB_DISABLE_XET, set in engine/__init__.py), which reports every chunk, so Cancel stops within a file.

HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE are read at each call (the tests point them at a local
server). The token is stored in Folio's config folder with user-only permissions and never logged or shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from engine.errors import CancelledError, ModelError
from engine.events import CancelToken, ProgressCallback, ProgressMeter
from engine.memory import free_disk
from engine.units import format_bytes

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
WEIGHTS_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"
TOKEN_FILE = "hub-token"
DISK_MARGIN_BYTES = 256 * 2**20  # kept free beyond the download
HASH_CHUNK = 8 << 20
MAIN = "main"


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repo: its size and the hash the hub states (sha256 for LFS files, else the git blob id)."""

    name: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class HubModel:
    """What the hub says about a repo at one commit, narrowed to the files Folio needs."""

    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]
    gated: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def hub_cache_dir() -> Path:
    """huggingface_hub's cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# -- the access token ------------------------------------------------------------------------------------------
def token_path() -> Path:
    """Where Folio keeps the hub token: its config folder (FOLIO_CONFIG_DIR or the platform's)."""
    folder = os.environ.get("FOLIO_CONFIG_DIR") or platformdirs.user_config_dir("folio", appauthor=False)
    return Path(folder) / TOKEN_FILE


def save_hub_token(token: str) -> Path:
    """Store the token (user-only permissions, written to a temporary name, then renamed); an empty one removes it."""
    path = token_path()
    token = token.strip()
    if not token:
        path.unlink(missing_ok=True)
        return path
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ModelError("That access token has spaces or control characters in it.",
                         "Copy the token again from your hub account's Access Tokens page.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return path


def stored_hub_token() -> str | None:
    """Folio's stored token, or None (huggingface_hub then uses HF_TOKEN or its own login, if any)."""
    try:
        return token_path().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


# -- what is installed -------------------------------------------------------------------------------------------
def needed_files(names: list[str] | set[str], weight_index: dict | None) -> list[str]:
    """The files of a repo Folio downloads: config, tokenizer and template files, and the safetensors weights (the
    index and the shards it names, or model.safetensors). ModelError when the repo has no safetensors weights."""
    names = set(names)
    wanted = [n for n in CONFIG_FILES + TOKENIZER_FILES if n in names]
    if "config.json" not in names:
        raise ModelError("This hub repo has no config.json, so it is not a transformers model.",
                         "Choose a model repo with config.json and safetensors weights.")
    if weight_index is not None:
        shards = sorted(set(weight_index.get("weight_map", {}).values()))
        if not shards or any("/" in s or not s.endswith(".safetensors") or s not in names for s in shards):
            raise ModelError("This model's weight index names shards the repo does not have.",
                             "Report it to the model's authors, or choose another model.")
        return [*wanted, WEIGHTS_INDEX, *shards]
    if SINGLE_WEIGHTS in names:
        return [*wanted, SINGLE_WEIGHTS]
    raise ModelError("This hub repo has no safetensors weights (Folio never loads pickled .bin files or GGUF from the "
                     "hub).", "Choose a model published with safetensors weights.")


def installed_folder(repo_id: str) -> Path | None:
    """The cached snapshot (of the revision "main" points to) holding every file Folio needs, or None. No network."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    index = folder / WEIGHTS_INDEX
    try:
        weight_index = json.loads(index.read_text(encoding="utf-8")) if index.exists() else None
        names = needed_files({p.name for p in folder.iterdir()}, weight_index)
    except (OSError, ValueError, ModelError):
        return None
    has_tokenizer = (folder / "tokenizer.json").exists() or (folder / "tokenizer.model").exists()
    return folder if has_tokenizer and all((folder / name).exists() for name in names) else None


def remove_model(repo_id: str) -> int:
    """Delete every cached revision of the repo from huggingface_hub's cache; returns the bytes freed (0: none)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return 0
    for repo in info.repos:
        if repo.repo_type == "model" and repo.repo_id.lower() == repo_id.lower():
            strategy = info.delete_revisions(*(revision.commit_hash for revision in repo.revisions))
            strategy.execute()
            return int(strategy.expected_freed_size)
    return 0


# -- pulling --------------------------------------------------------------------------------------------------------
def remote_model(repo_id: str, token: str | None = None) -> HubModel:
    """Ask the hub for the repo's current commit and the sizes and hashes of the files Folio needs."""
    from huggingface_hub import HfApi

    if offline():
        raise _no_network(repo_id, "HF_HUB_OFFLINE is set")
    api = HfApi(endpoint=endpoint(), token=token)
    try:
        info = api.model_info(repo_id, files_metadata=True)
    except Exception as error:
        raise _hub_error(repo_id, error) from error
    siblings = {s.rfilename: s for s in info.siblings or []}
    weight_index = None
    if WEIGHTS_INDEX in siblings:
        index_path = _download(repo_id, WEIGHTS_INDEX, info.sha, token, None)
        try:
            weight_index = json.loads(Path(index_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelError(f"The weight index of {repo_id} is damaged ({error}).",
                             "Pull the model again later, or choose another model.") from error
    files = []
    for name in needed_files(list(siblings), weight_index):
        sibling = siblings[name]
        lfs = sibling.lfs
        files.append(RemoteFile(name, int(lfs.size if lfs is not None else sibling.size or 0),
                                lfs.sha256 if lfs is not None else None, sibling.blob_id))
    return HubModel(repo_id, info.sha, tuple(files), bool(info.gated))


def pull_model(repo_id: str, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
         token: str | None = None) -> Path:
    """The model's snapshot folder, downloading what the cache lacks first (Progress "download" in bytes, then
    "verify"). CancelledError when cancelled; the finished files stay in the cache for the next pull."""
    if not HUB_ID.match(repo_id):
        raise ModelError(f"{repo_id!r} is not a hub id.", "A hub id looks like 'Qwen/Qwen2.5-7B-Instruct'.")
    folder = installed_folder(repo_id)
    if folder is not None:
        return folder
    token = token or stored_hub_token()
    model = remote_model(repo_id, token)
    cache = hub_cache_dir()
    missing = [f for f in model.files if not _cached(repo_id, f.name, model.commit)]
    needed = sum(f.size for f in missing)
    cache.mkdir(parents=True, exist_ok=True)
    free = free_disk(cache)
    if free is not None and needed + DISK_MARGIN_BYTES > free:
        raise ModelError(f"{repo_id} needs {format_bytes(needed)} more on the disk, but only {format_bytes(free)} is "
                         f"free in {cache}.", "Free disk space, or move the hub cache (HF_HUB_CACHE) to a larger disk.")
    meter = ProgressMeter("download", needed, progress, "bytes")
    meter.update(0)
    counter = _ByteCounter(meter, cancel)
    paths = {}
    for file in model.files:
        if cancel:
            cancel.raise_if_cancelled()
        counter.start_file(file)
        path = Path(_download(repo_id, file.name, MAIN, token, counter.bar_class()))
        counter.finish_file()
        if path.parent.name != model.commit:
            raise ModelError(f"{repo_id} changed on the hub during the download.", "Pull it again.")
        paths[file.name] = path
    _verify(repo_id, missing, paths, progress, cancel)
    return paths["config.json"].parent


def _cached(repo_id: str, name: str, commit: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, name, cache_dir=hub_cache_dir(), revision=commit), str)


def _download(repo_id: str, name: str, revision: str, token: str | None, bar_class) -> str:
    """One file of `revision` into the hub cache; for "main" the cache records which commit that is (refs/main),
    which is how installed_folder finds the model without network."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, name, revision=revision, cache_dir=hub_cache_dir(), endpoint=endpoint(),
                               token=token, tqdm_class=bar_class)
    except CancelledError:
        raise
    except Exception as error:
        raise _hub_error(repo_id, error) from error


class _ByteCounter:
    """Turns huggingface_hub's per-file progress bars into one Progress over the pull; a cancel raises from inside
    the download loop, so it stops within a file."""

    def __init__(self, meter: ProgressMeter, cancel: CancelToken | None) -> None:
        self.meter, self.cancel = meter, cancel
        self.done = 0  # bytes of finished files
        self.current = 0  # bytes of the file in flight
        self.size = 0

    def start_file(self, file: RemoteFile) -> None:
        self.current, self.size = 0, file.size

    def finish_file(self) -> None:
        if self.current:  # it was downloaded (not already cached)
            self.done += self.size
            self.current = 0

    def add(self, count: float) -> None:
        """huggingface_hub read `count` more bytes (it writes them after this returns)."""
        self.current = max(0, self.current + int(count))  # the hub rolls back (negative) when a server ignores a range
        self.meter.update(min(self.meter.total, self.done + min(self.current, self.size)))
        if self.cancel:
            self.cancel.raise_if_cancelled()

    def bar_class(self):
        counter = self

        class Bar:
            """The progress-bar protocol huggingface_hub drives (a tqdm stand-in that prints nothing)."""

            def __init__(self, *args, initial: int = 0, **kwargs) -> None:
                self.n = 0
                self.total = kwargs.get("total")
                if initial:
                    counter.add(initial)

            def update(self, count: float = 1) -> None:
                self.n += count
                counter.add(count)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                return None

            def close(self) -> None:
                return None

            def refresh(self, *args, **kwargs) -> None:
                return None

            def set_postfix_str(self, *args, **kwargs) -> None:
                return None

        return Bar


def _verify(repo_id: str, files: list[RemoteFile], paths: dict[str, Path], progress: ProgressCallback | None,
            cancel: CancelToken | None) -> None:
    """Check each newly downloaded file's size and hash against the hub's; a damaged one is deleted from the cache."""
    meter = ProgressMeter("verify", sum(f.size for f in files), progress, "bytes")
    done = 0
    for file in files:
        path = paths[file.name]
        blob = path.resolve()
        size = blob.stat().st_size
        if file.sha256:
            digest = hashlib.sha256()
        else:  # a git blob id: sha1 over "blob <size>\0" and the content
            digest = hashlib.sha1(usedforsecurity=False)
            digest.update(f"blob {size}\0".encode())
        with open(blob, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                if cancel:
                    cancel.raise_if_cancelled()
                digest.update(chunk)
                done += len(chunk)
                meter.update(min(done, meter.total))
        expected = file.sha256 or file.blob_id
        if size != file.size or (expected and digest.hexdigest() != expected):
            blob.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            what = "size" if size != file.size else "checksum"
            raise ModelError(f"The download of {file.name} from {repo_id} is damaged (its {what} does not match the "
                             "hub's), so it was deleted.", "Pull the model again.")


def _no_network(repo_id: str, reason: str) -> ModelError:
    return ModelError(f"Could not download {repo_id!r} from the Hugging Face Hub and it is not in the local cache "
                      f"({reason}).", "Connect to the internet once to download it, or choose a local model folder.")


def _hub_error(repo_id: str, error: Exception) -> ModelError:
    """A ModelError for what huggingface_hub raised: gated, not found, no network, or another hub error."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(error, ModelError):
        return error
    if isinstance(error, GatedRepoError):
        return gated_error(repo_id)
    if isinstance(error, RepositoryNotFoundError):
        return ModelError(f"The hub has no model {repo_id!r}, or it is private.",
                          "Check the spelling; for a private model, enter an access token of an account that can "
                          "read it in the model picker.")
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return gated_error(repo_id)
    if isinstance(error, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError | TimeoutError) or (
            type(error).__module__.startswith(("httpx", "httpcore"))):
        return _no_network(repo_id, str(error).splitlines()[0] if str(error) else type(error).__name__)
    if isinstance(error, HfHubHTTPError | OSError):
        return ModelError(f"Downloading {repo_id!r} failed: {str(error).splitlines()[0]}",
                          "Try again later; a pull resumes with the files already downloaded.")
    raise error


def gated_error(repo_id: str) -> ModelError:
    """The message for a gated model the hub refused to serve: the licence, and the token."""
    page = f"{DEFAULT_ENDPOINT}/{repo_id}"
    has_token = stored_hub_token() is not None or bool(os.environ.get("HF_TOKEN"))
    if has_token:
        problem = (f"{repo_id} is gated, and the hub refused the access token Folio has: its account has not been "
                   "granted access yet (or the token is wrong or expired).")
    else:
        problem = (f"{repo_id} is gated: its licence must be accepted on the hub before it can be downloaded, and "
                   "Folio needs an access token of the account that accepted it.")
    return ModelError(problem, f"Open {page}, sign in and accept the licence (some owners review requests first). "
                      "Then create a read token under Settings → Access Tokens on the hub and enter it in Folio's "
                      "model picker (or `python -m engine models token`).")
