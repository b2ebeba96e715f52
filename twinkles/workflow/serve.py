"""``twinkles serve REPO``: a read-only status page on 127.0.0.1 that refreshes itself.

Pages: ``/`` (HTML, re-read from the registry on every request, reloads every ``refresh`` seconds) and
``/status.json`` (the same numbers as JSON). Only GET and HEAD; the registry is opened read-only; the server binds
to the loopback interface only (use an SSH tunnel to look from elsewhere).
"""

from __future__ import annotations

import html
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..repo import Repository
from .graph import STATUSES
from .status import collect_status

__all__ = ["make_server", "serve", "render_page"]

_COLORS = {"done": "#2e7d32", "failed": "#c62828", "skipped-upstream": "#ef6c00", "running": "#1565c0",
           "pending": "#9e9e9e"}


def render_page(st: dict, refresh: float) -> str:
    e = html.escape
    rows = []
    for name, c in list(st["stages"].items()) + [("all stages", st["totals"])]:
        total = c["total"] or 1
        bar = "".join(f'<span style="width:{100.0 * c[s] / total:.2f}%;background:{_COLORS[s]}"></span>'
                      for s in STATUSES if c[s])
        cells = "".join(f'<td class="n" data-stage="{e(name)}" data-status="{s}">{c[s]}</td>' for s in STATUSES)
        rows.append(f'<tr><th>{e(name)}</th>{cells}<td class="n" data-stage="{e(name)}" data-status="total">'
                    f'{c["total"]}</td><td class="bar">{bar}</td></tr>')
    fails = "".join(f"<tr><td>{e(f['stage'])}</td><td>{e(f['data_id'])}</td><td>{e(f['status'])}</td>"
                    f"<td>{f['attempt']}</td><td>{e(f['error'])}</td><td>{e(f['log_path'] or '')}</td></tr>"
                    for f in st["failures"][:200])
    inv = st["invocation"] or {}
    head = (f"run <b>{e(str(st['run']))}</b> &middot; pipeline {e(str(inv.get('pipeline', '-')))} &middot; executor "
            f"{e(str(inv.get('executor', '-')))} &middot; {inv.get('workers', '-')} workers &middot; state "
            f'<b id="state">{e(st["state"])}</b>')
    missing = (f"<p>Not implemented yet: {e(', '.join(st['missing_stages']))}</p>" if st["missing_stages"] else "")
    blocks = st.get("blocks") or []
    block_table = ("<h2>Blocks (batch jobs)</h2><table id=\"blocks\"><tr><th>block</th><th>job id</th><th>state</th>"
                   "<th>jobs done</th><th>failed</th></tr>" + "".join(
                       f"<tr><td>{e(str(b['block']))}</td><td>{e(str(b['job_id'] or '-'))}</td><td>{e(b['state'])}"
                       f"</td><td class=\"n\">{b['done']}</td><td class=\"n\">{b['failed']}</td></tr>"
                       for b in blocks) + "</table>") if blocks else ""
    updated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st["time"]))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh:g}">
<title>twinkles: {e(str(st['run']))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }} td.n {{ text-align: right; }}
td.bar {{ width: 320px; }} td.bar span {{ display: inline-block; height: 12px; }}
</style></head><body>
<h1>twinkles status</h1>
<p>{e(st['repo'])}<br>{head}</p>{missing}
<table id="counts"><tr><th>stage</th>{''.join(f'<th>{s}</th>' for s in STATUSES)}<th>total</th><th></th></tr>
{''.join(rows)}</table>{block_table}
<h2>Failures ({st['totals']['failed']} failed, {st['totals']['skipped-upstream']} skipped)</h2>
<table id="failures"><tr><th>stage</th><th>data ID</th><th>status</th><th>attempt</th><th>error</th><th>log</th></tr>
{fails}</table>
<p><small>updated {updated}; this page reloads every {refresh:g} s; JSON at <a href="status.json">status.json</a>
</small></p></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "twinkles-status"

    def _send(self, body: bytes, ctype: str, head_only: bool = False) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self, head_only: bool = False) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path not in ("/", "/index.html", "/status.json"):
            self.send_error(HTTPStatus.NOT_FOUND, "only / and /status.json")
            return
        try:
            st = collect_status(self.server.repo, self.server.run)
        except Exception as exc:  # noqa: BLE001 - show the problem on the page, keep serving
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot read the registry: {exc}")
            return
        if path == "/status.json":
            self._send(json.dumps(st, default=str).encode(), "application/json", head_only)
        else:
            self._send(render_page(st, self.server.refresh).encode(), "text/html; charset=utf-8", head_only)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET(head_only=True)

    def _refuse(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only status page")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, fmt, *args) -> None:  # quiet: the terminal shows the URL only
        pass


def make_server(repo_path, port: int = 8765, run: str | None = None, refresh: float = 5.0) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1:port (port 0: any free port; see ``server.server_address``)."""
    repo = Repository(repo_path)
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    server.repo, server.run, server.refresh = repo, run, refresh
    return server


def serve(repo_path, port: int = 8765, run: str | None = None, refresh: float = 5.0, echo=None) -> None:
    server = make_server(repo_path, port, run, refresh)
    host, port = server.server_address[:2]
    echo = echo or (lambda msg: print(msg, flush=True))
    echo(f"status page of {server.repo.root}: http://{host}:{port}/  (read-only; Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def serve_in_thread(repo_path, port: int = 0, run: str | None = None, refresh: float = 5.0):
    """Start a server in a daemon thread (tests, notebooks); returns it (call ``shutdown()`` to stop)."""
    server = make_server(repo_path, port, run, refresh)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
