"""Render the view model with Jinja and write the report files.

Templates may be user-edited, so they run in Jinja's immutable sandbox with
``StrictUndefined`` (a misspelt name is an error, not an empty string) and
HTML autoescaping, bounded in time and size (:mod:`engine.reporting.sandbox`:
a render over ten seconds, 250,000 loop iterations or 50 million characters of
output, a string or list of a million items, an integer of 4,096 bits or a
template file over 1 MiB fails). A template directory of the user's is searched before the
shipped ``templates/``, so overriding one file is enough. Every template
problem is raised as :class:`ReportError` naming the template file and line.
In a Markdown template (not autoescaped) every ``{{ value }}`` is escaped for
Markdown: ``&``, ``<`` and ``>`` become entities; ``\\``, ``[``, ``]`` and a
backtick are backslash-escaped, and so are the ``:`` of ``://`` and the ``.``
of ``www.`` (GFM's autolinks), so a model name, event detail or rule text from
the history or the policies cannot bring raw HTML (``<script>``), a code span
or a link (``[x](javascript:...)``, ``https://...``) into the report; it shows
as the same text. (A GFM renderer still links a bare e-mail address as a
``mailto:``: no escape stops that without changing the text.) ``cell`` also
escapes ``|`` and newlines for table cells, ``code`` makes a code span.
Rendering is deterministic: the same history and policies give the same bytes.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import PolicyEngineError
from engine.policy.resources import resource_dir
from engine.reporting.model import Report

#: format -> (template name, file suffix)
FORMATS: dict[str, tuple[str, str]] = {
    "markdown": ("daily-report.md.j2", ".md"),
    "html": ("daily-report.html.j2", ".html"),
}


class ReportError(PolicyEngineError):
    """A report could not be rendered; ``template`` and ``line`` locate a template problem."""

    def __init__(self, message: str, template: str | None = None, line: int | None = None) -> None:
        self.template, self.line = template, line
        where = f"{template}:{line}: " if template and line else f"{template}: " if template else ""
        super().__init__(where + message)


#: What a value put into Markdown must not bring with it: HTML (tags, entities), link syntax, code spans, and
#: backslashes (``\\[`` would otherwise undo the escape of the ``[`` after it). The backslash goes first.
_MD_TEXT = str.maketrans({"\\": "\\\\", "&": "&amp;", "<": "&lt;", ">": "&gt;", "[": "\\[", "]": "\\]",
                          "`": "\\`"})
#: Where a GFM renderer would make a link of bare text (``https://...``, ``www.``): a backslash before the
#: ``:`` or the ``.`` stops it, and the text shows unchanged.
_MD_AUTOLINK = re.compile(r":(?=//)|(?<=www)\.", re.IGNORECASE)


def _md_text(value: Any) -> str:
    """``value`` as Markdown text that shows as itself: no raw HTML, entity, link, code span or URL autolink."""
    return _MD_AUTOLINK.sub(lambda m: "\\" + m.group(), str(value).translate(_MD_TEXT))


def _md_cell(eval_ctx: Any, value: Any) -> Any:
    """``value`` as the text of a Markdown table cell (:func:`_md_text`, ``|`` escaped, newlines as spaces);
    in HTML, the value with newlines as spaces (autoescaped as any value)."""
    from markupsafe import Markup

    if eval_ctx.autoescape:
        return str(value).replace("\n", " ")
    return Markup(_md_text(value).replace("|", "\\|").replace("\n", " "))  # noqa: S704 - escaped for Markdown


def _finalize(eval_ctx: Any, value: Any) -> Any:
    """Every ``{{ value }}`` of a Markdown template (no autoescape) is escaped with :func:`_md_text`;
    HTML templates are autoescaped by Jinja; Markup (a filter's finished Markdown, ``code``) stays."""
    from markupsafe import Markup

    if eval_ctx.autoescape or isinstance(value, Markup):
        return value
    return _md_text(value)


def _md_code(eval_ctx: Any, value: Any) -> Any:
    """``value`` as a Markdown code span (fenced by more backticks than it holds), or ``<code>`` in HTML."""
    from markupsafe import Markup

    text = str(value).replace("\n", " ")
    if eval_ctx.autoescape:
        return Markup("<code>%s</code>") % text
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")  # noqa: S704 - Markdown: a code span shows its text as is


def environment(templates_dir: str | os.PathLike[str] | None = None, *, time_limit_s: float | None = None) -> Any:
    """The sandbox the report templates render in; ``time_limit_s``: how long one render may take."""
    from jinja2 import StrictUndefined, pass_eval_context

    from engine.reporting.sandbox import RENDER_TIME_LIMIT_S, BoundedFileSystemLoader, ReportSandbox

    search = [str(templates_dir)] if templates_dir else []
    search.append(str(resource_dir("templates")))
    env = ReportSandbox(
        loader=BoundedFileSystemLoader(search), undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, autoescape=lambda name: name is not None and ".html" in name,
        time_limit_s=RENDER_TIME_LIMIT_S if time_limit_s is None else time_limit_s,
        finalize=pass_eval_context(_finalize))
    env.filters["cell"] = pass_eval_context(_md_cell)
    env.filters["code"] = pass_eval_context(_md_code)
    return env


def _is_template(filename: str, env: Any) -> bool:
    return filename.endswith(".j2") or any(
        os.path.abspath(filename).startswith(os.path.abspath(d) + os.sep) for d in env.loader.searchpath)


def _located(exc: BaseException, fallback: str, env: Any) -> ReportError:
    """``exc`` as a ReportError at the template file and line it happened."""
    from jinja2 import TemplateNotFound, TemplateSyntaxError

    if isinstance(exc, TemplateSyntaxError):
        return ReportError(exc.message or str(exc), exc.filename or exc.name or fallback, exc.lineno)
    if isinstance(exc, TemplateNotFound):
        return ReportError(f"template not found: {exc.name}", fallback)
    if getattr(exc, "template_file", None):  # a template file refused before it was read (too large)
        return ReportError(f"{type(exc).__name__}: {exc}", exc.template_file)  # type: ignore[attr-defined]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_template(f.filename, env)]
    if frames:
        return ReportError(f"{type(exc).__name__}: {exc}", frames[-1].filename, frames[-1].lineno)
    return ReportError(f"{type(exc).__name__}: {exc}", fallback)


def render(report: Report, fmt: str, env: Any) -> str:
    """The text of ``report`` in ``fmt`` ("markdown" or "html"); raises ReportError."""
    name = FORMATS[fmt][0]
    start = getattr(env, "start", None)
    try:
        if start is not None:  # the sandbox's clock and loop count: per render, compiling included
            start()
        template = env.get_template(name)
        bounded = getattr(env, "render_bounded", None)
        text: str = template.render(report=report) if bounded is None else bounded(template, report=report)
    except Exception as exc:  # anything a user's template can raise
        raise _located(exc, name, env) from exc
    return text


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """The mode a report written to ``path`` gets: that of the file it replaces, else what ``open`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def write(report: Report, out_dir: str | os.PathLike[str], formats: Iterable[str] = ("markdown", "html"),
          templates_dir: str | os.PathLike[str] | None = None, *, time_limit_s: float | None = None) -> list[Path]:
    """Render every format first, then write each file atomically; returns the paths written.

    ``time_limit_s``: how long rendering one format may take (default
    :data:`engine.reporting.sandbox.RENDER_TIME_LIMIT_S`)."""
    if templates_dir and not Path(templates_dir).is_dir():
        raise ReportError(f"templates directory {templates_dir} does not exist or is not a directory")
    env = environment(templates_dir, time_limit_s=time_limit_s)
    texts = [(FORMATS[f][1], render(report, f, env)) for f in formats]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in texts:
        path = out / f"{report.stem}{suffix}"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                os.fchmod(fh.fileno(), _file_mode(path))  # mkstemp makes it 0600; a report is an ordinary file
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
