"""An XNAT REST server written for radloop's tests (no real XNAT runs on these machines: it needs
Tomcat 9 with the XNAT war, or a Docker engine).

It serves the XNAT data model from the schema files shipped in the `xnat` client's source
distribution (`tests/data/xnat_schemas/`, see its README) and implements the REST calls that the
unmodified `xnat` client (xnatpy 0.8) makes for what radloop does: log in (JSESSION), read the
server version and schemas, list and read projects / subjects / experiments / scans / assessors /
resources / files, create subjects, sessions and resources, upload and download files, and the
DICOM import service (`POST /data/services/import`). With `roi_plugin=True` it also plays an XNAT
with the ICR ROI-collection plugin: it lists a stand-in schema declaring `icr:roiCollectionData`
and accepts `PUT /xapi/roi/projects/{p}/sessions/{s}/collections/{label}?type=SEG|RTSTRUCT`.

Formats follow XNAT 1.8: listings are `{"ResultSet": {"Result": [...]}}`, objects
`{"items": [{"meta": {"xsi:type": ...}, "data_fields": {...}, "children": [...]}]}`.
Everything binds to 127.0.0.1 on a free port. `archive.mutations` records every change, so a test
can show that a second delivery changed nothing; `requests` records every request line.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from xnat_model import (
    SCHEMA_DIR,
    Archive,
    DataModel,
    Experiment,
    Resource,
    Scan,
    Subject,
    XnatError,
    item,
    listing,
    zip_files,
)

XNAT_VERSION = "1.8.10"


@dataclass
class Node:
    """Where a REST path points: a kind (`subject`, `resources`, ...) and what it belongs to."""

    kind: str
    ctx: dict[str, Any] = field(default_factory=dict)


class XnatTestServer:
    """The server: `start()`, `stop()`, `url`; `archive` holds the data, `users` the logins."""

    def __init__(self, users: dict[str, str] | None = None, roi_plugin: bool = False) -> None:
        files = [SCHEMA_DIR / "xnat.xsd", SCHEMA_DIR / "xdat.xsd"]
        if roi_plugin:
            files.append(SCHEMA_DIR / "roi_standin.xsd")
        self.model = DataModel(files)
        self.schema_names = ["xnat", "xdat"] + (["roi"] if roi_plugin else [])
        self.schema_text = {"xnat": self.model.texts["xnat"], "xdat": self.model.texts["xdat"]}
        if roi_plugin:
            self.schema_text["roi"] = self.model.texts["roi_standin"]
        self.roi_plugin = roi_plugin
        self.archive = Archive(self.model)
        self.users = dict(users or {"radloop": "s3cret-test-password"})
        self.tokens: dict[str, str] = {}
        self.requests: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def netloc(self) -> str:
        return self.url.split("//", 1)[1]

    def start(self) -> XnatTestServer:
        handler = type("Handler", (_Handler,), {"xnat": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="xnat-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> XnatTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- auth

    def login(self, user: str, password: str) -> str | None:
        if self.users.get(user) != password:
            return None
        token = secrets.token_hex(16).upper()
        self.tokens[token] = user
        return token

    def user_of(self, headers: Any) -> str | None:
        """The logged-in user of a request: JSESSIONID cookie, or HTTP basic auth."""
        for part in (headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "JSESSIONID" and value in self.tokens:
                return self.tokens[value]
        auth = headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) == password:
                return user
        return None


class _Handler(BaseHTTPRequestHandler):
    xnat: XnatTestServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # ---------------------------------------------------------------- plumbing

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path).rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self._body()
        self.xnat.requests.append(f"{method} {self.path}")
        try:
            status, payload, ctype, cookie = self._dispatch(method, path, query, body)
        except XnatError as e:
            status, payload, ctype, cookie = e.status, str(e).encode(), "text/plain", None
        self._reply(status, payload, ctype, cookie)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _reply(self, status: int, payload: bytes, ctype: str, cookie: str | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if cookie:
            self.send_header("Set-Cookie", f"JSESSIONID={cookie}; Path=/; HttpOnly")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str, str | None]:
        if path == "/":
            return 200, b"radloop test XNAT", "text/plain", None
        if path == "/data/services/auth" and method == "PUT":
            form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            token = self.xnat.login(form.get("username", ""), form.get("password", ""))
            if token is None:
                raise XnatError(401, "Login attempt failed. Please try again.")
            return 200, token.encode(), "text/plain", token
        if path == "/data/JSESSION" and method in ("GET", "DELETE"):
            return 200, b"", "text/plain", None
        user = self.xnat.user_of(self.headers)
        if user is None:
            raise XnatError(401, "authentication required")
        if path == "/data/auth":
            return 200, f"User '{user}' is logged in".encode(), "text/plain", None
        if path.startswith("/xapi/"):
            return self._xapi(method, path, query, body)
        if path.startswith(("/data/", "/REST/")):
            return self._data(method, path, query, body)
        raise XnatError(404, f"no such path {path}")

    # ---------------------------------------------------------------- /xapi

    def _xapi(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str, None]:
        if path == "/xapi/siteConfig/buildInfo":
            return _json({"version": XNAT_VERSION, "buildNumber": "test"})
        if path == "/xapi/schemas":
            return _json(self.xnat.schema_names)
        if path.startswith("/xapi/schemas/"):
            name = path[len("/xapi/schemas/") :]
            if name not in self.xnat.schema_text:
                raise XnatError(404, f"no schema {name}")
            return 200, self.xnat.schema_text[name].encode("windows-1252"), "application/xml", None
        if path.startswith("/xapi/roi/") and method == "PUT" and self.xnat.roi_plugin:
            return self._roi_collection(path.split("/"), query, body)
        raise XnatError(404, f"no such path {path}")

    def _roi_collection(
        self, segs: list[str], query: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str, None]:
        # /xapi/roi/projects/{p}/sessions/{s}/collections/{label}
        if len(segs) != 9 or segs[3] != "projects" or segs[5] != "sessions" or segs[7] != "collections":
            raise XnatError(404, "no such ROI path")
        archive = self.xnat.archive
        project_id, label, roi_type = segs[4], segs[8], query.get("type", "")
        if roi_type not in ("SEG", "RTSTRUCT", "AIM"):
            raise XnatError(400, f"type must be SEG, RTSTRUCT or AIM, not {roi_type!r}")
        with archive.lock:
            session = archive.experiment(project_id, segs[6])
            existing = next((a for a in archive.assessors_of(session) if a.label == label), None)
            if existing is not None and query.get("overwrite") != "true":
                raise XnatError(409, f"ROI collection {label!r} exists")
            if existing is None:
                subject = archive.subjects[session.subject_id]
                existing = archive.create_experiment(
                    project_id,
                    subject,
                    label,
                    "icr:roiCollectionData",
                    {"collectionType": roi_type, "seriesUID": query.get("seriesuid", "")},
                    session=session,
                )
            resource = archive.create_resource(existing.resources, roi_type, roi_type, "EXTERNAL")
            archive.put_file(resource, f"{label}.dcm", body, overwrite=True, format=roi_type)
        return 200, existing.id.encode(), "text/plain", None

    # ---------------------------------------------------------------- /data

    def _data(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str, None]:
        path = path.replace("/REST/", "/data/", 1).replace("/data/archive/", "/data/", 1)
        if path == "/data/archive":
            path = "/data"
        if path == "/data/version":
            raise XnatError(404, "not here since XNAT 1.7: see /xapi/siteConfig/buildInfo")
        if path == "/data/services/import" and method == "POST":
            return self._import(query, body)
        if path.startswith("/data/search/elements"):
            return self._search_elements(path)
        node = _walk(self.xnat.archive, path.split("/")[2:])
        with self.xnat.archive.lock:
            if method in ("GET", "HEAD"):
                return _get(self.xnat.archive, node, query)
            if method == "PUT":
                return _put(self.xnat.archive, node, query, body)
        raise XnatError(405, f"{method} {path} is not supported by this test server")

    def _search_elements(self, path: str) -> tuple[int, bytes, str, None]:
        """The searchable data types (the schemas' root elements) and, per type, its own simple fields."""
        model = self.xnat.model
        if path == "/data/search/elements":
            return _json(listing([{"ELEMENT_NAME": t, "PLURAL": t, "SINGULAR": t} for t in model.root_types]))
        xsi_type = path.rsplit("/", 1)[1]
        if not model.exists(xsi_type):
            raise XnatError(404, f"no data type {xsi_type}")
        return _json(listing([{"FIELD_ID": name.upper(), "HEADER": name} for name in model.fields[xsi_type]]))

    def _import(self, query: dict[str, str], body: bytes) -> tuple[int, bytes, str, None]:
        if query.get("dest", "/archive") != "/archive":
            raise XnatError(400, "this test server imports into /archive only")
        project_id = query.get("project", "")
        self.xnat.archive.project(project_id)
        session = self.xnat.archive.import_zip(
            body,
            project_id,
            query.get("subject", ""),
            query.get("session", ""),
            query.get("overwrite", "none"),
        )
        uri = f"/data/archive/projects/{project_id}/subjects/{session.subject_id}/experiments/{session.id}"
        return 200, (uri + "\r\n").encode(), "text/plain", None


def _json(value: Any, status: int = 200) -> tuple[int, bytes, str, None]:
    return status, json.dumps(value).encode(), "application/json", None


def _text(value: str, status: int = 200) -> tuple[int, bytes, str, None]:
    return status, value.encode(), "text/plain", None


# -------------------------------------------------------------------- path walking

_CHILD_COLLECTIONS = {
    "root": ("projects", "subjects", "experiments"),
    "project": ("subjects", "experiments", "resources"),
    "subject": ("experiments", "resources"),
    "experiment": ("scans", "resources", "assessors"),
    "scan": ("resources",),
    "resource": ("files",),
}


def _walk(archive: Archive, segs: list[str]) -> Node:
    """Follow `/data/...` segments to a node; the last key may name something not there yet."""
    node = Node("root")
    i = 0
    while i < len(segs):
        name = segs[i]
        if name not in _CHILD_COLLECTIONS.get(node.kind, ()):
            raise XnatError(404, f"{name!r} is not below a {node.kind}")
        node = Node(name, dict(node.ctx, parent=node.kind))
        if i + 1 < len(segs):
            last = i + 2 == len(segs)
            if name == "files":
                return Node("file", dict(node.ctx, name="/".join(segs[i + 1 :])))
            node = _member(archive, node, segs[i + 1], last)
        i += 2
    return node


def _member(archive: Archive, coll: Node, key: str, last: bool) -> Node:
    ctx = coll.ctx
    try:
        if coll.kind == "projects":
            return Node("project", {"project": archive.project(key)})
        if coll.kind == "subjects":
            project = ctx.get("project")
            return Node("subject", dict(ctx, subject=archive.subject(project.id if project else None, key)))
        if coll.kind in ("experiments", "assessors"):
            return Node("experiment", dict(ctx, experiment=_experiment(archive, ctx, key)))
        if coll.kind == "scans":
            return Node("scan", dict(ctx, scan=ctx["experiment"].scans[key]))
        if coll.kind == "resources":
            return Node("resource", dict(ctx, resource=_resource(_resource_owner(ctx), key)))
    except (XnatError, KeyError):
        if not last:
            raise XnatError(404, f"{key!r} not found in {coll.kind}") from None
    return Node("new", dict(ctx, collection=coll.kind, key=key))


def _experiment(archive: Archive, ctx: dict[str, Any], key: str) -> Experiment:
    project = ctx.get("project")
    found = archive.experiment(project.id if project else None, key)
    session = ctx.get("experiment")
    if session is not None and found.session_id != session.id:
        raise XnatError(404, f"{key!r} is not an assessor of {session.id}")
    return found


def _resource_owner(ctx: dict[str, Any]) -> dict[str, Resource]:
    """The resources dict of the object a `resources` collection belongs to."""
    owner = ctx.get(ctx.get("parent", ""))
    if owner is None:
        raise XnatError(404, "resources of what?")
    return owner.resources  # type: ignore[no-any-return]


def _resource(owner: dict[str, Resource], key: str) -> Resource:
    for resource in owner.values():
        if resource.label == key or str(resource.id) == key:
            return resource
    raise XnatError(404, f"no resource {key!r}")


# -------------------------------------------------------------------- GET


def _get(archive: Archive, node: Node, query: dict[str, str]) -> tuple[int, bytes, str, None]:
    ctx = node.ctx
    kind = node.kind
    if kind == "new":
        raise XnatError(404, f"{ctx['key']!r} not found")
    if kind == "projects":
        return _json(listing([_project_row(p) for p in archive.projects.values()]))
    if kind == "project":
        project = ctx["project"]
        return _json(item("xnat:projectData", _project_row(project)))
    if kind == "subjects":
        subjects = [
            s for s in archive.subjects.values() if "project" not in ctx or s.project == ctx["project"].id
        ]
        return _json(listing([_subject_row(s) for s in subjects]))
    if kind == "subject":
        return _json(item("xnat:subjectData", _subject_row(ctx["subject"])))
    if kind == "experiments":
        return _json(listing([_experiment_row(archive, e) for e in _experiments_in(archive, ctx)]))
    if kind == "assessors":
        return _json(listing([_experiment_row(archive, e) for e in archive.assessors_of(ctx["experiment"])]))
    if kind == "experiment":
        experiment = ctx["experiment"]
        return _json(item(experiment.xsi_type, _experiment_fields(archive, experiment)))
    if kind == "scans":
        experiment = ctx["experiment"]
        return _json(listing([_scan_row(experiment, s) for s in experiment.scans.values()]))
    if kind == "scan":
        return _json(item(ctx["scan"].xsi_type, _scan_row(ctx["experiment"], ctx["scan"])))
    if kind == "resources":
        return _json(listing([_resource_row(r) for r in _resource_owner(ctx).values()]))
    if kind == "resource":
        return _json(item("xnat:resourceCatalog", _resource_row(ctx["resource"])))
    if kind == "files":
        return _files(ctx, query)
    if kind == "file":
        stored = ctx["resource"].files.get(ctx["name"])
        if stored is None:
            raise XnatError(404, f"no file {ctx['name']!r}")
        return 200, stored.data, "application/octet-stream", None
    raise XnatError(404, f"cannot GET a {kind}")


def _files(ctx: dict[str, Any], query: dict[str, str]) -> tuple[int, bytes, str, None]:
    resource: Resource = ctx["resource"]
    if query.get("format") == "zip":
        prefix = _zip_prefix(ctx)
        payload = zip_files(
            (f"{prefix}/resources/{resource.label}/files/{f.name}", f.data) for f in resource.files.values()
        )
        return 200, payload, "application/zip", None
    base = _resource_uri(ctx)
    rows = [
        {
            "Name": f.name,
            "Size": str(len(f.data)),
            "URI": f"{base}/files/{f.name}",
            "collection": resource.label,
            "file_tags": f.tags,
            "file_format": f.format,
            "file_content": f.content,
            "cat_ID": str(resource.id),
            "digest": f.digest,
        }
        for f in resource.files.values()
    ]
    return _json(listing(rows))


def _zip_prefix(ctx: dict[str, Any]) -> str:
    experiment = ctx.get("experiment")
    scan = ctx.get("scan")
    if experiment is not None and scan is not None:
        return f"{experiment.label}/scans/{scan.id}"
    if experiment is not None:
        return experiment.label  # type: ignore[no-any-return]
    return "resources"


def _resource_uri(ctx: dict[str, Any]) -> str:
    resource = ctx["resource"]
    if ctx.get("scan") is not None:
        return f"/data/experiments/{ctx['experiment'].id}/scans/{ctx['scan'].id}/resources/{resource.id}"
    if ctx.get("experiment") is not None:
        return f"/data/experiments/{ctx['experiment'].id}/resources/{resource.id}"
    if ctx.get("subject") is not None:
        return f"/data/subjects/{ctx['subject'].id}/resources/{resource.id}"
    return f"/data/projects/{ctx['project'].id}/resources/{resource.id}"


def _experiments_in(archive: Archive, ctx: dict[str, Any]) -> list[Experiment]:
    if ctx.get("subject") is not None:
        return archive.sessions_of(ctx["subject"].project, ctx["subject"].id)
    if ctx.get("project") is not None:
        return archive.sessions_of(ctx["project"].id)
    return [e for e in archive.experiments.values() if not e.session_id]


def _project_row(project: Any) -> dict[str, Any]:
    return {
        "ID": project.id,
        "secondary_ID": project.id,
        "name": project.name,
        "description": "",
        "URI": f"/data/projects/{project.id}",
    }


def _subject_row(subject: Subject) -> dict[str, Any]:
    return {
        "ID": subject.id,
        "label": subject.label,
        "project": subject.project,
        "insert_date": subject.insert_date,
        "URI": f"/data/subjects/{subject.id}",
    }


def _experiment_row(archive: Archive, experiment: Experiment) -> dict[str, Any]:
    subject = archive.subjects.get(experiment.subject_id)
    row = {
        "ID": experiment.id,
        "label": experiment.label,
        "project": experiment.project,
        "xsiType": experiment.xsi_type,
        "insert_date": experiment.insert_date,
        "date": experiment.fields.get("date", ""),
        "subject_ID": experiment.subject_id,
        "subject_label": subject.label if subject else "",
        "URI": f"/data/experiments/{experiment.id}",
    }
    if experiment.session_id:
        row["session_ID"] = experiment.session_id
    return row


def _experiment_fields(archive: Archive, experiment: Experiment) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ID": experiment.id,
        "label": experiment.label,
        "project": experiment.project,
        "subject_ID": experiment.subject_id,
        "insert_date": experiment.insert_date,
        **experiment.fields,
    }
    if experiment.session_id:
        fields["imageSession_ID"] = experiment.session_id
    return fields


