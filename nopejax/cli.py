"""What the entry points share: `cli.run(main)` in place of `absl.app.run(main)`.

Every bad input ends in one line on stderr, `error: <the flag, key or path>: <what is wrong>`,
and exit status 1, before anything is compiled and without a traceback:

- flags: unknown (`--no_such_flag`), required but missing, or of the wrong type
  (`error: --steps: expected int, got 'abc'`);
- a config file flag (`config_flags.DEFINE_config_file`): a missing or unreadable file
  (`error: --config: no such file 'configs/missing.py'`), one whose `get_config` fails, an
  override of a key the config does not have (`error: --config.model.no_such_key: no such config
  key (model has: ...)`) or of the wrong type (`error: --config.train.steps: expected int, got
  'abc'`). ml_collections defers a file that fails to load until the config is first used; this
  checks it right after parsing;
- at run time, the library's bad-input errors (ValueError, FileNotFoundError, FileExistsError,
  whose messages name the key or path) and `app.UsageError`.
"""

import difflib
import importlib.machinery
import importlib.util
import os
import re

from absl import app, flags
from ml_collections import config_dict
from ml_collections.config_flags import config_flags

# What the library raises for bad input (its messages name the key or path); other exceptions
# are bugs and keep their traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def one_line(message):
  """`message` with its lines joined by '; ' (a traceback's text never reaches the user)."""
  return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def run(main, prefix="error"):
  """absl.app.run(main) where bad flags, bad configs and USER_ERRORS end in one line:
  `{prefix}: {message}` on stderr, exit status 1."""

  def fail(message):
    raise SystemExit(f"{prefix}: {one_line(message)}")

  def diagnose(argv, otherwise):
    try:
      return config_problem(argv) or otherwise
    except Exception:  # never a traceback in place of the error being reported
      return otherwise

  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
    except Exception as e:  # flags.Error, and what ml_collections raises for bad overrides
      fail(diagnose(argv, _describe(e)))
    for name in _config_flag_names():
      error = _load_error(flags.FLAGS[name].value)
      if error is not None:
        fail(diagnose(argv, f"--{name}: {error}"))
    return rest

  def checked_main(argv):
    try:
      return main(argv)
    except (app.UsageError, *USER_ERRORS) as e:
      fail(e)

  app.run(checked_main, flags_parser=parse)


def config_problem(argv):
  """What is wrong with the config files and overrides of `argv`, or None when nothing is:
  the file of each config flag loads and every `--NAME.a.b=v` names a key the config has."""
  try:
    args = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  except Exception:  # a bad --flagfile: absl's own error says so
    args = list(argv[1:])
  if "--" in args:
    args = args[: args.index("--")]
  for name in _config_flag_names():
    spec = _flag_value(args, name)
    if spec is None:
      continue  # overrides without a file are unknown flags, which absl reports
    cfg, problem = _load(name, spec)
    if problem:
      return problem
    for arg in args:
      m = re.match(rf"--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
      problem = m and _missing_key(name, cfg, m[1])
      if problem:
        return problem
  return None


def _config_flag_names():
  fv = flags.FLAGS
  return [n for n in fv if fv[n].name == n and config_flags.is_config_flag(fv[n])]


def _load_error(value):
  """The OSError of a config file that failed to load: ml_collections keeps it in a stand-in
  config that raises it on first use."""
  try:
    getattr(value, "_nopejax_cli_probe", None)
  except OSError as e:
    return e
  return None


def _flag_value(args, name):
  """The last value given to --name (`--name=v` or `--name v`) in args, else None."""
  value = None
  for i, arg in enumerate(args):
    m = re.fullmatch(rf"--?{re.escape(name)}(=.*)?", arg, re.S)
    if m:
      value = m[1][1:] if m[1] else (args[i + 1] if i + 1 < len(args) else None)
  return value


def _load(name, spec):
  """(the config of `path[:arg]`, None), or (None, what is wrong with it)."""
  path, colon, arg = spec.partition(":")
  if not os.path.exists(path):
    return None, f"--{name}: no such file {path!r}"
  if os.path.isdir(path):
    return None, f"--{name}: {path!r} is a directory, not a config file"
  try:
    loader = importlib.machinery.SourceFileLoader(f"nopejax_cli_{name}", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      return None, f"--{name}: {path!r} defines no get_config()"
    return module.get_config(*([arg] if colon else [])), None
  except OSError as e:
    return None, f"--{name}: cannot read {path!r}: {e.strerror or e}"
  except Exception as e:  # the config file's own error, named with its flag
    kind = "" if isinstance(e, ValueError) else f"{type(e).__name__}: "
    return None, f"--{name}={spec}: {kind}{e}"


def _missing_key(name, cfg, key):
  """What is wrong with the override `--name.key`, when its key is not in `cfg`."""
  if "[" in key:
    return None  # indexing (a['k'], a[0]): ml_collections' own errors say it
  node, parts = cfg, key.split(".")
  for i, part in enumerate(parts):
    where = ".".join(parts[:i])
    if not isinstance(node, (config_dict.ConfigDict, dict)):
      return f"--{name}.{key}: no such config key ({where} = {node!r} holds no keys)"
    if part not in node:
      keys = sorted(node.keys())
      close = difflib.get_close_matches(part, keys, n=1)
      near = f"; did you mean --{name}.{where + '.' if where else ''}{close[0]}?" if close else ""
      return f"--{name}.{key}: no such config key{near} ({where or name} has: {', '.join(keys)})"
    node = node[part]
  return None


def _describe(e):
  """One line for an error absl or ml_collections raised while parsing the flags."""
  message = str(e)
  if isinstance(e, flags.UnrecognizedFlagError):
    near = re.search(r"Did you mean: (.*?) ?\?", message)
    hint = f"; did you mean --{near[1].strip()}?" if near else ""
    for config in _config_flag_names():
      if re.match(rf"(no)?{re.escape(config)}\.", e.flagname):
        hint = f" (an override needs --{config}=FILE)"
    return f"--{e.flagname}: unknown flag{hint}"
  m = re.match(r"flag --(?P<name>[^=\s]+)=(?P<value>.*?): (?P<reason>.*)", message, re.S)
  if isinstance(e, flags.IllegalFlagValueError) and m:
    name, value, reason = m["name"], m["value"], one_line(m["reason"])
    if reason.startswith(f"Flag --{name} must have a value other than None"):
      return f"--{name}: required; give --{name}=..."
    if _wrong_type(name, value):
      return f"--{name}: expected {flags.FLAGS[name].flag_type()}, got {value!r}"
    return f"--{name}: {reason} (got {value!r})"
  if isinstance(e, flags.Error):
    return message
  return f"{type(e).__name__} while parsing the flags: {message}"


def _wrong_type(name, value):
  """Whether --name=value failed for its type (int, float, bool), not for its bounds."""
  if name not in flags.FLAGS:
    return False
  parser = flags.FLAGS[name].parser
  if parser.flag_type() == "bool":
    return True
  if parser.flag_type() not in ("int", "float"):
    return False
  try:
    parser.convert(value)
  except (TypeError, ValueError):
    return True
  return False
