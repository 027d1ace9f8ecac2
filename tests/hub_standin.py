"""A local stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for tests of publishing.

It answers what huggingface_hub's create_repo and upload_folder send (routes read from the installed
huggingface_hub 2.4): repo creation, README metadata validation, preupload (which files go as regular
blobs and which through LFS), the Git LFS batch API with basic transfer (PUT) and verify, the ndjson
commit, the file tree and repository info. It records every request and keeps each repository's files,
so a test can check what arrived file by file. Xet storage is not emulated: tests that send LFS files
disable hf_xet (HF_HUB_DISABLE_XET), and `regular_only` answers every file as a regular blob, which the
hf_xet pipeline commits without Xet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".safetensors",)
LFS_MIN_SIZE = 10 * 2**20  # like the Hub: large files go through LFS whatever their name


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": GITATTRIBUTES})
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)

    def oid(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs_paths else git_blob_oid(data)

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class HubStandIn:
    """`with HubStandIn(token) as hub:` serves on hub.endpoint; hub.requests lists (method, path) received."""

    def __init__(self, token: str, regular_only: bool = False):
        self.token = token
        self.regular_only = regular_only
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_uploads: list[str] = []  # oids PUT, in order
        self.requests: list[tuple[str, str]] = []
        self.fail_next_commit = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the API ----------------------------------------------------------------------------------------

    # Every route: (its match groups, the repository it names or None, the raw body) -> (status, JSON).

    def create_repo(self, groups: dict, repo: Repo | None, raw: bytes) -> tuple[int, dict]:
        body = json.loads(raw)
        repo_id = f"{body['organization']}/{body['name']}"
        url = {"url": f"{self.endpoint}/{repo_id}"}
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", **url}
        self.repos[repo_id] = Repo(private=body.get("visibility") == "private")
        return 200, url

    def validate_yaml(self, groups: dict, repo: Repo | None, raw: bytes) -> tuple[int, dict]:
        match = re.match(r"^---\n(.*?)\n---\n", json.loads(raw)["content"], re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": str(err)}]}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}]}
        return 200, {"warnings": []}

    def preupload(self, groups: dict, repo: Repo, raw: bytes) -> tuple[int, dict]:
        files = []
        for f in json.loads(raw)["files"]:
            lfs = not self.regular_only and (f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE)
            entry = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if f["path"] in repo.files:
                entry["oid"] = repo.oid(f["path"])
            files.append(entry)
        return 200, {"files": files}

    def lfs_batch(self, groups: dict, repo: Repo, raw: bytes) -> tuple[int, dict]:
        objects = []
        for obj in json.loads(raw)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:  # already stored: no action, the client skips it
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-store/{obj['oid']}"},
                                    "verify": {"href": f"{self.endpoint}/lfs-verify"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, groups: dict, repo: Repo | None, data: bytes) -> tuple[int, dict]:
        oid = groups["oid"]
        if hashlib.sha256(data).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        self.lfs_objects[oid] = data
        self.lfs_uploads.append(oid)
        return 200, {}

    def lfs_verify(self, groups: dict, repo: Repo | None, raw: bytes) -> tuple[int, dict]:
        return (200 if json.loads(raw)["oid"] in self.lfs_objects else 404), {}

    def commit(self, groups: dict, repo: Repo, raw: bytes) -> tuple[int, dict]:
        repo_id, lines = groups["repo"], [json.loads(line) for line in raw.splitlines() if line.strip()]
        if self.fail_next_commit:
            self.fail_next_commit = False
            return 500, {"error": "the stand-in fails this commit on purpose"}
        header, changes = lines[0]["value"], lines[1:]
        files, lfs_paths = dict(repo.files), set(repo.lfs_paths)
        for line in changes:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 400, {"error": f"LFS object {value['oid']} of {value['path']} was never uploaded"}
                files[value["path"]] = self.lfs_objects[value["oid"]]
                lfs_paths.add(value["path"])
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                for path in [p for p in files if p == prefix or (key == "deletedFolder" and p.startswith(prefix + "/"))]:
                    del files[path]
            else:
                return 400, {"error": f"unknown commit operation {key}"}
        oid = hashlib.sha1(json.dumps([repo.head, lines]).encode()).hexdigest()
        repo.files, repo.lfs_paths = files, lfs_paths
        repo.commits.append({"oid": oid, "summary": header["summary"], "operations": changes})
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}

    def tree(self, groups: dict, repo: Repo, raw: bytes) -> tuple[int, list]:
        return 200, [{"type": "file", "path": p, "size": len(d), "oid": git_blob_oid(d)} for p, d in sorted(repo.files.items())]

    def info(self, groups: dict, repo: Repo, raw: bytes) -> tuple[int, dict]:
        return 200, {"id": groups["repo"], "sha": repo.head, "private": repo.private,
                     "siblings": [{"rfilename": p} for p in sorted(repo.files)]}


_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/[^/]+"), "preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/[^/]+"), "commit"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/[^/]+"), "tree"),
    ("GET", re.compile(rf"/api/models/{_REPO}/revision/[^/]+"), "info"),
    ("POST", re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("PUT", re.compile(r"/lfs-store/(?P<oid>[0-9a-f]{64})"), "lfs_put"),
    ("POST", re.compile(r"/lfs-verify"), "lfs_verify"),
]
# Routes that need the token (the LFS store URLs are pre-signed, as on the Hub).
_AUTHENTICATED = {"create_repo", "preupload", "commit", "tree", "info", "lfs_batch"}


def _handler_for(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    data += self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            body = self._body()
            with hub._lock:
                hub.requests.append((method, path))
                for route_method, pattern, name in ROUTES:
                    match = pattern.fullmatch(path)
                    if route_method == method and match:
                        break
                else:
                    return self._send(404, {"error": f"the stand-in does not serve {method} {path}"})
                if name in _AUTHENTICATED and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                groups = match.groupdict()
                repo = hub.repos.get(groups.get("repo", ""))
                if "repo" in groups and repo is None:
                    return self._send(404, {"error": "Repository not found"})
                return self._send(*getattr(hub, name)(groups, repo, body))

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

    return Handler