def _scan_row(experiment: Experiment, scan: Scan) -> dict[str, Any]:
    return {
        "ID": scan.id,
        "xsiType": scan.xsi_type,
        "image_session_ID": experiment.id,
        "xnat_imagescandata_id": f"{experiment.id}:{scan.id}",
        "quality": "usable",
        "note": "",
        "URI": f"/data/experiments/{experiment.id}/scans/{scan.id}",
        **scan.fields,
    }


def _resource_row(resource: Resource) -> dict[str, Any]:
    size = sum(len(f.data) for f in resource.files.values())
    return {
        "xnat_abstractresource_id": str(resource.id),
        "label": resource.label,
        "element_name": "xnat:resourceCatalog",
        "category": "resources",
        "cat_id": str(resource.id),
        "format": resource.format,
        "content": resource.content,
        "tags": "",
        "cat_desc": "",
        "file_count": str(len(resource.files)),
        "file_size": str(size),
    }


# -------------------------------------------------------------------- PUT


def _put(archive: Archive, node: Node, query: dict[str, str], body: bytes) -> tuple[int, bytes, str, None]:
    ctx = node.ctx
    if node.kind == "new":
        return _create(archive, ctx, query)
    if node.kind == "experiment":
        experiment = ctx["experiment"]
        archive.update_fields(experiment, _xpath_fields(query, experiment.xsi_type))
        return _text(experiment.id)
    if node.kind == "subject":
        return _text(ctx["subject"].id)
    if node.kind == "resource":
        return _text(str(ctx["resource"].id))
    if node.kind == "file":
        resource: Resource = ctx["resource"]
        archive.put_file(
            resource,
            ctx["name"],
            body,
            overwrite=query.get("overwrite") == "true",
            content=query.get("content", ""),
            format=query.get("format", ""),
            tags=query.get("tags", ""),
        )
        return _text("", 200)
    raise XnatError(405, f"cannot PUT a {node.kind}")


