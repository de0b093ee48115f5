"""Media I/O: file round trips, resizing, grids, and one-line errors that name bad files."""

import numpy as np
import pytest

from duogen.data import media
from duogen.errors import ConfigError, DataError


def _moving_square(frames=9, size=32, color=(255, 0, 0)):
    v = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        v[i, 10:22, 2 + 2 * i : 14 + 2 * i] = color
    return v


def test_mp4_round_trip_upscales_small_clips_and_keeps_content(tmp_path):
    v = _moving_square()
    media.write_mp4(tmp_path / "a.mp4", v, fps=8)
    r = media.read_video(tmp_path / "a.mp4")
    assert r.shape == (9, 128, 128, 3) and r.dtype == np.uint8  # 4x nearest upscale of 32x32
    back = media.resize_video(r, 32, 9)
    assert back.shape == v.shape
    # lossy H.264 + yuv420p chroma subsampling: mean error stays small
    assert np.abs(back.astype(int) - v.astype(int)).mean() < 4.0
    # the object is where it was drawn in every frame
    for i in range(9):
        assert back[i, 16, 8 + 2 * i, 0] > 200
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    v = np.full((3, 131, 129, 3), 100, np.uint8)
    media.write_mp4(tmp_path / "odd.mp4", v, fps=4, upscale=1)
    r = media.read_video(tmp_path / "odd.mp4")
    assert r.shape == (3, 132, 130, 3)


def test_gif_round_trip(tmp_path):
    v = _moving_square()
    media.write_gif(tmp_path / "a.gif", v, fps=8, upscale=1)
    r = media.read_video(tmp_path / "a.gif")
    assert r.shape == v.shape
    assert np.abs(r.astype(int) - v.astype(int)).max() <= 8  # palette quantization only


def test_wav_round_trip_and_resampling(tmp_path):
    t = np.arange(16000) / 16000
    a = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    media.write_wav(tmp_path / "a.wav", a, 16000)
    x, sr = media.read_audio(tmp_path / "a.wav")
    assert sr == 16000 and x.dtype == np.float32
    assert np.abs(x - a).max() < 1 / 32767 + 1e-6  # 16-bit quantization
    y, sr2 = media.read_audio(tmp_path / "a.wav", sample_rate=8000)
    assert sr2 == 8000 and y.shape == (8000,)
    # a 440 Hz tone stays a 440 Hz tone after resampling
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) * 8000 / len(y) - 440) < 2


def test_image_round_trip_and_alpha(tmp_path):
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    media.write_image(tmp_path / "a.png", img)
    assert np.array_equal(media.read_image(tmp_path / "a.png"), img)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[:2, :, 3] = 255  # top half opaque green, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = media.read_image(tmp_path / "alpha.png")
    assert out[0, 0].tolist() == [0, 255, 0] and out[3, 0].tolist() == [0, 0, 0]


def test_resize_video_trims_loops_and_antialiases():
    v = np.zeros((5, 64, 64, 3), np.uint8)
    v[:, ::2] = 255  # one-pixel stripes: alias to solid rows without antialiasing
    v[:, :, :, 2] = np.arange(5)[:, None, None]  # frame index in the blue channel
    r = media.resize_video(v, 16, 12)
    assert r.shape == (12, 16, 16, 3)
    assert r[:, :, :, 2].mean(axis=(1, 2)).round().tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert 100 < r[0, 4:12, 4:12, 0].mean() < 155  # stripes average to grey
    assert media.resize_video(v, 16, 3).shape[0] == 3
    wide = np.zeros((2, 40, 80, 3), np.uint8)
    wide[:, :, 20:60] = 255  # the centre square survives a centre crop
    assert media.resize_video(wide, 20)[0].min() == 255


def test_video_grid_layout():
    a, b = _moving_square(9), _moving_square(5, color=(0, 0, 255))
    g = media.video_grid([a, b, a], ["one", "two words", "three"], cols=2, scale=2, pad=4)
    assert g.shape[0] == 9 and g.shape[-1] == 3
    assert g.shape[2] == 2 * (64 + 4) + 4
    assert g[0, 4 + 20 * 2, 4 + 6 * 2].tolist() == [255, 0, 0]  # first clip, inside the square
    with pytest.raises(DataError, match="captions"):
        media.video_grid([a], ["x", "y"])


def test_corrupt_files_name_themselves(tmp_path):
    for name, reader in [("bad.mp4", media.read_video), ("bad.png", media.read_image), ("bad.wav", media.read_audio)]:
        p = tmp_path / name
        p.write_bytes(b"not a media file " * 50)
        with pytest.raises(DataError) as e:
            reader(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="not found"):
        media.read_video(tmp_path / "missing.mp4")
    with pytest.raises(DataError, match="unsupported"):
        media.media_kind("x.txt")
    with pytest.raises(ConfigError, match="tiny"):
        media.clip_preset("huge")


def test_dataset_grid_gif(tmp_path):
    import datasets

    v = _moving_square()
    feats = datasets.Features({"video": datasets.Array4D((9, 32, 32, 3), "uint8"), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"video": [v, v[::-1]], "caption": ["a red square moves right", "a red square moves left"]}, features=feats)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "d"))
    s = media.dataset_grid_gif(tmp_path / "d", tmp_path / "grid.gif", n=5)
    assert s["clips"] == 2 and s["frames"] == 9
    g = media.read_video(tmp_path / "grid.gif")
    assert g.shape[0] == 9 and list(g.shape[1:3]) == s["size"][::-1]
    with pytest.raises(DataError, match="split"):
        media.dataset_grid_gif(tmp_path / "d", tmp_path / "g2.gif", split="nope")
