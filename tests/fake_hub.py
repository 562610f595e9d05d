"""A local HTTP server that answers what huggingface_hub asks the Hugging Face Hub, for offline tests of engine/hub.py.

Endpoints (as huggingface_hub 2.x calls them): `GET /api/models/{repo}[/revision/{rev}]?blobs=true` (the repo's
commit, gating and files with sizes, git blob ids and LFS sha256), and `HEAD`/`GET /{repo}/resolve/{rev}/{file}`
with the headers the client requires (X-Repo-Commit, ETag / X-Linked-Etag, Content-Length, X-Linked-Size) and range
requests (206 with Content-Range). A gated repo answers 401 (no token) or 403 (a token without access) with
X-Error-Code: GatedRepo. Faults for tests: drop the connection part-way through a file once, serve a file with a
flipped byte, or slow a file down.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)  # file -> bytes sent before the first GET is cut
    corrupt: set[str] = field(default_factory=set)  # files served with one byte flipped
    delay_s: dict[str, float] = field(default_factory=dict)  # file -> sleep per 64 KiB chunk


class FakeHub:
    """repos: repo id -> FakeRepo. `requests` logs (method, path, Range header, had a token)."""

    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None, bool]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def file_gets(self, name: str) -> list[str | None]:
        """The Range header of every GET of a file (None: the whole file)."""
        return [rng for method, path, rng, _ in self.requests if method == "GET" and path.endswith("/" + name)]

    # -- request handling ----------------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlsplit(request.path).path)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        with self.lock:
            self.requests.append((method, path, request.headers.get("Range"), token is not None))
        api = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", path)
        resolve = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        match = api or resolve
        repo = self.repos.get(match["repo"]) if match else None
        if repo is None:
            self._error(request, 404 if token else 401, "RepoNotFound", "Repository not found")
            return
        if api:
            self._model_info(request, match["repo"], repo)
            return
        if repo.gated and token not in repo.allowed_tokens:
            status = 403 if token else 401
            self._error(request, status, "GatedRepo", f"Access to model {match['repo']} is restricted. You must have "
                        "access to it and be authenticated to access it. Please log in.")
            return
        name = resolve["file"]
        if name not in repo.files:
            self._error(request, 404, "EntryNotFound", f"{name} does not exist", commit=repo.commit)
            return
        self._file(request, method, repo, name)

    def _error(self, request, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        request.send_response(status)
        request.send_header("X-Error-Code", code)
        request.send_header("X-Error-Message", message)
        if commit:
            request.send_header("X-Repo-Commit", commit)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def _model_info(self, request, repo_id: str, repo: FakeRepo) -> None:
        siblings = []
        for name, data in sorted(repo.files.items()):
            entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(entry)
        body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                           "gated": "manual" if repo.gated else False, "disabled": False, "siblings": siblings,
                           "tags": [], "downloads": 0, "likes": 0}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _file(self, request, method: str, repo: FakeRepo, name: str) -> None:
        data = repo.files[name]
        if name in self.faults.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_id(data)
        start = 0
        ranged = request.headers.get("Range")
        if ranged and method == "GET":
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged.strip())[1])
        request.send_response(206 if start else 200)
        request.send_header("X-Repo-Commit", repo.commit)
        request.send_header("ETag", f'"{etag}"')
        if name.endswith(LFS_SUFFIXES):
            request.send_header("X-Linked-Etag", f'"{etag}"')
            request.send_header("X-Linked-Size", str(len(data)))
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("Content-Length", str(len(data) - start))
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
        if method == "HEAD":
            return
        cut = self.faults.drop_after.pop(name, None)
        delay = self.faults.delay_s.get(name, 0.0)
        body = data[start:]
        for offset in range(0, len(body), 65536):
            if cut is not None and offset >= cut:
                request.wfile.flush()
                request.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
                request.close_connection = True
                return
            if delay:
                time.sleep(delay)
            try:
                request.wfile.write(body[offset : offset + 65536])
            except (BrokenPipeError, ConnectionResetError):
                return


@contextmanager
def fake_hub_env(repos: dict[str, FakeRepo], monkeypatch, tmp_path: Path) -> Iterator[FakeHub]:
    """Serve `repos` and point huggingface_hub (through engine.hub) at the server, with an empty cache and no token."""
    with FakeHub(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("FOLIO_CONFIG_DIR", str(tmp_path / "config"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def git_blob_id(data: bytes) -> str:
    """A file's git blob id: sha1 over "blob <size>\\0" and the content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_from_folder(folder: Path, **kwargs) -> FakeRepo:
    """A FakeRepo serving every file of a saved model folder (top level)."""
    return FakeRepo({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}, **kwargs)


def closed_port_url() -> str:
    """An http URL where nothing listens (a machine without network as the client sees it: connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
