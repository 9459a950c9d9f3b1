"""A small Hugging Face Hub look-alike for tests: the routes `huggingface_hub` really calls.

It serves repositories the test builds in memory on 127.0.0.1 (ephemeral port), reached by the
real client through `HF_ENDPOINT`:

- `GET /api/models?search=…&limit=…&expand=…`                  search (`HfApi.list_models`)
- `GET /api/models/{repo}[/revision/{rev}][?blobs=true]`       `model_info`, with siblings, sizes
  and LFS sha256 when `blobs` is asked for
- `HEAD|GET /{repo}/resolve/{rev}/{path}`                      `hf_hub_download`: small files are
  answered directly with a git-blob `ETag`; large ("LFS") files get a 302 to `/lfs/{sha256}` with
  `X-Linked-Etag` and `X-Linked-Size`, as the Hub sends its CDN. Every answer has `X-Repo-Commit`.
- `GET /lfs/{sha256}?repo=…&file=…`                             the "CDN": Range requests → 206
- `GET /api/datasets/{repo}[/revision/{rev}][?blobs=true]`     `dataset_info`, with `cardData` read
  from the README's YAML front matter, as the Hub does
- `HEAD|GET /datasets/{repo}/resolve/{rev}/{path}`             `hf_hub_download(repo_type="dataset")`;
  Parquet files are LFS files, so they take the CDN redirect

Dataset repositories (`add_repo(..., repo_type="dataset")`) live beside the model repositories
under the same ids without clashing, as on the Hub. A revision may contain slashes
(`refs/convert/parquet`); the client sends it percent-encoded.

Gated repositories answer file requests with 401 (no token) or 403 (token without access) and
`X-Error-Code: GatedRepo`; unknown repositories 404 `RepoNotFound`, unknown revisions 404
`RevisionNotFound`, unknown files 404 `EntryNotFound`. Tests can make a transfer drop midway once,
slow transfers down, and read the request log to see which bytes were sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pth", ".pt", ".parquet")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> path -> bytes
    gated: bool = False
    tokens: tuple[str, ...] = ()  # tokens granted access to a gated repository
    license: str | None = None
    downloads: int = 0
    likes: int = 0
    #: Sizes the info route reports instead of the real ones (to test the disk preflight).
    claimed_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class LogEntry:
    method: str
    path: str
    status: int
    range: str | None
    sent: int  # body bytes written
    file: str | None  # repository path of the file, for file transfers
    authorization: str | None


class HubServer:
    """Start with `start()`; `url` is the value for HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.datasets: dict[str, Repo] = {}  # dataset repositories, a namespace of their own
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes, the "CDN"
        # (sha256, git blob sha1) of every file's bytes, computed once as the Hub stores them.
        self.digests: dict[int, tuple[str, str]] = {}
        self.log: list[LogEntry] = []
        self.drops: dict[tuple[str, str], int] = {}  # (repo, path) -> bytes to send before dropping
        self.throttle_s_per_mib = 0.0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # building repositories -----------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path], *, ref: str = "main",
                 repo_type: str = "model", **settings: Any) -> str:
        """Add (or extend) a repository with one commit of `files`; returns the commit hash."""
        repos = self.datasets if repo_type == "dataset" else self.repos
        repo = repos.setdefault(repo_id, Repo(repo_id))
        for key, value in settings.items():
            setattr(repo, key, value)
        data = {path: _as_bytes(content) for path, content in files.items()}
        for content in data.values():
            self.digests[id(content)] = (hashlib.sha256(content).hexdigest(), git_blob_sha1(content))
        digest = hashlib.sha1((repo_id if repo_type == "model" else f"{repo_type}/{repo_id}").encode())
        for path in sorted(data):
            digest.update(path.encode() + b"\0" + self.digests[id(data[path])][0].encode())
        commit = digest.hexdigest()
        repo.commits[commit] = data
        repo.refs[ref] = commit
        for path, content in data.items():
            if _is_lfs(path):
                self.blobs[self.digests[id(content)][0]] = content
        return commit

    def drop_once(self, repo_id: str, path: str, after_bytes: int) -> None:
        """The next transfer of this file stops after `after_bytes` and the connection is cut."""
        self.drops[(repo_id, path)] = after_bytes

    def requests_for(self, path: str, method: str = "GET") -> list[LogEntry]:
        return [e for e in self.log if e.file == path and e.method == method]

    # lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _as_bytes(content: bytes | str | Path) -> bytes:
    if isinstance(content, Path):
        return content.read_bytes()
    return content.encode() if isinstance(content, str) else content


