"""The docs stay true: README.md is short, every relative link resolves (file and #anchor), and
every train.py / eval.py / mmjax.convert / make command in a ```bash block names a config,
keys and flags that exist. Pure Python (loading a config file may import what it imports)."""
import importlib.util
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
BASH = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# absl's own flags, which every absl app accepts.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok", "logtostderr",
              "alsologtostderr", "log_dir", "verbosity", "v", "stderrthreshold",
              "showprefixforinfo", "only_check_args", "pdb_post_mortem", "pdb", "run_with_pdb",
              "run_with_profiling", "use_cprofile_for_profiling", "profile_file",
              "logger_levels"}


def _prose(text: str) -> str:
  """The text without fenced code blocks and inline code spans (links there do not render)."""
  text = FENCE.sub("", text)
  return re.sub(r"(`+).*?\1", "", text, flags=re.S)


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lowercase, punctuation dropped except '-' and '_',
  spaces to '-' (markup removed first: links keep their text, code keeps its content)."""
  h = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
  h = re.sub(r"<[^>]+>", "", h).lower()
  h = re.sub(r"[^\w\- ]", "", h)
  return h.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
  """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
  seen, out = {}, set()
  for line in FENCE.sub("", path.read_text()).splitlines():
    m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    s = slug(m.group(1))
    n = seen.get(s, 0)
    seen[s] = n + 1
    out.add(s if n == 0 else f"{s}-{n}")
  return out


def links(path: pathlib.Path):
  return [m.group(1) for m in LINK.finditer(_prose(path.read_text()))]


def test_readme_is_short():
  size = len(README.read_bytes())
  assert size < 12_288, f"README.md is {size} bytes; move reference material to docs/"


