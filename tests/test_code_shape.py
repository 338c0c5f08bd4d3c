"""The package's shape, read from its source with `ast` (no imports): no import cycles between
mmjax modules (function-level imports included), no core function over 80 lines (bench/ and
configs/ aside), and no module reaching into another module's _private names."""
import ast
import collections
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmjax")
MAX_LINES = 80
EXEMPT = ("mmjax.bench", "mmjax.configs")


def _modules():
  mods = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        name = "mmjax." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[name.removesuffix(".__init__")] = path
  return mods


PATHS = _modules()
MODULES = {n: ast.parse(open(p, encoding="utf-8").read(), p) for n, p in PATHS.items()}


def _imports(name, tree):
  """(edges {module}, aliases {local name: module}, private [(module, name)]) of one module."""
  package = name if PATHS[name].endswith("__init__.py") else name.rpartition(".")[0]
  edges, aliases, private = set(), {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([node.module] if node.module else []))
      if not base.startswith("mmjax"):
        continue
      for a in node.names:
        target = f"{base}.{a.name}"
        if target in MODULES:
          edges.add(target)
          aliases[a.asname or a.name] = target
        else:
          edges.add(base)
          if a.name.startswith("_") and not a.name.startswith("__"):
            private.append((base, a.name))
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("mmjax") and a.name in MODULES:
          edges.add(a.name)
          if a.asname:
            aliases[a.asname] = a.name
  return edges, aliases, private


GRAPH = {n: _imports(n, t) for n, t in MODULES.items()}


def _cycles():
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in GRAPH[v][0]:
      if w == v or w not in GRAPH:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
  for v in GRAPH:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle():
  saved = GRAPH["mmjax.layers"]
  GRAPH["mmjax.layers"] = (saved[0] | {"mmjax.models"},) + saved[1:]
  try:
    assert any({"mmjax.layers", "mmjax.models"} <= set(c) for c in _cycles())
  finally:
    GRAPH["mmjax.layers"] = saved


def test_no_core_function_over_80_lines():
  long = collections.Counter()
  for name, tree in MODULES.items():
    if name.startswith(EXEMPT):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_LINES:
          long[f"{name}.{node.name}"] = n
  assert not long, f"functions over {MAX_LINES} lines: {dict(long)}"


def test_no_module_uses_another_modules_private_names():
  bad = []
  for name, tree in MODULES.items():
    _, aliases, private = GRAPH[name]
    bad += [f"{name}: from {m} import {p}" for m, p in private if m != name]
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__") and aliases[node.value.id] != name):
        bad.append(f"{name}: {node.value.id}.{node.attr}")
  assert not bad, bad


def test_the_private_name_check_sees_an_attribute():
  tree = ast.parse("from mmjax import layers\nlayers._hidden(1)\n")
  saved = MODULES["mmjax.models"], GRAPH["mmjax.models"]
  MODULES["mmjax.models"] = tree
  GRAPH["mmjax.models"] = _imports("mmjax.models", tree)
  try:
    try:
      test_no_module_uses_another_modules_private_names()
    except AssertionError as e:
      assert "layers._hidden" in str(e)
    else:
      raise AssertionError("a private attribute of an imported module was not reported")
  finally:
    MODULES["mmjax.models"], GRAPH["mmjax.models"] = saved
