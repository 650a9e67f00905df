"""``fercurate relabel-review serve``: a local page to decide the flagged labels, image by image.

A stdlib ``ThreadingHTTPServer`` bound to 127.0.0.1 only. Every request must carry the random
token of the URL the command prints (``?token=...``, or an ``X-Review-Token`` header); without it
the answer is 403. Routes (anything else is 404)::

    GET  /                      the page (static/index.html, token filled in)
    GET  /static/review.js      the page's script and style (a fixed list: no paths from requests)
    GET  /static/review.css
    GET  /api/queue             the flagged rows: given and suggested label, probabilities, decision
    POST /api/decide            {"image_id", "decision": relabel|keep|remove|undo, "label"?}
    GET  /img/<image_id>.png    the pixels of a queued image, encoded on the fly

Images come from the workspace's pixel cache for ids in the queue, never from a path in the
request, so no request can reach another file. Each decision is appended (and fsynced) to the
workspace's decision log before the answer goes back: the page can be closed, the server stopped
with Ctrl-C or killed, and reopening continues at the first undecided image.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from fercurate.errors import InputError, WorkspaceError
from fercurate.images import encode_png
from fercurate.manifest import Col
from fercurate.relabel.decisions import ACTIONS, KEEP, RELABEL, UNDO, Decision, DecisionLog, log_path
from fercurate.relabel.flag import FLAGGED, STAGE, VOTE_N, VOTES_PREFIX, classes_of, prob_column, review_queue
from fercurate.relabel.queue import IN_BUDGET, P_SUGGESTED, P_WRONG
from fercurate.workspace import Workspace, load_pixels

HOST = "127.0.0.1"
TOKEN_HEADER = "X-Review-Token"
MAX_BODY = 16 * 1024
_STATIC = {"/static/review.js": ("review.js", "text/javascript"), "/static/review.css": ("review.css", "text/css")}
_IMG_RE = re.compile(r"^/img/([0-9A-Za-z_-]{1,64})\.png$")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class ServeParams:
    """Options of ``fercurate relabel-review serve`` (the CLI's defaults point here).

    Attributes:
        version: a flag version, or a version descending from one (default: latest).
        port: TCP port on 127.0.0.1; 0 picks a free one.
        open_browser: open the page in the default browser once the server listens.
    """

    version: str | None = None
    port: int = 0
    open_browser: bool = False


class ReviewState:
    """The queue being reviewed, its pixels and the decision log (shared by the request threads)."""

    def __init__(self, workspace: Workspace, version: str | None) -> None:
        target = workspace.resolve(version)
        info = target if target.stage == STAGE else workspace.find_stage(STAGE, upto=target.version)
        if info is None:
            raise WorkspaceError(
                f"version {target.version} does not descend from a flag; run `fercurate relabel-review flag` first"
            )
        _, df = workspace.read(info.version)
        if FLAGGED not in df.columns:
            raise WorkspaceError(f"version {info.version} has no flag columns; run `fercurate relabel-review flag`")
        self.flag_version = info.version
        self.classes = classes_of(df)
        full = review_queue(df, self.classes)
        # the page is the review budget; the flags past it stay in the manifest (a larger --budget reaches them)
        queue = full[full[IN_BUDGET].fillna(False).astype(bool)].reset_index(drop=True)
        self.flagged = len(full)
        self.budget = len(queue)
        p_wrong = queue[P_WRONG].to_numpy(dtype=float) if P_WRONG in queue.columns else np.zeros(0)
        # expected precision of the top k, k = 1..budget (the page shows it at the image's rank)
        self.precision = (np.cumsum(p_wrong) / np.arange(1, len(p_wrong) + 1)).tolist() if len(p_wrong) else []
        rows = df.set_index(Col.IMAGE_ID).loc[queue[Col.IMAGE_ID]].reset_index()
        size = int(info.extra.get("image_size", 48))
        pixels = load_pixels(workspace, info, rows, size=size) if len(rows) else np.zeros((0, size, size), np.uint8)
        self.pixels = {iid: pixels[i] for i, iid in enumerate(rows[Col.IMAGE_ID])}
        self.items = [self._item(rec) for rec in queue.to_dict("records")]
        self.by_id = {item["image_id"]: item for item in self.items}
        self.log = DecisionLog(log_path(workspace.root))
        self.token = secrets.token_urlsafe(24)
        self._png: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _item(self, rec: dict[str, Any]) -> dict[str, Any]:
        probs = {c: round(float(rec[prob_column(c)]), 4) for c in self.classes}
        rank = int(rec["rank"])
        return {
            "image_id": rec[Col.IMAGE_ID],
            "rank": rank,
            "path": rec[Col.PATH],
            "split": rec[Col.SPLIT],
            "given": rec[Col.LABEL],
            "suggested": None if pd.isna(rec[Col.SUGGESTED_LABEL]) else str(rec[Col.SUGGESTED_LABEL]),
            "score": round(float(rec[Col.MISLABEL_SCORE]), 4),
            "probs": probs,
            "top3": [[c, p] for c, p in sorted(probs.items(), key=lambda kv: (-kv[1], kv[0]))[:3]],
            "p_wrong": _rounded(rec.get(P_WRONG)),
            "p_suggested": _rounded(rec.get(P_SUGGESTED)),
            "expected_precision": _rounded(self.precision[rank - 1]) if rank <= len(self.precision) else None,
            "votes": _votes(rec),
        }

    # -- what the API answers --------------------------------------------------------------------
    def queue(self) -> dict[str, Any]:
        current = self.log.current()
        items = [{**item, "decision": _public(current.get(item["image_id"]))} for item in self.items]
        history = [iid for iid in self.log.history() if iid in self.by_id]
        return {
            "flag_version": self.flag_version,
            "classes": self.classes,
            "items": items,
            "history": history,
            "total": len(items),
            "decided": sum(1 for item in items if item["decision"]),
            "flagged": self.flagged,
            "budget": self.budget,
            "expected_precision": _rounded(self.precision[-1]) if self.precision else None,
        }

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate one decision from the page, append it to the log, answer the item's new state.

        Raises:
            InputError: for an unknown image or class, a bad decision, or an undo with nothing to undo.
        """
        image_id = str(body.get("image_id", ""))
        item = self.by_id.get(image_id)
        if item is None:
            raise InputError(f"image '{image_id[:64]}' is not in the review queue of {self.flag_version}")
        action = body.get("decision")
        if action not in ACTIONS:
            raise InputError(f"decision '{str(action)[:32]}' is not one of: {', '.join(ACTIONS)}")
        label = body.get("label")
        if action == RELABEL:
            if label not in self.classes:
                raise InputError(f"label '{str(label)[:32]}' is not one of: {', '.join(self.classes)}")
            if label == item["given"]:
                action, label = KEEP, None  # choosing the given class is keeping it
        else:
            label = None
        with self._lock:
            if action == UNDO and image_id not in self.log.current():
                raise InputError(f"image {image_id} has no decision to undo")
            self.log.append(
                Decision(
                    image_id=image_id,
                    decision=action,
                    label=label,
                    given=item["given"],
                    by="human",
                    flag_version=self.flag_version,
                )
            )
            current = self.log.current()
        decided = sum(1 for iid in self.by_id if iid in current)
        return {
            "image_id": image_id,
            "decision": _public(current.get(image_id)),
            "decided": decided,
            "total": len(self.items),
        }

    def png(self, image_id: str) -> bytes | None:
        pixels = self.pixels.get(image_id)
        if pixels is None:
            return None
        with self._lock:
            if image_id not in self._png:
                self._png[image_id] = encode_png(pixels)
            return self._png[image_id]


def _rounded(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 4)


def _votes(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The row's annotator votes (``votes_<class>`` counts, ``vote_n``), or None when it has none."""
    counts = {k[len(VOTES_PREFIX) :]: rec[k] for k in rec if k.startswith(VOTES_PREFIX)}
    known = {c: int(v) for c, v in counts.items() if v is not None and not pd.isna(v)}
    if not known:
        return None
    n = rec.get(VOTE_N)
    total = int(n) if n is not None and not pd.isna(n) else sum(known.values())
    return {"counts": dict(sorted(known.items(), key=lambda kv: (-kv[1], kv[0]))), "n": total}


def _public(dec: Decision | None) -> dict[str, Any] | None:
    if dec is None:
        return None
    return {"decision": dec.decision, "label": dec.label, "by": dec.by, "time": dec.time}


def _static(name: str) -> bytes:
    return resources.files("fercurate.relabel").joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"
    server_version = "fercurate-review"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the library never prints; the CLI shows the URL and that is all

    # -- plumbing ----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _authorised(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in ("127.0.0.1", "localhost", ""):
            return False  # DNS rebinding: a foreign name pointed at 127.0.0.1
        query = parse_qs(urlsplit(self.path).query)
        given = self.headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.server.state.token.encode())

    # -- routes ------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._authorised():
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong token; open the URL fercurate printed")
            return
        path = urlsplit(self.path).path
        state = self.server.state
        if path in ("/", "/index.html"):
            page = _static("index.html").replace(b"__TOKEN__", state.token.encode())
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif path in _STATIC:
            name, content_type = _STATIC[path]
            self._send(HTTPStatus.OK, _static(name), f"{content_type}; charset=utf-8")
        elif path == "/api/queue":
            self._json(HTTPStatus.OK, state.queue())
        elif (match := _IMG_RE.match(path)) and (png := state.png(match.group(1))) is not None:
            self._send(HTTPStatus.OK, png, "image/png")
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._authorised():
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong token; open the URL fercurate printed")
            return
        if urlsplit(self.path).path != "/api/decide":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._error(HTTPStatus.BAD_REQUEST, f"send a JSON body of at most {MAX_BODY} bytes")
            return
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            self._error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return
        try:
            self._json(HTTPStatus.OK, self.server.state.decide(body))
        except InputError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server, listening on 127.0.0.1 only."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: ReviewState, port: int = 0) -> None:
        super().__init__((HOST, port), _Handler)
        self.state = state

    @property
    def url(self) -> str:
        """The page's address with its access token."""
        return f"http://{HOST}:{self.server_port}/?token={self.state.token}"


def make_server(workspace: Workspace, params: ServeParams) -> ReviewServer:
    """Load the review queue and bind the server (not yet serving; call ``serve_forever``).

    Raises:
        WorkspaceError: when no flag version is found.
        InputError: when the port is out of range or taken.
    """
    if not 0 <= params.port <= 65535:
        raise InputError(f"port {params.port} is not a TCP port (0-65535; 0 picks a free one)", param="port")
    state = ReviewState(workspace, params.version)
    try:
        return ReviewServer(state, params.port)
    except OSError as exc:
        raise InputError(
            f"cannot listen on {HOST}:{params.port}: {exc.strerror}; pass another port or 0", param="port"
        ) from exc


def serve(workspace: Workspace, params: ServeParams, on_ready: Callable[[ReviewServer], None] | None = None) -> None:
    """Serve the review page until interrupted (Ctrl-C); every decision is already on disk then.

    Args:
        workspace: the workspace holding the flag version and the decision log.
        params: version, port and whether to open a browser.
        on_ready: called with the listening server (the CLI prints ``server.url``).
    """
    server = make_server(workspace, params)
    try:
        if on_ready is not None:
            on_ready(server)
        if params.open_browser:
            import webbrowser

            webbrowser.open(server.url)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