def test_slug_follows_github():
  assert slug("Train, resume, evaluate") == "train-resume-evaluate"
  assert slug("mmjax vs open_clip on this CPU (`mmjax.bench.versus`)") == \
      "mmjax-vs-open_clip-on-this-cpu-mmjaxbenchversus"
  assert slug("Adding an objective") == "adding-an-objective"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  bad = []
  for target in links(page):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s):, mailto:, ...
      continue
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    if not dest.exists():
      bad.append(f"{target}: no file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
    elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
      bad.append(f"{target}: no heading #{anchor} in {dest.name}")
  assert not bad, f"{page.name}: broken links: {bad}"


# ------------------------------------------------------------------------------ commands

def _commands(page: pathlib.Path):
  """Each shell command of the page's bash blocks, as a token list (comments dropped,
  continuation lines joined, split at ;, && and |)."""
  for block in BASH.findall(page.read_text()):
    for line in block.replace("\\\n", " ").splitlines():
      tokens = shlex.split(line, comments=True)
      cmd = []
      for t in tokens + [";"]:
        if t in (";", "&&", "||", "|", "&"):
          if cmd:
            yield cmd
          cmd = []
        else:
          cmd.append(t)


def _defined_flags(script: pathlib.Path) -> set:
  src = script.read_text()
  names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", src))
  names |= set(re.findall(r"add_argument\(\s*[\"']--(\w+)[\"']", src))
  return names | ABSL_FLAGS


def _load(spec: str):
  """The ConfigDict of a --config=FILE[:ARG] value (FILE relative to the repository)."""
  from mmjax import config_lib  # pylint: disable=import-outside-toplevel
  file, _, arg = spec.partition(":")
  if not arg:
    return config_lib.load_config(str(ROOT / file))
  mod_spec = importlib.util.spec_from_file_location("docs_config", ROOT / file)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  try:
    return module.get_config(arg)
  except Exception:  # pylint: disable=broad-except  (e.g. CheckpointError: no such run)
    # An argument naming a run that does not exist here (configs/finetune.py:WORKDIR returns
    # that checkpoint's saved config): such configs are written from configs/default.py's
    # sections (mmjax.convert starts from it), so its keys are the ones to check against.
    return config_lib.load_config(str(ROOT / "configs/default.py"))


def _has_key(config, key: str) -> bool:
  node = config
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _script(cmd):
  """(script name, the arguments after it) when cmd runs train.py / eval.py / mmjax.convert."""
  for i, t in enumerate(cmd):
    if "python" in pathlib.Path(t).name:
      rest = cmd[i + 1:]
      if rest and pathlib.Path(rest[0]).name in ("train.py", "eval.py"):
        return pathlib.Path(rest[0]).name, rest[1:]
      if rest[:2] == ["-m", "mmjax.convert"]:
        return "mmjax.convert", rest[2:]
      return None
  return None


def _check_python(name, args):
  script = {"train.py": ROOT / "train.py", "eval.py": ROOT / "eval.py",
            "mmjax.convert": ROOT / "mmjax/convert/__main__.py"}[name]
  known = _defined_flags(script)
  errors, overrides, config_spec = [], [], None
  if name == "mmjax.convert":
    subs = set(re.findall(r"add_parser\(\s*[\"'](\w+)[\"']", script.read_text()))
    if not args or args[0] not in subs:
      errors.append(f"python -m mmjax.convert needs a format ({', '.join(sorted(subs))})")
    args = args[1:]
  for a in args:
    if not a.startswith("-"):
      errors.append(f"{name}: unexpected argument {a!r}")
      continue
    flag, _, value = a.lstrip("-").partition("=")
    if name != "mmjax.convert" and flag.startswith("config."):
      overrides.append(flag[len("config."):])
    elif name == "train.py" and flag == "config":
      config_spec = value
    elif flag not in known:
      errors.append(f"{name} has no flag --{flag}")
    elif flag == "eval_config" and not (ROOT / value.partition(":")[0]).is_file():
      errors.append(f"--eval_config names a missing file {value.partition(':')[0]}")
  if name == "train.py" and config_spec is None:
    config_spec = "configs/default.py"  # train.py's default --config
  if config_spec is not None and not (ROOT / config_spec.partition(":")[0]).is_file():
    errors.append(f"--config names a missing file {config_spec}")
    return errors
  if overrides:
    # eval.py overrides the checkpoint's saved config: every shipped and converted config has
    # configs/default.py's sections, so its keys are the ones an override may name.
    config = _load(config_spec or "configs/default.py")
    errors += [f"{name}: no config key {k} in {config_spec or 'configs/default.py'}"
               for k in overrides if not _has_key(config, k)]
  return errors


def _make_targets() -> set:
  text = (ROOT / "Makefile").read_text()
  return set(re.findall(r"^([A-Za-z_][\w.-]*)\s*:(?!=)", text, re.M))


def _check_make(cmd):
  i = cmd.index("make")
  targets = [t for t in cmd[i + 1:] if not t.startswith("-") and "=" not in t]
  known = _make_targets()
  return [f"make: no target {t!r} in the Makefile" for t in targets if t not in known]


def _all_commands():
  for page in PAGES:
    for cmd in _commands(page):
      yield page, cmd


def test_commands_are_found():
  names = {(_script(c) or ("",))[0] for _, c in _all_commands()}
  assert {"train.py", "eval.py", "mmjax.convert"} <= names
  assert any("make" in c for _, c in _all_commands())


def test_checker_catches_mistakes():
  assert _check_python("train.py", ["--config=configs/default.py", "--config.model.widht=1"])
  assert _check_python("train.py", ["--config=configs/nope.py", "--workdir=x"])
  assert _check_python("eval.py", ["--workdir=x", "--evaluator=itm"])
  assert _check_python("mmjax.convert", ["hf", "--src=x", "--output=y"])
  assert _check_make(["make", "tests"])
  assert not _check_python("train.py", ["--config=configs/default.py", "--workdir=x",
                                        "--config.model.width=64"])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_real_flags_keys_and_configs(page):
  errors = []
  for cmd in _commands(page):
    found = _script(cmd)
    if found:
      errors += [f"{' '.join(cmd)}: {e}" for e in _check_python(*found)]
    elif cmd[0] == "make":
      errors += [f"{' '.join(cmd)}: {e}" for e in _check_make(cmd)]
  assert not errors, "\n".join(errors)
