"""Command lines fail with one clear line (cgn_jax/cli.py), --verbose aside."""

import os
import pathlib
import subprocess
import sys

import pytest

from cgn_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*argv, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  env.pop("CGN_JAX_VERBOSE", None)
  return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)


def _error_lines(proc, prog):
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith(prog)]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(f"{prog}: error: ")
  assert lines[0].endswith("(--verbose for the traceback)")
  return lines[0]


def test_train_bad_override_is_one_line(tmp_path):
  proc = _run("train.py", "--config=configs/cgn_colored_mnist.py:smoke",
              f"--workdir={tmp_path}", "--config.bogus=1")
  assert "bogus" in _error_lines(proc, "train.py")
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.shared
def test_train_missing_checkpoint_is_one_line_and_verbose_shows_it(
    tmp_path, mnist_dir):
  env = {"CGN_MNIST_DIR": str(mnist_dir)}  # the data exist: the CGN does not
  missing = tmp_path / "no_cgn_here"
  argv = ("train.py", "--config=configs/cgn_colored_mnist.py:smoke",
          f"--workdir={tmp_path / 'w'}", "--config.perceptual.vgg16=none",
          f"--config.init_from={missing}")
  proc = _run(*argv, env=env)
  line = _error_lines(proc, "train.py")
  assert str(missing) in line and "python -m converters cgn-mnist" in line
  verbose = _run(*argv, "--verbose", env=env)
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_generate_missing_cgn_is_one_line(tmp_path):
  proc = _run("generate.py", "--config=configs/counterfactuals_mnist.py:"
              "wildlife,smoke", f"--workdir={tmp_path}",
              f"--config.cgn={tmp_path / 'nope'}", "--no-cpu-defaults")
  line = _error_lines(proc, "generate.py")
  assert "nope do not exist" in line and "python -m converters" in line


def test_classifier_missing_data_is_one_line(tmp_path):
  proc = _run("train.py", "--config=configs/classifier_mnist.py:wildlife",
              f"--workdir={tmp_path / 'w'}",
              f"--config.counterfactuals={tmp_path / 'no_data'}")
  line = _error_lines(proc, "train.py")
  assert "no_data" in line and "generate.py" in line


def test_run_main_in_process(capsys):
  def boom(argv):
    raise FileNotFoundError(f"data {argv} missing;\n  download it")
  with pytest.raises(SystemExit) as e:
    cli.run_main(boom, ["x"], prog="prog", cpu_defaults=False)
  assert e.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err == ("prog: error: data ['x'] missing;; download it "
                 "(--verbose for the traceback)")
  with pytest.raises(FileNotFoundError):
    cli.run_main(boom, ["x", "--verbose"], prog="prog", cpu_defaults=False)
  assert cli.run_main(lambda argv: None, [], cpu_defaults=False) == 0


def test_pop_switches():
  assert cli.pop_switches(["a", "--verbose", "--no-cpu-defaults"]) == (
      ["a"], True, False)
  assert cli.pop_switches(["a"])[1:] == (False, True)
