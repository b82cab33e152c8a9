"""Atomic writes: a reader sees the old file or the new one, never a half-written one."""

import hashlib
import subprocess
import sys

import pytest

from gptscratch.io import atomic_path, file_sha256, write_json


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "config.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_file_sha256_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 70_000  # more than one 16 MiB block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_prepare_and_its_workers_never_import_torch():
    code = "import sys, gptscratch.data.prepare, gptscratch.io, gptscratch.testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
