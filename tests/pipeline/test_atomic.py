"""The one atomic-write helper: no partial file, no symlink followed (a planted link is replaced)."""

from __future__ import annotations

import os

import pytest

from pipeline.atomic import copy_atomic, write_atomic, write_with


def test_write_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out.glb"
    path.write_bytes(b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.glb"]


def test_planted_symlinks_at_the_target_and_at_part_names_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "x.glb").symlink_to(victim)
    (out / "x.glb.part").symlink_to(victim)  # the old fixed temp name: no longer used at all
    copy_atomic(victim, out / "x.glb")  # any content will do
    write_atomic(out / "x.glb", b"result")
    assert victim.read_text() == "keep me"
    assert not (out / "x.glb").is_symlink() and (out / "x.glb").read_bytes() == b"result"


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fill(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_with(path, fill)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_a_folder_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "link" / "x.bin", b"x")
