"""Process-wide settings flixrec makes when it is imported (src/flixrec/__init__.py)."""

from __future__ import annotations

import ctypes
import importlib
import sys
from types import SimpleNamespace

import pytest

import flixrec

MMAP, TRIM = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD of <malloc.h>


@pytest.fixture
def libc(monkeypatch):
    """A fake glibc recording mallopt calls; `accept` is what mallopt returns (1: success)."""
    fake = SimpleNamespace(calls=[], accept=1)
    fake.mallopt = lambda param, value: fake.calls.append((param, value)) or fake.accept
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(sys, "platform", "linux")
    for key in [k for k in flixrec._os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key)
    return fake


def test_import_keeps_freed_memory_with_both_malloc_thresholds(libc):
    importlib.reload(flixrec)  # the call at import, not only the function
    assert libc.calls == [(MMAP, 32 << 20), (TRIM, 256 << 20)]


def test_a_refused_mmap_threshold_leaves_glibcs_own_adjustment(libc):
    libc.accept = 0
    flixrec._keep_freed_memory()
    assert libc.calls == [(MMAP, 32 << 20)]


@pytest.mark.parametrize("key, value", [("MALLOC_ARENA_MAX", "2"),
                                        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_the_users_own_malloc_settings_win(libc, monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    flixrec._keep_freed_memory()
    assert libc.calls == []
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # other tunables do not count
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    flixrec._keep_freed_memory()
    assert libc.calls == [(MMAP, 32 << 20), (TRIM, 256 << 20)]


def test_nothing_is_set_off_linux(libc, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    flixrec._keep_freed_memory()
    assert libc.calls == []


@pytest.mark.parametrize("error", [OSError("libc.so.6: cannot open shared object file"),
                                   AttributeError("mallopt")])
def test_without_glibc_the_import_still_works(libc, monkeypatch, error):
    def cdll(name):
        raise error

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    importlib.reload(flixrec)  # musl and others: nothing to set, and no error
