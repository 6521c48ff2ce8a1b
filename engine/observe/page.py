"""The live status page: one self-contained HTML document (``page.html``, no external assets) polling ``status``.

Everything from the engine is put in the page with ``textContent``, never
as markup, so a model or budget name cannot inject HTML.
"""

from __future__ import annotations

from importlib.resources import files

PAGE: str = files("engine.observe").joinpath("page.html").read_text(encoding="utf-8")
