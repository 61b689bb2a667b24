"""Real HTTP servers on 127.0.0.1 for the download tests (imported as ``servers``).

* :class:`FileServer` serves byte strings with ``Content-Length`` and ``Range`` support (206 +
  ``Content-Range``, 416), and can be told to drop the connection after N bytes (EOF or RST),
  to ignore ``Range`` (200) or to stall; it records every request's path and ``Range`` header.
* :class:`FakeHub` implements the endpoints ``huggingface_hub.snapshot_download`` (2.4.0) calls:
  ``GET /api/models/<repo>/revision/<rev>`` (repo info with the commit ``sha``),
  ``GET /api/models/<repo>/tree/<commit>`` (recursive file listing) and
  ``HEAD``/``GET /<repo>/resolve/<commit>/<file>`` (``X-Repo-Commit`` + ``ETag`` headers, body),
  with the ``X-Error-Code`` headers huggingface_hub turns into RepositoryNotFoundError /
  RevisionNotFoundError.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # dropped connections are on purpose
        pass


def _serve(handler: type) -> tuple[_Server, str]:
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"




class FileServer:
    """What the file server serves and how it misbehaves; ``requests`` logs (path, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None  # one shot: cut the next body after N bytes
        self.drop_mode = "eof"  # "eof" (FIN) or "reset" (RST)
        self.ignore_range = False
        self.stall = 0.0  # seconds to wait after the headers
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path


def _file_handler(state: FileServer) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            state.requests.append((path, self.headers.get("Range")))
            body = state.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start, status = 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and not state.ignore_range:
                start, status = int(match.group(1)), 206
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            payload = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            time.sleep(state.stall)
            cut, state.drop_after = state.drop_after, None
            if cut is None:
                self.wfile.write(payload)
                return
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            time.sleep(0.1)  # let the client read the bytes before the connection goes
            if state.drop_mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True

    return Handler


class FakeHub:
    """Repositories served by the fake Hub: ``refs[repo][revision] = commit``, ``trees[commit] = folder``."""

    def __init__(self) -> None:
        self.refs: dict[str, dict[str, str]] = {}
        self.trees: dict[str, Path] = {}
        self.requests: list[str] = []
        self.base = ""

    def add(self, repo_id: str, revision: str, folder: Path) -> str:
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        self.refs.setdefault(repo_id, {})[revision] = commit
        self.trees[commit] = folder
        return commit

    def commit(self, repo_id: str, revision: str) -> str | None:
        refs = self.refs[repo_id]
        return refs.get(revision) or (revision if revision in refs.values() else None)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hub_handler(state: FakeHub) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            self._reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _route(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            state.requests.append(f"{self.command} {path}")
            api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
            resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            match = api or resolve
            if match is None:
                return self._reply(404)
            repo_id, revision = match.group(1), urllib.parse.unquote(match.group(api and 3 or 2))
            if repo_id not in state.refs:
                return self._reply(404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
            commit = state.commit(repo_id, revision)
            if commit is None:
                return self._reply(404, b"Invalid rev id", {"X-Error-Code": "RevisionNotFound"})
            folder = state.trees[commit]
            if api and api.group(2) == "revision":
                return self._json({"id": repo_id, "sha": commit, "private": False})
            if api:
                return self._json([{"type": "file", "path": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
                                    "oid": _git_oid(p.read_bytes())} for p in sorted(folder.rglob("*")) if p.is_file()])
            target = folder / urllib.parse.unquote(resolve.group(3))
            if not target.is_file():
                return self._reply(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            data = target.read_bytes()
            self._reply(200, data, {"X-Repo-Commit": commit, "ETag": f'"{_git_oid(data)}"'})

        do_GET = do_HEAD = _route

    return Handler
