"""Test fixtures: where the shared assets are, and skips when they are not.

With CGN_REQUIRE_ALL=1 (what CI sets, see .ci/run) every skip is a failure,
whatever raised it (the torch/shared markers, the shared_dir and mnist_dir
fixtures, a module-level `importorskip`), except those named in
`ALLOWED_SKIPS`: platform checks that do not apply to the machine. CI has
torch and ../shared, so a skip there means a test did not run.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

import pytest

from cgn_jax import paths

REQUIRE_ALL_ENV = "CGN_REQUIRE_ALL"
# Skips that stay skips under CGN_REQUIRE_ALL=1: (test file, reason).
ALLOWED_SKIPS = (
    # The XLA:CPU flag is set only on jaxlib versions it is verified on.
    ("tests/test_platform.py",
     "a jaxlib the flag is not verified on"),
    # glibc's malloc tuning does not exist elsewhere (macOS, musl).
    ("tests/test_platform.py", "not Linux with glibc"),
)


def _require_all() -> bool:
  return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0")


def _skip_reason(report) -> str:
  longrepr = report.longrepr
  if isinstance(longrepr, tuple) and len(longrepr) == 3:
    return str(longrepr[2]).removeprefix("Skipped: ")
  return str(longrepr)


def _allowed(nodeid: str, reason: str) -> bool:
  path = nodeid.split("::")[0]
  return any(path.endswith(p.removeprefix("tests/")) and reason == r
             for p, r in ALLOWED_SKIPS)


def _fail_skip(report) -> None:
  """Turns a skip report into a failure under CGN_REQUIRE_ALL=1."""
  if not (_require_all() and report.skipped
          and not hasattr(report, "wasxfail")):
    return
  reason = _skip_reason(report)
  if _allowed(report.nodeid, reason):
    return
  report.outcome = "failed"
  report.longrepr = (f"{REQUIRE_ALL_ENV}=1: skipped ({reason}); every test "
                     "must run here (install torch, set CGN_SHARED_DIR / "
                     "CGN_MNIST_DIR), or add the skip to ALLOWED_SKIPS in "
                     "tests/conftest.py if it legitimately does not apply")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  del item, call
  outcome = yield
  _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  del collector
  outcome = yield
  _fail_skip(outcome.get_result())


def pytest_configure(config):
  """Builds TFDS datasets in a private folder unless CGN_TFDS_DIR is set.

  A stale build in the user's ~/tensorflow_datasets must not decide a test,
  and tests must not write there.
  """
  del config
  # The test process is an entry point like train.py: it takes the same
  # explicit CPU tuning (importing cgn_jax no longer does), so tests run the
  # code paths and speed users get. Subprocess checks of the import-time
  # behaviour start from a clean environment of their own.
  from cgn_jax import platform  # pylint: disable=g-import-not-at-top
  platform.apply_cpu_defaults()
  if "CGN_TFDS_DIR" not in os.environ:
    d = tempfile.mkdtemp(prefix="cgn_tfds_")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    os.environ["CGN_TFDS_DIR"] = d


def pytest_collection_modifyitems(config, items):
  del config
  no_torch = importlib.util.find_spec("torch") is None
  no_shared = not paths.shared_dir().is_dir()
  for item in items:
    if no_torch and "torch" in item.keywords:
      item.add_marker(pytest.mark.skip(
          reason="needs torch: pip install -e '.[test]'"))
    if no_shared and "shared" in item.keywords:
      item.add_marker(pytest.mark.skip(
          reason=f"needs the shared assets at {paths.shared_dir()}; "
          "set CGN_SHARED_DIR"))


@pytest.fixture(scope="session")
def shared_dir():
  d = paths.shared_dir()
  if not d.is_dir():
    pytest.skip(f"shared assets not found at {d}; set CGN_SHARED_DIR")
  return d


@pytest.fixture(scope="session")
def mnist_dir():
  """The real MNIST IDX folder (CGN_MNIST_DIR, else the shared copy)."""
  d = paths.mnist_dir() or paths.shared_dir() / "data" / "mnist"
  if not (d / "train-images-idx3-ubyte.gz").is_file():
    pytest.skip(f"MNIST IDX files not found in {d}; set CGN_MNIST_DIR")
  os.environ.setdefault("CGN_MNIST_DIR", str(d))
  return d


@pytest.fixture(scope="session")
def tfds_dir(mnist_dir):
  """The session's TFDS data dir with cgn_mnist prepared (once per session)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import mnist  # pylint: disable=g-import-not-at-top
  d = pathlib.Path(os.environ["CGN_TFDS_DIR"])
  mnist.prepare(d, mnist_dir)
  return d


@pytest.fixture(scope="module")
def fast_compile():
  """Turns off most XLA optimisations for one test module.

  On CPU, XLA's optimisation passes dominate the compile time of these
  checks, and float32 results stay within every tolerance used here.
  Modules opt in with `pytestmark = pytest.mark.usefixtures('fast_compile')`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  flag = "jax_disable_most_optimizations"
  old = jax.config.read(flag)
  jax.config.update(flag, True)
  yield
  jax.config.update(flag, old)


@pytest.fixture(scope="session")
def formula_weights(shared_dir):
  """`formula_weights(shapes, seed)` of ../shared/reference (the goldens').

  The goldens' models carry weights rebuilt from a seed over a state dict's
  (name, shape) list; the module lives with them, so it is loaded by path.
  """
  spec = importlib.util.spec_from_file_location(
      "formula_weights", shared_dir / "reference" / "formula_weights.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.formula_weights


@pytest.fixture(scope="session")
def vgg16_formula_variables(formula_weights):
  """VGG16 {'params'} with the goldens' formula weights (seed 1602).

  Over torchvision's `vgg16().features` state-dict order, converted by the
  project's converter (numpy arrays; no torch needed).
  """
  # pylint: disable=g-import-not-at-top
  from cgn_jax.models import vgg16 as vgg16_lib
  from converters import vgg16 as vgg16_convert
  abstract = vgg16_convert.abstract_variables()["params"]
  shapes = []
  for idx in vgg16_lib.CONV_INDICES:
    kh, kw, i, o = abstract[f"features_{idx}"]["kernel"].shape
    shapes += [(f"features.{idx}.weight", (o, i, kh, kw)),
               (f"features.{idx}.bias", (o,))]
  return vgg16_convert.convert(formula_weights(shapes, 1602))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent XLA cache for one module: its runs share executables.

  Separate runs (single vs many models, resume after a restart) compile the
  same programs; the cache makes the second compile a lookup.
  """
  import jax  # pylint: disable=g-import-not-at-top
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.mktemp("xla")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def model_and_variables():
  """A narrow MNIST CGN (ngf 8: the same code paths, cheaper) and variables
  with non-trivial BatchNorm running statistics, so folding is exercised."""
  from cgn_jax.models import cgn as cgn_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  model = cgn_lib.CGN(ngf=8)
  variables = jax.jit(lambda k: cgn_lib.init_variables(model, k))(
      jax.random.PRNGKey(0))
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
  variables["batch_stats"] = jax.tree.map(
      lambda a: a + 2 * jax.random.uniform(next(keys), a.shape),
      variables["batch_stats"])
  return model, variables
