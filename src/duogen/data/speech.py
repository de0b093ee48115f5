"""Text to speech with espeak-ng, in memory, for the optional `audio` column and the audio codec's data.

libespeak-ng comes from the `espeakng-loader` wheel (no system package), driven
through ctypes in synchronous mode: `espeak_Synth` returns once the synthesis
callback has received every sample, so no audio device is involved.

Determinism: espeak-ng's default harmonic synthesizer keeps state from one
utterance to the next (the "flutter" pitch wobble's phase, and a two-copy
harmonic spectrum it interpolates between), so the same text gives slightly
different samples depending on what was spoken before. `speak` therefore loads
a small voice file of its own: the language with `flutter 0` on the Klatt
formant synthesizer, whose only hidden state is a noise generator we reseed
before every utterance. With it the same text, language, rate and pitch give
byte-identical samples in any order and in any process. This module does not own audio files (`duogen.data.media`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import threading

import numpy as np

from ..errors import DataError

SAMPLE_RATE = 16000

# espeak_AUDIO_OUTPUT, espeak_POSITION_TYPE, flags and parameter ids from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_NOISE_SEED = 1

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """One process-wide libespeak-ng handle (the library keeps global state, so calls are serialized)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise DataError("speech needs the `espeakng-loader` package: pip install espeakng-loader") from None
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as e:
            raise DataError(f"cannot load libespeak-ng from espeakng-loader ({e})") from None
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_ng_SetVoiceByFile.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetVoiceByFile.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0)
        if rate <= 0:
            raise DataError(f"espeak-ng failed to initialize with data path {data}")
        self.lib, self.rate, self.lock, self.data = lib, int(rate), threading.Lock(), data
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._on_samples)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._voice_dir = tempfile.mkdtemp(prefix="duogen-espeak-")

    def _set_voice(self, language: str) -> None:
        base = language.split("-")[0]
        if not language.replace("-", "").isalnum() or not os.path.isfile(os.path.join(self.data, f"{base}_dict")):
            raise DataError(f"espeak-ng has no voice for language {language!r} (try 'en', 'en-us', 'de', 'fr')")
        path = os.path.join(self._voice_dir, language)
        with open(path, "w") as f:
            f.write(f"name duogen-{language}\nlanguage {language}\nflutter 0\nklatt 1\n")
        if self.lib.espeak_ng_SetVoiceByFile(path.encode()) != 0:
            raise DataError(f"espeak-ng has no voice for language {language!r} (try 'en', 'en-us', 'de', 'fr')")
        self._voice = language

    def _on_samples(self, wav, n, events) -> int:  # noqa: ANN001 (ctypes signature)
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def synth(self, text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
        with self.lock:
            if voice != self._voice:
                self._set_voice(voice)
            self.lib.espeak_SetParameter(_ESPEAK_RATE, int(words_per_minute), 0)
            self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            self._chunks = []
            self.lib.espeak_ng_SetRandSeed(_NOISE_SEED)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if err != 0:
                raise DataError(f"espeak-ng could not speak {text[:40]!r} (error {err})")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0  # (S,) at self.rate


@functools.lru_cache(maxsize=1)
def _engine() -> _Espeak:
    return _Espeak()


def native_sample_rate() -> int:
    """The rate libespeak-ng synthesizes at (22050 Hz for the bundled voices)."""
    return _engine().rate


@functools.lru_cache(maxsize=16384)
def _synth_cached(text: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
    """One synthesis at espeak's own rate per distinct utterance, which every sample rate is resampled from: two
    syntheses of one text can differ by a few milliseconds (under a full test run, 47 samples at 16 kHz)."""
    x = _engine().synth(text, voice, words_per_minute, pitch)
    x.setflags(write=False)  # shared by the cache
    return x


@functools.lru_cache(maxsize=16384)
def _speak_cached(text: str, sample_rate: int, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
    from .media import resample_audio

    x = resample_audio(_synth_cached(text, voice, words_per_minute, pitch), _engine().rate, sample_rate)
    x.setflags(write=False)  # shared by the cache
    return x


def speak(text: str, sample_rate: int = SAMPLE_RATE, *, voice: str = "en", words_per_minute: int = 175, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng -> float32 mono (S,) in [-1, 1] at `sample_rate` (resampled from espeak's rate).

    Results are cached by their arguments, so speaking thousands of captions
    with repeats costs one synthesis per distinct caption.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError("speak: the text is empty; give at least one word")
    return _speak_cached(text, int(sample_rate), voice, int(words_per_minute), int(pitch)).copy()
