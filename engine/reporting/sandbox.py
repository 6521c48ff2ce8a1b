"""The sandbox user report templates run in: Jinja's immutable sandbox, with resource bounds.

Jinja's sandbox keeps a template from reaching Python internals, not from
spending unbounded time or memory: ``{{ 9 ** 9 ** 9 }}`` computes for minutes,
``{{ 'a' * 10 ** 9 }}`` allocates a gigabyte, nested loops over ``range(100000)``
run for hours. :class:`ReportSandbox` bounds, per render:

* integer results of ``*`` and ``**`` to :data:`MAX_INT_BITS` bits;
* strings and lists made by ``*``, ``+``, ``~``, ``%``, ``format``, ``join``,
  ``replace``, ``center``, ``indent``, ``sum``, the width-taking string methods
  (``ljust``, ``center``, ``zfill``, ``expandtabs``, ``format`` ...) to
  :data:`MAX_SIZE` characters or items (the size is checked before the result
  is built where the arguments could make it large);
* ``range`` to :data:`MAX_RANGE` items, ``slice`` to as many slices, and
  ``lipsum`` to 100 paragraphs;
* loop iterations (every ``for``, recursive ``loop(...)`` calls included) to
  :data:`MAX_ITERATIONS` in all;
* the render's wall time to ``time_limit_s`` (default
  :data:`RENDER_TIME_LIMIT_S`), checked at every loop iteration, call and
  bounded operator, so a template that loops or recurses stops in time;
* ``batch`` with a fill value to :data:`MAX_SIZE` items a batch; a format
  string's specs may not nest a ``{field}`` (``"{0:>{1}}"``: its width is
  only known once the string is being built);
* a render's whole output to :data:`MAX_OUTPUT` characters
  (:meth:`ReportSandbox.render_bounded`, which renders piece by piece), and
  so what a block captures (``{% set %}`` blocks, macros, filter blocks);
* a template file to :data:`MAX_TEMPLATE_BYTES` (:class:`BoundedFileSystemLoader`
  reads no more than that).

Over a bound, rendering raises :class:`TemplateLimitError` (a Jinja
``SecurityError``), which the report names with the template file and line.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import string
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeGuard, cast

from jinja2 import FileSystemLoader, Template, nodes, pass_context
from jinja2 import filters as jfilters
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateNotFound
from jinja2.loaders import split_template_path
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

__all__ = ["MAX_INT_BITS", "MAX_ITERATIONS", "MAX_OUTPUT", "MAX_RANGE", "MAX_SIZE", "MAX_TEMPLATE_BYTES",
           "RENDER_TIME_LIMIT_S", "BoundedFileSystemLoader", "ReportSandbox", "TemplateLimitError"]

#: The largest integer a template may compute, in bits (about 1,200 decimal digits).
MAX_INT_BITS = 4096
#: The longest string or list a template may build.
MAX_SIZE = 1_000_000
#: The most items a ``range`` may have (Jinja's own sandbox bound).
MAX_RANGE = 100_000
#: Loop iterations a render may run in all (the shipped reports run a few thousand).
MAX_ITERATIONS = 250_000
#: How long one render may take, seconds.
RENDER_TIME_LIMIT_S = 10.0
#: The most characters one render may write (the shipped reports write tens of kilobytes).
MAX_OUTPUT = 50_000_000
#: The largest template file the loader reads (the shipped templates are a few kilobytes).
MAX_TEMPLATE_BYTES = 1 << 20

_WIDTH_DIGITS = re.compile(r"\d{7,}")  # a width or precision of 1,000,000 or more in a format string
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
_WIDE_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map"})


class TemplateLimitError(SecurityError):
    """A template went over one of the sandbox's resource bounds."""


#: The filter every ``for`` loop's iterable is passed through (Jinja allows no node types of one's own).
LOOP_FILTER = "_sandbox_loop_items"


