"""XLA:CPU defaults (cgn_jax/platform.py)."""

import os

from cgn_jax import platform

FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def test_flags_are_in_effect_for_this_process():
  # cgn_jax is imported before any backend exists (conftest, collection).
  if platform.applicable():
    assert FLAG in os.environ["XLA_FLAGS"]
  assert platform.apply_cpu_defaults(dict(os.environ)) == []


def test_appends_to_existing_flags_once(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  added = platform.apply_cpu_defaults(env)
  assert added and env["XLA_FLAGS"].startswith(
      "--xla_force_host_platform_device_count=2 " + FLAG)
  assert platform.apply_cpu_defaults(env) == []  # idempotent


def test_user_setting_wins(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"XLA_FLAGS": FLAG + "-dot"}
  assert platform.apply_cpu_defaults(env) == []
  assert env["XLA_FLAGS"] == FLAG + "-dot"


def test_opt_out_and_unverified_jaxlib_add_nothing(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"CGN_JAX_XLA_CPU_DEFAULTS": "0"}
  assert platform.apply_cpu_defaults(env) == [] and "XLA_FLAGS" not in env
  # XLA aborts on flags it does not know: only verified versions get them.
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 9))
  env = {}
  assert platform.apply_cpu_defaults(env) == [] and "XLA_FLAGS" not in env
