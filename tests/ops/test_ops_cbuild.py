"""The kernel cache: a library is rebuilt when its source or any header it includes changes."""

import shutil

import pytest

from dimbench.ops import cbuild, conv_cpu, scan_cpu

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="no C++ compiler"
)


def test_both_kernels_include_the_shared_header():
    for source in (scan_cpu.SOURCE, conv_cpu.SOURCE):
        names = [p.name for p in cbuild.sources(source)]
        assert names == [source.name, "dimbench_simd.h"], names


@needs_compiler
def test_the_cache_key_covers_every_included_header(tmp_path):
    (tmp_path / "inner.h").write_text("inline int inner() { return 1; }\n")
    (tmp_path / "outer.h").write_text('#include "inner.h"\n')
    source = tmp_path / "kernel.cpp"
    source.write_text('#include <cstdint>\n#include "outer.h"\nint f() { return inner(); }\n')
    cxx = cbuild._compiler()
    assert cbuild.sources(source) == [source, tmp_path / "outer.h", tmp_path / "inner.h"]
    before = cbuild.library_path(source, cxx)
    assert cbuild.library_path(source, cxx) == before
    (tmp_path / "inner.h").write_text("inline int inner() { return 2; }\n")
    assert cbuild.library_path(source, cxx) != before