@pass_context
def _loop_items(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    env = context.environment
    if not isinstance(env, ReportSandbox):
        raise TypeError("the sandbox's loop filter outside its sandbox")
    return env.loop_items(iterable)


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # before any frame pulls the filters it uses: every loop's iterable goes through LOOP_FILTER
        for loop in list(node.find_all(nodes.For)):
            if not (isinstance(loop.iter, nodes.Filter) and loop.iter.name == LOOP_FILTER):
                loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def buffer(self, frame: Frame) -> None:
        # what a block writes (set blocks, macros, filter blocks) is counted as it is written
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.block_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(", '~')")


class _BlockBuffer(list[Any]):
    """What a block writes, refused once over :data:`MAX_OUTPUT` characters in all (not when joined)."""

    __slots__ = ("_size",)

    def __init__(self) -> None:
        super().__init__()
        self._size = 0

    def _count(self, piece: Any) -> None:
        self._size += len(piece) if isinstance(piece, str) else 0
        if self._size > MAX_OUTPUT:
            raise TemplateLimitError(f"a block's output is over {MAX_OUTPUT:,} characters, the most a report "
                                     "template may write")

    def append(self, piece: Any) -> None:
        self._count(piece)
        super().append(piece)

    def extend(self, pieces: Iterable[Any]) -> None:
        pieces = tuple(pieces)
        for piece in pieces:
            self._count(piece)
        super().extend(pieces)


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class ReportSandbox(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose renders are bounded in time and size (see the module docstring)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, time_limit_s: float = RENDER_TIME_LIMIT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.time_limit_s = time_limit_s
        self._deadline = float("inf")
        self._iterations = 0
        self.globals["range"] = self._range
        self.globals["lipsum"] = self._lipsum
        self.filters[LOOP_FILTER] = _loop_items
        for name, func, check in (
                ("center", jfilters.do_center, self._check_center), ("indent", jfilters.do_indent, self._check_indent),
                ("format", jfilters.do_format, self._check_format), ("join", jfilters.sync_do_join, self._check_join),
                ("replace", jfilters.do_replace, self._check_replace), ("sum", jfilters.sync_do_sum, self._check_sum),
                ("slice", jfilters.sync_do_slice, self._check_slice), ("batch", jfilters.do_batch, self._check_batch)):
            self.filters[name] = _checked(func, check)

    # -- the render's budget --------------------------------------------------------------
    def render_bounded(self, template: Template, **context: Any) -> str:
        """``template`` rendered with ``context``, piece by piece: over :data:`MAX_OUTPUT` characters,
        TemplateLimitError is raised where the template is writing. Call :meth:`start` first."""
        parts: list[str] = []
        size = 0
        pieces = cast(Generator[str, None, None], template.generate(**context))
        for piece in pieces:
            size += len(piece)
            if size > MAX_OUTPUT:  # raised inside the template, so the error names its file and line
                pieces.throw(TemplateLimitError(f"the output is over {MAX_OUTPUT:,} characters, the most a report "
                                                "template may write"))
            parts.append(piece)
        return "".join(parts)

    @staticmethod
    def block_buffer() -> list[Any]:
        """The list a block's output is collected in (see :class:`_BlockBuffer`)."""
        return _BlockBuffer()

    def start(self) -> None:
        """Begin a render: its clock and iteration count start now."""
        self._deadline = time.monotonic() + self.time_limit_s
        self._iterations = 0

    def tick(self) -> None:
        if time.monotonic() > self._deadline:
            raise TemplateLimitError(f"rendering took longer than {self.time_limit_s:g} s, the limit of a report "
                                     "template (a loop or recursion too long?)")

    def loop_items(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self._iterations += 1
            if self._iterations > MAX_ITERATIONS:
                raise TemplateLimitError(f"more than {MAX_ITERATIONS:,} loop iterations, the limit of a report "
                                         "template")
            self.tick()
            yield item

    def sized(self, value: Any, what: str) -> Any:
        """``value``, unless it is a string or list over :data:`MAX_SIZE`."""
        n = _size(value)
        if n is not None and n > MAX_SIZE:
            raise TemplateLimitError(f"{what}: a result of {n:,} characters or items, over the {MAX_SIZE:,} a "
                                     "report template may build")
        return value

    def _refuse_size(self, n: int, what: str) -> None:
        if n > MAX_SIZE:
            raise TemplateLimitError(f"{what}: a result of {n:,} characters or items, over the {MAX_SIZE:,} a "
                                     "report template may build")

    # -- operators ------------------------------------------------------------------------
    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "**":
            if _int(left) and _int(right) and right > 0 and abs(left) > 1 and \
                    (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
                raise TemplateLimitError(f"{left} ** {right}: a result of over {MAX_INT_BITS:,} bits, the largest "
                                         "integer a report template may compute")
        elif operator == "*":
            if _int(left) and _int(right):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                    raise TemplateLimitError(f"*: a result of over {MAX_INT_BITS:,} bits, the largest integer a "
                                             "report template may compute")
            else:
                seq, n = (left, right) if _int(right) else (right, left)
                size = _size(seq)
                if size is not None and _int(n):
                    self._refuse_size(size * max(n, 0), "*")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right, "%")
        return self.sized(super().call_binop(context, operator, left, right), operator)

    def _check_percent(self, text: str, args: Any, what: str) -> None:
        values = args if isinstance(args, tuple) else tuple(args.values()) if isinstance(args, dict) else (args,)
        if _WIDTH_DIGITS.search(text) or ("*" in text and any(_int(v) and abs(v) > MAX_SIZE for v in values)):
            raise TemplateLimitError(f"{what}: a width or precision of {MAX_SIZE:,} or more, over what a report "
                                     "template may build")

    # -- calls ----------------------------------------------------------------------------
    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.tick()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level: counted as loops are
            args = (__self.loop_items(args[0]), *args[1:])
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            __self._check_str_method(owner, getattr(target, "__name__", ""), args, kwargs)
        return __self.sized(super().call(__context, __obj, *args, **kwargs), "a call")

    def _check_str_method(self, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        values = (*args, *kwargs.values())
        what = f"str.{name}"
        if name in _WIDE_METHODS and any(_int(v) and v > MAX_SIZE for v in values):
            self._refuse_size(max(v for v in values if _int(v)), what)
        if name == "expandtabs":
            size = next((v for v in values if _int(v)), 8)
            self._refuse_size(len(text) + text.count("\t") * max(size, 0), what)
        elif name in ("format", "format_map"):
            if _WIDTH_DIGITS.search(text):
                raise TemplateLimitError(f"{what}: a width or precision of {MAX_SIZE:,} or more, over what a "
                                         "report template may build")
            if _nested_spec(text):
                raise TemplateLimitError(f"{what}: a replacement field inside a format spec ({{0:>{{1}}}}), which a "
                                         "report template may not use: write the width itself ({{0:>12}})")
        elif name == "replace" and len(args) >= 2:
            self._check_replace_sizes(text, args[0], args[1], args[2] if len(args) > 2 else None, what)
        elif name == "join" and args:
            self._check_join_sizes(text, args[0], what)

    def _check_replace_sizes(self, text: str, old: Any, new: Any, count: Any, what: str) -> None:
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            times = text.count(old) if old else len(text) + 1
            if _int(count) and count >= 0:
                times = min(times, count)
            self._refuse_size(len(text) + times * (len(new) - len(old)), what)

    def _check_join_sizes(self, sep: str, items: Any, what: str) -> None:
        if isinstance(items, (list, tuple)):
            self._refuse_size(sum(len(x) if isinstance(x, str) else 0 for x in items)
                              + len(sep) * max(len(items) - 1, 0), what)

    # -- filters and globals: each check gets the filter's arguments and returns them (a generator as a list) --
    def _check_center(self, args: Args, kwargs: Kwargs) -> Args:  # (value, width=80)
        width = kwargs.get("width", args[1] if len(args) > 1 else 80)
        if _int(width):
            self._refuse_size(width, "center")
        return args

    def _check_indent(self, args: Args, kwargs: Kwargs) -> Args:  # (s, width=4, first=False, blank=False)
        text = str(args[0]) if args else ""
        width = kwargs.get("width", args[1] if len(args) > 1 else 4)
        pad = width if _int(width) else len(width) if isinstance(width, str) else 0
        self._refuse_size(len(text) + (text.count("\n") + 1) * max(pad, 0), "indent")
        return args

    def _check_format(self, args: Args, kwargs: Kwargs) -> Args:  # (value, *args, **kwargs)
        if args and isinstance(args[0], str):
            self._check_percent(args[0], kwargs or args[1:], "format")
        return args

    def _check_join(self, args: Args, kwargs: Kwargs) -> Args:  # (eval_ctx, value, d="", attribute=None)
        if len(args) < 2:
            return args
        items = _listed(args[1])
        sep = kwargs.get("d", args[2] if len(args) > 2 else "")
        if isinstance(sep, str) and kwargs.get("attribute", args[3] if len(args) > 3 else None) is None:
            self._refuse_size(sum(len(x) if isinstance(x, str) else len(str(x)) for x in items)
                              + len(sep) * max(len(items) - 1, 0), "join")
        return (args[0], items, *args[2:])

    def _check_replace(self, args: Args, kwargs: Kwargs) -> Args:  # (eval_ctx, s, old, new, count=None)
        if len(args) >= 4:
            self._check_replace_sizes(str(args[1]), args[2], args[3],
                                      kwargs.get("count", args[4] if len(args) > 4 else None), "replace")
        return args

    def _check_sum(self, args: Args, kwargs: Kwargs) -> Args:  # (environment, iterable, attribute=None, start=0)
        if len(args) < 2:
            return args
        items = _listed(args[1])
        start = kwargs.get("start", args[3] if len(args) > 3 else 0)
        self._refuse_size(sum(_size(x) or 0 for x in items) + (_size(start) or 0), "sum")
        return (args[0], items, *args[2:])

    def _check_slice(self, args: Args, kwargs: Kwargs) -> Args:  # (value, slices, fill_with=None)
        slices = kwargs.get("slices", args[1] if len(args) > 1 else 1)
        if _int(slices) and slices > MAX_RANGE:
            raise TemplateLimitError(f"slice: {slices:,} slices, over the {MAX_RANGE:,} a report template may make")
        return args

    def _check_batch(self, args: Args, kwargs: Kwargs) -> Args:  # (value, linecount, fill_with=None)
        count = kwargs.get("linecount", args[1] if len(args) > 1 else None)
        fill = kwargs.get("fill_with", args[2] if len(args) > 2 else None)
        if fill is not None and _int(count) and count > MAX_SIZE:
            raise TemplateLimitError(f"batch: batches of {count:,} items with a fill value, over the {MAX_SIZE:,} a "
                                     "report template may build")
        return args

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > MAX_RANGE:
            raise TemplateLimitError(f"range of {len(rng):,} items, over the {MAX_RANGE:,} a report template may "
                                     "make")
        return rng

    @staticmethod
    def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if n > 100 or max > 1000:
            raise TemplateLimitError("lipsum: at most 100 paragraphs of at most 1,000 words in a report template")
        text: str = generate_lorem_ipsum(n, html, min, max)
        return text


def _nested_spec(text: str) -> bool:
    """Whether a ``str.format`` string has a replacement field inside a format spec (``{0:>{1}}``)."""
    if "{" not in text.partition(":")[2]:
        return False
    try:
        return any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(text))
    except ValueError:  # a malformed format string: str.format itself says what is wrong
        return False


class BoundedFileSystemLoader(FileSystemLoader):
    """Jinja's FileSystemLoader, reading no template file over :data:`MAX_TEMPLATE_BYTES`."""

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)
        for searchpath in self.searchpath:
            filename = posixpath.join(searchpath, *pieces)
            if os.path.isfile(filename):
                break
        else:
            raise TemplateNotFound(template)
        with open(filename, "rb") as fh:
            data = fh.read(MAX_TEMPLATE_BYTES + 1)
            mtime = os.fstat(fh.fileno()).st_mtime
        if len(data) > MAX_TEMPLATE_BYTES:
            error = TemplateLimitError(f"a template file of more than {MAX_TEMPLATE_BYTES:,} bytes "
                                       f"({MAX_TEMPLATE_BYTES >> 20} MiB), the most a report template may be")
            error.template_file = filename  # type: ignore[attr-defined]  # where: the report names the file
            raise error
        contents = data.decode(self.encoding)

        def uptodate() -> bool:
            try:
                return os.path.getmtime(filename) == mtime
            except OSError:
                return False

        return contents, os.path.normpath(filename), uptodate


def _listed(value: Any) -> Any:
    """A one-pass iterable (a generator) as a list, so its size can be checked and it can still be used."""
    return value if isinstance(value, (list, tuple, str, dict)) or not isinstance(value, Iterable) else list(value)


def _checked(func: Callable[..., Any], check: Callable[[Args, Kwargs], Args]) -> Callable[..., Any]:
    """``func`` (a Jinja filter, its pass-context marker kept) with ``check(args, kwargs)`` run first."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*check(args, kwargs), **kwargs)

    return wrapper