def _safetensors_params(files: dict[str, bytes]) -> int:
    """Parameters in the repository's safetensors files, counted from their headers as the Hub does."""
    total = 0
    for path, data in files.items():
        if not path.endswith(".safetensors") or len(data) < 8:
            continue
        size = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8:8 + size])
        except ValueError:
            continue
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def _front_matter(readme: bytes) -> dict[str, Any]:
    """The YAML block at the top of a README, which the Hub serves as `cardData`."""
    import yaml

    text = readme.decode()
    if not text.startswith("---\n"):
        return {}
    block = text[4:].split("\n---", 1)[0]
    data = yaml.safe_load(block)
    return data if isinstance(data, dict) else {}


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # routing ----------------------------------------------------------------------------------

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        try:
            if path == "/api/models":
                self._send_json(self._search(query), head)
            elif path.startswith("/api/models/"):
                self._send_json(self._info(path[len("/api/models/"):], query), head)
            elif path.startswith("/api/datasets/"):
                self._send_json(self._dataset_info(path[len("/api/datasets/"):], query), head)
            elif path.startswith("/lfs/"):
                self._send_blob(path[len("/lfs/"):], query, head)
            elif path.startswith("/datasets/") and "/resolve/" in path:
                self._resolve(path[len("/datasets"):], head, self.hub.datasets)
            elif "/resolve/" in path:
                self._resolve(path, head, self.hub.repos)
            else:
                raise _Error(404, "", "no such route")
        except _Error as err:
            self._send_error(err, head)

    def _repo(self, repo_id: str, repos: dict[str, Repo] | None = None) -> Repo:
        repo = (self.hub.repos if repos is None else repos).get(repo_id)
        if repo is None:
            raise _Error(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        raise _Error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    # routes -------------------------------------------------------------------------------------

    def _search(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        words = [w.lower() for w in query.get("search", [])]
        repos = [r for r in self.hub.repos.values() if all(w in r.repo_id.lower() for w in words)]
        repos.sort(key=lambda r: r.downloads, reverse=True)
        limit = int(query.get("limit", ["1000"])[0])
        expand = query.get("expand", [])
        out = []
        for repo in repos[:limit]:
            full = self._model_json(repo, repo.refs["main"], blobs=False)
            keep = set(expand) or {"downloads", "likes", "tags", "private", "pipeline_tag", "library_name"}
            out.append({k: v for k, v in full.items() if k in keep | {"id", "_id", "modelId"}})
        return out

    def _info(self, rest: str, query: dict[str, list[str]]) -> dict[str, Any]:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo(unquote(repo_id))
        commit = self._commit(repo, unquote(revision) if revision else "main")
        return self._model_json(repo, commit, blobs=query.get("blobs", [""])[0].lower() == "true")

    def _model_json(self, repo: Repo, commit: str, *, blobs: bool) -> dict[str, Any]:
        files = repo.commits[commit]
        siblings = []
        for path in sorted(files):
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                data = files[path]
                size = repo.claimed_sizes.get(path, len(data))
                sha256, sha1 = self.hub.digests[id(data)]
                entry.update(size=size, blobId=sha1)
                if _is_lfs(path):
                    entry["lfs"] = {"size": size, "sha256": sha256,
                                    "pointerSize": 134}
            siblings.append(entry)
        tags = [f"license:{repo.license}"] if repo.license else []
        if any(p.endswith(".gguf") for p in files):
            tags.append("gguf")  # the Hub tags repositories that ship GGUF files
        params = _safetensors_params(files)
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit,
            "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
            "downloads": repo.downloads, "likes": repo.likes, "tags": tags,
            "library_name": "transformers", "pipeline_tag": "text-generation",
            "cardData": {"license": repo.license} if repo.license else {},
            "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
            "usedStorage": sum(repo.claimed_sizes.get(p, len(d)) for p, d in files.items()),
            "siblings": siblings,
            **({"safetensors": {"parameters": {"F32": params}, "total": params}} if params else {}),
        }

    def _dataset_info(self, rest: str, query: dict[str, list[str]]) -> dict[str, Any]:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo(unquote(repo_id), self.hub.datasets)
        commit = self._commit(repo, unquote(revision) if revision else "main")
        info = self._model_json(repo, commit, blobs=query.get("blobs", [""])[0].lower() == "true")
        for key in ("modelId", "library_name", "pipeline_tag", "safetensors"):
            info.pop(key, None)
        readme = repo.commits[commit].get("README.md")
        info["cardData"] = {**info["cardData"], **_front_matter(readme)} if readme else info["cardData"]
        return info

    def _resolve(self, path: str, head: bool, repos: dict[str, Repo]) -> None:
        repo_part, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        repo = self._repo(unquote(repo_part), repos)
        commit = self._commit(repo, unquote(revision))
        filename = unquote(filename)
        if repo.gated:
            self._check_access(repo)
        files = repo.commits[commit]
        if filename not in files:
            raise _Error(404, "EntryNotFound", f"{filename} does not exist on {revision}",) from None
        data = files[filename]
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        sha, sha1 = self.hub.digests[id(data)]
        if _is_lfs(filename):
            headers.update({
                # Like the Hub's signed CDN links, the URL names what it serves.
                "Location": f"{self.hub.url}/lfs/{sha}?{urlencode({'repo': repo.repo_id, 'file': filename})}",
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)), "Content-Length": "0",
            })
            self._log(302, None, 0, filename)
            self.send_response(302)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        headers["ETag"] = f'"{sha1}"'
        self._send_file(repo.repo_id, filename, data, head, headers)

    def _check_access(self, repo: Repo) -> None:
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ").strip()
        if not token:
            raise _Error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have "
                         "access to it and be authenticated to access it. Please log in.")
        if token not in repo.tokens:
            raise _Error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not "
                         f"in the authorized list. Visit {self.hub.url}/{repo.repo_id} to ask for access.")

    def _send_blob(self, sha: str, query: dict[str, list[str]], head: bool) -> None:
        if sha not in self.hub.blobs:
            raise _Error(404, "", "no such blob")
        data = self.hub.blobs[sha]
        repo_id, filename = query.get("repo", [""])[0], query.get("file", [""])[0]
        self._send_file(repo_id, filename, data, head, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"})

    # responses ----------------------------------------------------------------------------------

    def _send_file(self, repo_id: str, filename: str, data: bytes, head: bool, headers: dict[str, str]) -> None:
        start, status = 0, 200
        range_header = self.headers.get("Range")
        if range_header:
            first = range_header.removeprefix("bytes=").split("-")[0]
            start, status = int(first), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            self._log(status, range_header, 0, filename)
            return
        with self.hub._lock:
            drop_at = self.hub.drops.pop((repo_id, filename), None)
        if drop_at is not None:
            self.wfile.write(body[:drop_at])
            self.wfile.flush()
            self._log(status, range_header, drop_at, filename)
            self.connection.shutdown(socket.SHUT_RDWR)  # cut mid-body, as a flaky network does
            self.close_connection = True
            return
        sent = 0
        mib = 1 << 20
        try:
            while sent < len(body):
                self.wfile.write(body[sent:sent + mib])
                sent += min(mib, len(body) - sent)
                if self.hub.throttle_s_per_mib:
                    time.sleep(self.hub.throttle_s_per_mib)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-transfer (a cancelled download)
        self._log(status, range_header, sent, filename)

    def _send_json(self, payload: Any, head: bool) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._log(200, None, 0 if head else len(body), None)

    def _send_error(self, err: _Error, head: bool) -> None:
        body = json.dumps({"error": err.message}).encode()
        self.send_response(err.status)
        if err.code:
            self.send_header("X-Error-Code", err.code)
        self.send_header("X-Error-Message", err.message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._log(err.status, None, 0, None)

    def _log(self, status: int, range_header: str | None, sent: int, filename: str | None) -> None:
        entry = LogEntry(self.command, self.path, status, range_header, sent, filename,
                         self.headers.get("Authorization"))
        with self.hub._lock:
            self.hub.log.append(entry)
