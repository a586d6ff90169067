"""Benchmark selection by name or group."""

import pytest

from benchmarks import harness

_NAMES = ("a/x", "a/x/scan", "a/y", "b/x")
_ALL = [harness.Benchmark(n, setup=lambda: None, batch=1) for n in _NAMES]


def _names(patterns):
  return [b.name for b in harness.select(_ALL, patterns)]


def test_full_name_selects_only_that_benchmark():
  assert _names(["a/x"]) == ["a/x"]
  assert _names(["a/x/scan"]) == ["a/x/scan"]


def test_group_selects_its_members():
  assert _names(["a"]) == ["a/x", "a/x/scan", "a/y"]
  assert _names(["a/", "b"]) == ["a/x", "a/x/scan", "a/y", "b/x"]
  assert _names([]) == list(_NAMES)


def test_no_match_says_so():
  with pytest.raises(ValueError, match="no benchmark matches"):
    harness.select(_ALL, ["c"])
