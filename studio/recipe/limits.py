"""Reading recipe text safely: how big a recipe may be, and the one YAML / JSON reader every recipe goes through.

A recipe is a few kilobytes written by a person or a tool. Whatever is bigger or deeper than these limits is refused
before it is looked at, with a RecipeError saying which limit it passed — so a hostile or broken file (a 50 MB dump, a
"billion laughs" of nested YAML aliases, a thousand nested brackets) costs milliseconds, not minutes or a crash:

* ``MAX_RECIPE_BYTES`` (1 MB): the text of a recipe, as UTF-8 bytes — a YAML file, or the JSON a PNG chunk or a
  .safetensors header carries. The largest real recipes (per-layer values for every model of an 80-layer merge) are
  tens of kilobytes.
* ``MAX_NODES`` (100 000): values in the recipe *after* every YAML alias is expanded (each list item, mapping key
  and value counts). Counting expanded values is what stops alias bombs: ten aliases of ten aliases of … are a few
  hundred bytes of text and 10¹⁰ values.
* ``MAX_DEPTH`` (64): lists and mappings inside each other. Recipes nest four or five deep; the limit keeps the
  readers and validators, which recurse, far from Python's recursion limit.
"""

from __future__ import annotations

import json
import os

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from ..errors import RecipeError

MAX_RECIPE_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_DEPTH = 64


class _LimitReached(yaml.YAMLError):
    def __init__(self, what: str, hint: str = "write the values out, without aliases"):
        super().__init__(what)
        self.what, self.hint = what, hint


def _too_many(count: int) -> _LimitReached:
    return _LimitReached(f"more than {MAX_NODES:,} values once its aliases are expanded ({count:,} so far)",
                         "recipes hold a few thousand values; an alias counts as all the values it stands for")


def _too_deep() -> _LimitReached:
    return _LimitReached(f"lists and mappings nested more than {MAX_DEPTH} deep", "recipes nest a few levels deep")


class _CountingComposer(Composer):
    """A composer that counts the values it composes, an alias counting as everything it stands for, and refuses
    past MAX_NODES or MAX_DEPTH — before anything is constructed from them."""

    def __init__(self):
        super().__init__()
        self._sizes: dict[int, int] = {}   # id(node) → values in it once expanded (nodes live until the end)
        self._count = 0
        self._depth = 0

    def compose_node(self, parent, index):
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _too_deep()
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            size = self._sizes.get(id(node))
            if size is None:  # the alias is inside the value it names: a value that contains itself
                raise _LimitReached("an alias inside the value it names (a value that contains itself)")
        else:
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self._sizes[id(n)] for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            self._sizes[id(node)] = size
        self._count += size if alias else 1
        if self._count > MAX_NODES:
            raise _too_many(self._count)
        return node

    def forget_sizes(self) -> None:
        """Drop the sizes of a finished document's nodes (the count of values goes on)."""
        self._sizes.clear()


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class BoundedLoader(_CountingComposer, CParser, SafeConstructor, Resolver):
        """Safe tags only; libyaml's parser (7× the pure-Python one) under the counting composer."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            _CountingComposer.__init__(self)
else:  # pragma: no cover - PyYAML built without libyaml
    class BoundedLoader(_CountingComposer, yaml.SafeLoader):
        """Safe tags only, under the counting composer."""


def _refuse(limit: _LimitReached, where: str):
    raise RecipeError(f"the recipe has {limit.what}", where=where, hint=limit.hint) from None


def check_size(nbytes: int, where: str) -> None:
    if nbytes > MAX_RECIPE_BYTES:
        raise RecipeError(f"the recipe is {nbytes:,} bytes; recipes are at most {MAX_RECIPE_BYTES:,}", where=where,
                          hint="this is not a recipe, or a generated one that should be smaller")


def parse_yaml(text: str, where: str = "recipe"):
    """The data of one YAML document (safe tags only), within the limits above; RecipeError for invalid YAML, and
    for a second document (mergekit-multi's steps: :mod:`studio.recipe.multi` reads those)."""

    def one_document(loader):
        data = loader.get_data() if loader.check_data() else None
        if loader.check_data():
            raise RecipeError("the text holds more than one YAML document ('---' starts another)", where=where,
                              hint="several named recipes are a multi-step merge: run them with `python -m studio "
                                   "merge FILE OUT`; one recipe is one document")
        return data

    return _load(text, where, one_document)


def parse_yaml_documents(text: str, where: str = "recipe") -> list:
    """The data of every document in a YAML stream (``---`` between them; an empty document is None), safe tags
    only; the limits hold for the whole text, as for one document."""

    def every_document(loader):
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
            # aliases never reach across documents; node ids of a finished document may be reused by the next
            loader.forget_sizes()
        return docs

    return _load(text, where, every_document)


def _load(text: str, where: str, read):
    check_size(len(text.encode("utf-8", "surrogatepass")), where)
    loader = None
    try:
        loader = BoundedLoader(text)
        return read(loader)
    except _LimitReached as e:
        _refuse(e, where)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())   # one line, as every error
        raise RecipeError(f"invalid YAML{loc}: {problem}", where=where) from None
    except UnicodeEncodeError:   # a str holding lone surrogates (never from a file: those are decoded strictly)
        raise RecipeError("the recipe text is not valid Unicode", where=where) from None
    except RecursionError:
        _refuse(_too_deep(), where)
    finally:
        if loader is not None:
            loader.dispose()


def _check_shape(data, where: str) -> None:
    """MAX_NODES and MAX_DEPTH for data that did not come through BoundedLoader (JSON)."""
    count, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            _refuse(_too_many(count), where)
        if isinstance(value, (list, dict)):
            if depth >= MAX_DEPTH:
                _refuse(_too_deep(), where)
            items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
            stack.extend((x, depth + 1) for x in items)


def parse_json(raw: str, where: str = "recipe"):
    """The data of a recipe carried as JSON (a PNG chunk, a .safetensors header), within the same limits."""
    check_size(len(str(raw).encode("utf-8", "surrogatepass")), where)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RecipeError(f"the embedded recipe is not valid JSON ({e.msg})", where=where) from None
    except RecursionError:
        _refuse(_too_deep(), where)
    _check_shape(data, where)
    return data


def decode(raw: bytes, where: str = "recipe") -> str:
    """UTF-8 bytes → text; RecipeError naming the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text, at byte {e.start}", where=where,
                          hint="save the recipe as UTF-8 (most editors: 'Save with encoding')") from None


def read_text(path, where: str | None = None) -> str:
    """A recipe file's text: at most MAX_RECIPE_BYTES read (a bigger file is refused unread), UTF-8 decoded."""
    where = str(path) if where is None else where
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            check_size(size, where)
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError(f"cannot read recipe ({e.strerror or e})", where=where) from None
    check_size(len(raw), where)   # a file that grew, or one whose size the system does not report (a pipe)
    return decode(raw, where)