def _create(archive: Archive, ctx: dict[str, Any], query: dict[str, str]) -> tuple[int, bytes, str, None]:
    collection, key = ctx["collection"], ctx["key"]
    if collection == "subjects":
        project = ctx.get("project")
        if project is None:
            raise XnatError(400, "create subjects below a project")
        xsi_type = query.get("xsiType", "xnat:subjectData")
        archive.model.check(xsi_type, "xnat:subjectData")
        label = query.get(f"{xsi_type}/label", key)
        return _text(archive.create_subject(project.id, label).id, 200)
    if collection in ("experiments", "assessors"):
        return _create_experiment(archive, ctx, query, key)
    if collection == "resources":
        resource = archive.create_resource(
            _resource_owner(ctx), key, query.get("format", ""), query.get("content", "")
        )
        return _text(str(resource.id), 200)
    raise XnatError(405, f"cannot create in {collection}")


def _create_experiment(
    archive: Archive, ctx: dict[str, Any], query: dict[str, str], key: str
) -> tuple[int, bytes, str, None]:
    xsi_type = query.get("xsiType")
    if not xsi_type:
        raise XnatError(400, "xsiType is required to create an experiment")
    project, subject, session = ctx.get("project"), ctx.get("subject"), ctx.get("experiment")
    if session is not None:
        subject = archive.subjects[session.subject_id]
        project = archive.projects[session.project]
    if project is None or subject is None:
        raise XnatError(400, "create experiments below /projects/{p}/subjects/{s}")
    label = query.get(f"{xsi_type}/label", key)
    fields = _xpath_fields(query, xsi_type)
    fields.pop("label", None)
    experiment = archive.create_experiment(project.id, subject, label, xsi_type, fields, session=session)
    return _text(experiment.id, 200)


def _xpath_fields(query: dict[str, str], xsi_type: str) -> dict[str, str]:
    """`xnat:mrSessionData/date=...` query parameters as `{"date": ...}` (one level only)."""
    prefix = f"{xsi_type}/"
    return {
        k[len(prefix) :]: v for k, v in query.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]
    }


def serve_forever(root: Path | None = None) -> None:  # pragma: no cover - manual use
    """Run a server until interrupted (for trying xnatpy by hand)."""
    server = XnatTestServer().start()
    server.archive.add_project("TEST")
    print(server.url, flush=True)
    threading.Event().wait()
