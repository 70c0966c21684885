"""Video data: frame-folder and video-file clips, temporal sampling with stride, one random draw per clip, the
unreadable-input policy, and the generated sample clips."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mimkit.data import AugmentedDataset, collate_items, pretrain_transform
from mimkit.data.video import ClipFolder, ClipTransform, SampleClips, clip_indices, read_video
from mimkit.errors import MimkitError


def _write_frames(folder, count, size=24):
    """Frames whose every pixel holds the frame number (times 10), so a sampled frame tells its index."""
    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(np.full((size, size, 3), 10 * k, dtype=np.uint8)).save(folder / f"frame_{k:03d}.png")


def _frame_numbers(clip):
    """The frame index each ``(C, T, H, W)`` frame shows (inverse of :func:`_write_frames` after ToTensor)."""
    return [round(v) for v in (clip[0, :, 0, 0] * 255 / 10).tolist()]


def test_frame_folders_are_clips_labelled_by_their_class_folder(tmp_path):
    _write_frames(tmp_path / "walk" / "clip_a", 10)
    _write_frames(tmp_path / "walk" / "clip_b", 10)
    _write_frames(tmp_path / "run" / "clip_c", 10)
    source = ClipFolder(tmp_path)
    assert len(source) == 3
    assert source.class_names == ["run", "walk"]
    assert source.labels == [0, 1, 1]
    assert len(source.load(0)) == 10


def test_temporal_sampling_takes_frames_stride_apart(tmp_path):
    _write_frames(tmp_path / "clip", 20)
    frames = ClipFolder(tmp_path).load(0)
    centred = ClipTransform(T.ToTensor(), num_frames=4, stride=3, random_start=False)(frames)
    assert centred.shape == (3, 4, 24, 24)
    assert _frame_numbers(centred) == [5, 8, 11, 14]  # span 10 of 20 frames, centred: start (20 - 10) // 2
    starts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        numbers = _frame_numbers(ClipTransform(T.ToTensor(), 4, 3, random_start=True)(frames))
        assert numbers == [numbers[0] + 3 * k for k in range(4)]
        starts.add(numbers[0])
    assert starts <= set(range(11)) and len(starts) > 3


def test_short_clips_repeat_their_last_frame():
    assert clip_indices(5, num_frames=4, stride=2, random_start=True) == [0, 2, 4, 4]
    assert clip_indices(5, num_frames=4, stride=2, random_start=False) == [0, 2, 4, 4]


def test_one_crop_and_flip_serve_every_frame_of_a_clip():
    source = SampleClips(clips_per_photo=1, length=8, size=96)
    frames = source.load(0)
    still = type(frames)(frames.photo, frames.start, frames.start, frames.length, frames.size)  # a camera at rest
    transform = ClipTransform(pretrain_transform(32, 3, [0.5] * 3, [0.25] * 3), 8, 1, random_start=True)
    for seed in range(4):
        torch.manual_seed(seed)
        clip = transform(still)
        assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(8))
    torch.manual_seed(0)
    first = transform(still)
    torch.manual_seed(1)
    assert not torch.equal(first, transform(still))


def test_sample_clips_move_and_are_seeded():
    clips = SampleClips()
    assert len(clips) == 72
    frames = clips.load(5)
    a, b = np.asarray(frames.load(0)), np.asarray(frames.load(len(frames) - 1))
    assert a.shape[:2] == (128, 128) and not np.array_equal(a, b)
    assert np.array_equal(np.asarray(SampleClips().load(5).load(3)), np.asarray(frames.load(3)))
    assert clips.name_of(5) == "sample clip 5 (skimage.data.clock)"


def test_an_unreadable_frame_skips_its_clip_and_is_counted(tmp_path):
    _write_frames(tmp_path / "good", 8)
    _write_frames(tmp_path / "broken", 8)
    (tmp_path / "broken" / "frame_004.png").write_bytes(b"not a png")  # sampled: frames 0, 2, 4, 6
    source = ClipFolder(tmp_path)
    dataset = AugmentedDataset(source, ClipTransform(T.ToTensor(), 4, 2, random_start=False))
    broken = source.clips.index(tmp_path / "broken")
    item = dataset[(0, broken)]
    assert item["skipped"] == 1 and item["index"] != broken
    batch = collate_items([dataset[(0, 0)], dataset[(0, 1)]])
    assert batch["image"].shape == (2, 3, 4, 24, 24) and batch["skipped"] == 1


def test_an_empty_clip_folder_says_what_it_expects(tmp_path):
    (tmp_path / "notes.txt").write_text("no clips here")
    with pytest.raises(MimkitError, match="no clips found.*video files"):
        ClipFolder(tmp_path)


def test_video_files_need_the_video_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MimkitError, match=r"pip install mimkit\[video\]"):
        read_video(tmp_path / "clip.mp4")


def test_video_files_decode_with_pyav_and_broken_ones_are_skipped(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "videos" / "moving.mp4"
    path.parent.mkdir()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(12):
            image = np.zeros((32, 32, 3), dtype=np.uint8)
            image[:, 2 * k : 2 * k + 8] = 255  # a bright bar moving right
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00" * 256)
    source = ClipFolder(tmp_path / "videos")
    assert [p.name for p in source.clips] == ["broken.mp4", "moving.mp4"]
    frames = source.load(1)
    assert len(frames) == 12
    clip = ClipTransform(T.ToTensor(), 4, 3, random_start=False)(frames)
    bar_column = clip[0].mean(dim=1).argmax(dim=-1)  # (T, W) -> brightest column per frame
    assert (bar_column[1:] > bar_column[:-1]).all()
    with pytest.raises(OSError, match="broken.mp4"):
        source.load(0)
    item = AugmentedDataset(source, ClipTransform(T.ToTensor(), 4, 3, random_start=False))[(0, 0)]
    assert item["skipped"] == 1 and item["index"] == 1
