"""Issue 7: hostile input for the YAML topology and workload loaders and the lspci parser.

Every input either loads or raises :class:`~phyrlab.errors.InputFileError` naming the file;
never another exception, never a hang. Inputs: hypothesis text, truncated and mutated real
files (data/topologies, data/workloads, tests/data/lspci). YAML is safe-loaded only.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phyrlab import reliability as rel
from phyrlab.errors import InputFileError

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
FILES = rel.seed_files()
KINDS = list(FILES)


def test_seed_files_exist_and_load(tmp_path):
    assert all(FILES[k] for k in KINDS), FILES
    for kind, files in FILES.items():
        for f in files:
            assert rel.check_hostile(kind, f.read_bytes(), tmp_path / "x") == "loaded", f


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(text=st.text(max_size=400))
def test_random_text(kind, text, tmp_path):
    rel.check_hostile(kind, text.encode("utf-8", "surrogatepass"), tmp_path / "h.yaml")


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_truncated_and_mutated_real_files(kind, data, tmp_path):
    src = data.draw(st.sampled_from(FILES[kind])).read_bytes()
    cut = data.draw(st.integers(0, len(src)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    blob = src[:cut] if data.draw(st.booleans()) else src
    rng = np.random.default_rng(seed)
    for _ in range(data.draw(st.integers(0, 4))):
        blob = rel.mutate(rng, blob)
    rel.check_hostile(kind, blob, tmp_path / "h.yaml")


@pytest.mark.parametrize("kind", ["topology", "workload"])
def test_yaml_is_safe_loaded(kind, tmp_path):
    """A python/object tag is refused as bad YAML, never constructed."""
    blob = b"name: !!python/object/apply:os.system ['echo pwned']\n"
    assert rel.check_hostile(kind, blob, tmp_path / "h.yaml") == "refused"


def test_non_utf8_workload_is_refused_naming_the_file(tmp_path):
    """Regression: workloads.load raised UnicodeDecodeError on non-UTF-8 bytes."""
    p = tmp_path / "bad.yaml"
    with pytest.raises(InputFileError, match="bad.yaml"):
        rel.load_input("workload", b"name: \xff\xfe\n", p)


def test_mixed_type_keys_are_refused_naming_the_file(tmp_path):
    """Regression: unknown keys 1 and 'x' made sorted() raise TypeError."""
    p = tmp_path / "bad.yaml"
    with pytest.raises(InputFileError, match="unknown key"):
        rel.load_input("workload", b"1: a\nx: b\nname: n\n", p)


def test_the_checker_fails_on_a_foreign_exception(tmp_path, monkeypatch):
    from phyrlab import workloads

    monkeypatch.setattr(workloads, "load", lambda p: {}["boom"])
    with pytest.raises(rel.InvariantError, match="KeyError"):
        rel.check_hostile("workload", b"name: x\n", tmp_path / "h.yaml")


def test_huge_inputs_are_bounded(tmp_path):
    big = b"- " * 600_000
    assert rel.check_hostile("topology", big, tmp_path / "h.yaml") == "refused"
    assert rel.check_hostile("lspci", b"-[0000:00]-+-00.0\n" * 30_000,
                             tmp_path / "h.txt") == "refused"
