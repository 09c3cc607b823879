"""Label assembly in each regime the method needs, and the errors for malformed assemblies."""

import numpy as np
import pytest

from dassemble_jax.classification import labels


def _digits(classes):
  return {int(c): c for c in classes}


def test_non_overlapping_odd_even():
  space = [str(d) for d in (1, 3, 5, 7, 9, 0, 2, 4, 6, 8)]
  odd, even = ("1", "3", "5", "7", "9"), ("0", "2", "4", "6", "8")
  srcs = [labels.Source("D0", odd, _digits(odd)), labels.Source("D1", even, _digits(even))]
  a = labels.assemble(space, srcs, [np.array([3, 9]), np.array([0])])
  # A "3" of D0: positive for 3, negative for the other odd digits, unknown for the even ones.
  np.testing.assert_array_equal(a.targets[0], [0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(a.known[0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(a.targets[2], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(a.known[2], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(a.source, [0, 0, 1])


def test_overlapping_sources_share_classes():
  space = [str(d) for d in range(1, 8)]
  c0, c1 = tuple("12345"), tuple("34567")
  srcs = [labels.Source("D0", c0, _digits(c0)), labels.Source("D1", c1, _digits(c1))]
  a = labels.assemble(space, srcs, [np.array([4]), np.array([4, 7])])
  np.testing.assert_array_equal(a.known[0], [1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(a.known[1], [0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(a.targets[0], [0, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(a.targets[1], [0, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(a.targets[2], [0, 0, 0, 0, 0, 0, 1])


def test_one_class_of_interest_source():
  # MNIST-zero: only "0" is annotated; every other digit is a known negative for "0".
  src = labels.Source("MNIST-zero", ("0",), {0: "0"})
  a = labels.assemble(["0"], [src], [np.array([0, 3, 6])])
  np.testing.assert_array_equal(a.targets[:, 0], [1, 0, 0])
  np.testing.assert_array_equal(a.known[:, 0], [1, 1, 1])


def test_fully_labelled():
  a = labels.fully_labelled(list("012"), np.array([2, 0, 5]), {0: "0", 1: "1", 2: "2"})
  np.testing.assert_array_equal(a.targets, [[0, 0, 1], [1, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(a.known, np.ones((3, 3)))


def test_exclusive_option_implies_negatives_of_other_sources():
  space = ["a", "b", "c"]
  srcs = [labels.Source("S0", ("a", "b"), {0: "a", 1: "b"}), labels.Source("S1", ("c",), {2: "c"})]
  local = [np.array([0, 9]), np.array([2])]
  default = labels.assemble(space, srcs, local)
  exclusive = labels.assemble(space, srcs, local, exclusive=True)
  np.testing.assert_array_equal(default.known, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
  # A known "a" cannot be "c"; an example that is none of S0's classes might still be "c".
  np.testing.assert_array_equal(exclusive.known, [[1, 1, 1], [1, 1, 0], [1, 1, 1]])
  np.testing.assert_array_equal(exclusive.targets, default.targets)


@pytest.mark.parametrize("space,sources,message", [
    (["a", "b", "a"], [labels.Source("S", ("a", "b"), {})], "duplicate class names"),
    (["a", "b"], [labels.Source("S", ("a", "z"), {})], "not in the label space"),
    (["a", "b"], [labels.Source("S", ("a",), {})], "annotated by no source"),
    (["a"], [labels.Source("S", ("a",), {}), labels.Source("S", ("a",), {})],
     "duplicate source names"),
    (["a", "b"], [labels.Source("S", ("a",), {0: "b"}), labels.Source("T", ("b",), {})],
     "does not annotate"),
])
def test_malformed_assemblies_raise(space, sources, message):
  with pytest.raises(labels.LabelSpaceError, match=message):
    labels.validate(space, sources)
