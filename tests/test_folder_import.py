"""`duogen data import`: a folder of real files round-trips; bad files are named or skipped; nothing is lost."""

import json

import numpy as np
import pytest

from duogen.cli import main
from duogen.data import media
from duogen.data.folder import import_folder
from duogen.errors import DataError


def _clip(color, frames=12, size=48):
    v = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        v[i, 14:34, 2 + 2 * i : 22 + 2 * i] = color  # a square moving right
    return v


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "mine"
    (d / "clips").mkdir(parents=True)
    media.write_mp4(d / "clips" / "red.mp4", _clip((255, 0, 0)), fps=8, upscale=1)
    media.write_mp4(d / "clips" / "green.mp4", _clip((0, 255, 0), frames=5), fps=8, upscale=1)  # shorter than 9: looped
    media.write_mp4(d / "clips" / "blue.mp4", _clip((0, 0, 255), frames=20), fps=8, upscale=1)  # longer: trimmed
    img = np.zeros((60, 80, 3), np.uint8)
    img[10:50, 30:50] = (255, 255, 0)
    media.write_image(d / "photo.png", img)
    t = np.arange(8000) / 8000
    media.write_wav(d / "tone.wav", 0.5 * np.sin(2 * np.pi * 300 * t), 8000)  # 8 kHz: resampled to 16 kHz
    lines = [
        {"file_name": "clips/red.mp4", "caption": "a red square moves right"},
        {"file_name": "clips/green.mp4", "caption": "a green square moves right"},
        {"file_name": "clips/blue.mp4", "caption": "a blue square moves right"},
        {"file_name": "photo.png", "caption": "a yellow bar"},
        {"file_name": "tone.wav", "caption": "a low hum"},
    ]
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return d


def _rows(out):
    from duogen.data import load_dataset

    dd = load_dataset(out)
    assert set(dd.keys()) == {"train", "validation"}
    rows = {}
    for split in dd.values():
        assert split.features["video"].dtype == "uint8"
        for r in split.with_format("numpy"):
            r["video"] = r["video"].astype(np.uint8)  # `datasets` numpy formatting widens uint8 to int64
            rows[str(r["source"])] = r
    return rows


def test_round_trip_of_real_files(folder, tmp_path):
    s = import_folder(folder, tmp_path / "out", preset="tiny")
    assert (s["originals"], s["written"], s["skipped"]) == (5, 5, 0)
    assert (s["videos"], s["images"], s["audio_files"]) == (3, 1, 1)
    assert "still clips" in s["note"] and s["splits"]["validation"] >= 1
    rows = _rows(tmp_path / "out")
    for name, channel in [("clips/red.mp4", 0), ("clips/green.mp4", 1), ("clips/blue.mp4", 2)]:
        v = rows[name]["video"]
        assert v.shape == (9, 32, 32, 3) and v.dtype == np.uint8
        # the object's colour survives H.264 + resizing, and it moves right
        assert v[:, :, :, channel].max() > 200
        xs = [np.nonzero(f[:, :, channel] > 128)[1].mean() for f in v]
        assert xs[3] > xs[0]
    green = rows["clips/green.mp4"]["video"]
    assert np.abs(green[5].astype(int) - green[0].astype(int)).mean() < 3  # 5 frames looped: frame 5 == frame 0
    still = rows["photo.png"]["video"]
    assert all(np.array_equal(still[0], f) for f in still)
    assert still[0, 16, 16, 0] > 200 and still[0, 16, 16, 2] < 60  # yellow centre survived the centre crop
    assert rows["photo.png"]["caption"] == "a yellow bar"
    audio = rows["tone.wav"]["audio"]
    assert abs(len(audio) - 16000) <= 2  # one second at 16 kHz
    assert abs(np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio) - 300) < 3
    assert len(rows["clips/red.mp4"]["audio"]) == 0 and rows["tone.wav"]["video"].max() == 0


def test_corrupt_file_one_line_error_naming_it_and_skip_bad(folder, tmp_path, capsys):
    (folder / "clips" / "broken.mp4").write_bytes(b"\x00\x01 definitely not h264 " * 40)
    with open(folder / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "clips/broken.mp4", "caption": "broken"}) + "\n")
    out = tmp_path / "out"
    assert main(["data", "import", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.mp4" in err and err.startswith("duogen: error:")
    assert not out.exists()
    assert main(["data", "import", str(folder), "--out", str(out), "--skip-bad", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["originals"], summary["written"], summary["skipped"]) == (6, 5, 1)
    assert summary["skipped_files"][0]["file"] == "clips/broken.mp4"


def test_existing_output_is_never_lost(folder, tmp_path, capsys):
    out = tmp_path / "out"
    import_folder(folder, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # refused without --overwrite
    assert main(["data", "import", str(folder), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # a failing import with --overwrite leaves the old output byte for byte
    (folder / "photo.png").write_bytes(b"garbage")
    assert main(["data", "import", str(folder), "--out", str(out), "--overwrite"]) == 2
    assert "photo.png" in capsys.readouterr().err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dirs left behind


def test_bad_metadata_lines_name_the_line(folder, tmp_path):
    meta = folder / "metadata.jsonl"
    good = meta.read_text()
    meta.write_text(good + "{not json\n")
    with pytest.raises(DataError, match=r"metadata.jsonl:6: not valid JSON"):
        import_folder(folder, tmp_path / "o")
    meta.write_text(good + json.dumps({"file_name": "x.mp4"}) + "\n")
    with pytest.raises(DataError, match=r":6: .*caption"):
        import_folder(folder, tmp_path / "o")
    meta.write_text(good + json.dumps({"file_name": "notes.txt", "caption": "c"}) + "\n")
    with pytest.raises(DataError, match="unsupported"):
        import_folder(folder, tmp_path / "o", skip_bad=True)
    meta.write_text(good + json.dumps({"file_name": "missing.mp4", "caption": "c"}) + "\n")
    with pytest.raises(DataError, match="missing.mp4: file not found"):
        import_folder(folder, tmp_path / "o")
    (meta).unlink()
    with pytest.raises(DataError, match="metadata.jsonl"):
        import_folder(folder, tmp_path / "o")


def test_presets_set_size_and_frames_and_seed_sets_split(folder, tmp_path):
    s = import_folder(folder, tmp_path / "small", preset="small", seed=3)
    assert (s["size"], s["frames"]) == (64, 17)
    v = _rows(tmp_path / "small")["clips/red.mp4"]["video"]
    assert v.shape == (17, 64, 64, 3)
    s2 = import_folder(folder, tmp_path / "small2", preset="small", seed=3)
    assert s2["splits"] == s["splits"]
