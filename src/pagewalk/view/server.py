"""The web view's files and the local server that hands them out.

The site is a fixed set of files held in memory: the page (``static/index.html``,
``app.js``, ``app.css``), the run as ``data.js`` (``window.PAGEWALK_RUN = {...}``, loaded
by a script tag so the same files also work opened from disk), and Plotly's own
``plotly.min.js`` from the ``plotly`` package with its MIT licence. Nothing refers to
any other host; the Content-Security-Policy says so to the browser as well.

The server binds 127.0.0.1 only, answers GET and HEAD for those files and 404 for
anything else, reads no request body, and drops a connection idle for
``REQUEST_TIMEOUT`` seconds; ``serve(..., seconds=N)`` stops by itself.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from pagewalk.errors import ConfigError

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 10          # seconds a connection may stay silent
PAGE_FILES = {"index.html": "text/html; charset=utf-8",
              "app.js": "text/javascript; charset=utf-8",
              "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
PLOTLY_NOTICE = """plotly.min.js is plotly.js, shipped inside the `plotly` Python package
({version}); both are released under the MIT licence:

{license}"""

Site = dict[str, tuple[str, bytes]]     # file name -> (content type, bytes)


def plotly_files() -> Site:
    """plotly.min.js and its licence, read from the installed ``plotly`` package."""
    try:
        import plotly  # type: ignore[import-untyped]
        from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("the web view draws its charts with Plotly: "
                          "pip install 'plotly>=5.15'") from None
    notice = PLOTLY_NOTICE.format(version=plotly.__version__, license=_plotly_license())
    return {"plotly.min.js": ("text/javascript; charset=utf-8", get_plotlyjs().encode()),
            "THIRD-PARTY-LICENSES.txt": ("text/plain; charset=utf-8", notice.encode())}


def _plotly_license() -> str:
    """The licence file the plotly distribution ships, or the licence's name."""
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        files = distribution("plotly").files or []
    except PackageNotFoundError:
        files = []
    for file in files:
        if file.name.upper().startswith("LICENSE"):
            try:
                return file.read_text()
            except OSError:
                break
    return "The MIT License (plotly.js: github.com/plotly/plotly.js, LICENSE)"


def build_site(document: dict[str, Any]) -> Site:
    """Every file of the view of one run."""
    static = resources.files("pagewalk.view") / "static"
    site: Site = {name: (ctype, (static / name).read_bytes()) for name, ctype in PAGE_FILES.items()}
    data = "window.PAGEWALK_RUN = " + json.dumps(document, separators=(",", ":")) + ";\n"
    site["data.js"] = ("text/javascript; charset=utf-8", data.encode())
    site.update(plotly_files())
    return site


def write_static(site: Site, directory: Path) -> list[Path]:
    """Write the site's files into ``directory`` (created if needed); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (_, body) in site.items():
        path = directory / name
        path.write_bytes(body)
        written.append(path)
    return written


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT
        server_version = "pagewalk-view"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, with_body: bool) -> None:
            name = self.path.split("?", 1)[0].split("#", 1)[0].lstrip("/") or "index.html"
            if name not in site:
                self.send_error(HTTPStatus.NOT_FOUND, "not part of this view")
                return
            ctype, body = site[name]
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:   # quiet
            pass

    return Handler


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


def make_server(site: Site, port: int = 0) -> ViewServer:
    """A server for ``site`` on 127.0.0.1:``port`` (0: any free port); not yet serving."""
    try:
        return ViewServer((HOST, port), _handler(site))
    except OSError as err:
        raise ConfigError(f"cannot listen on {HOST}:{port}: {err.strerror or err}") from None


def serve(server: ViewServer, seconds: float | None = None) -> None:
    """Serve until interrupted, or for ``seconds``."""
    timer = None
    if seconds is not None:
        timer = threading.Timer(seconds, server.shutdown)
        timer.daemon = True
        timer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if timer is not None:
            timer.cancel()
        server.server_close()
