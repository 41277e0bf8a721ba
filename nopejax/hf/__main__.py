"""The command line: `python -m nopejax.hf import|export ...` (see the `nopejax.hf` docstring)."""

from absl import flags

from nopejax import cli, hf
from nopejax.model import spec as spec_lib


def _define_flags():
  flags.DEFINE_string("hf_dir", None, "import: the Hugging Face model directory to read")
  flags.DEFINE_string(
    "workdir", None, "import: where params/ and model_config.json go; export: the workdir to read"
  )
  flags.DEFINE_string("out", None, "export: the Hugging Face directory to write")
  flags.DEFINE_enum(
    "dtype", "float32", list(spec_lib.DTYPES), "import: model.param_dtype of the imported params"
  )
  flags.DEFINE_bool("force", False, "import: overwrite an existing WORKDIR/params")


def main(argv):
  verbs = argv[1:]
  if len(verbs) != 1 or verbs[0] not in ("import", "export"):
    raise SystemExit(f"nopejax.hf: expected one verb, import or export; got {' '.join(verbs)!r}")
  verb, f = verbs[0], flags.FLAGS
  needed = ("hf_dir", "workdir") if verb == "import" else ("workdir", "out")
  missing = [f"--{name}" for name in needed if not f[name].value]
  if missing:
    raise SystemExit(f"nopejax.hf {verb}: missing {', '.join(missing)}")
  try:
    if verb == "import":
      model_cfg = hf.import_to_workdir(f.hf_dir, f.workdir, dtype=f.dtype, force=f.force)
      print(f"imported {f.hf_dir} -> {f.workdir} (positions={model_cfg.positions})")
    else:
      hf.export_from_workdir(f.workdir, f.out)
      print(f"exported {f.workdir} -> {f.out}")
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    raise SystemExit(f"nopejax.hf {verb}: {e}") from None


if __name__ == "__main__":
  _define_flags()
  cli.run(main, prefix="nopejax.hf")
