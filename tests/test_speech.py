"""espeak-ng speech in memory: audible, plausible length, deterministic whatever was spoken before."""

import numpy as np
import pytest

from duogen.data import speech
from duogen.errors import DataError


def test_speech_is_audible_speech_of_plausible_length():
    text = "a small red circle moves to the left"
    x = speech.speak(text)
    assert x.dtype == np.float32 and x.ndim == 1
    seconds = len(x) / 16000
    words = len(text.split())
    assert 0.15 * words < seconds < 0.8 * words  # conversational speech is 2-4 words/s
    assert np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x**2)) > 0.02  # not silent
    # speech energy sits mostly below 4 kHz
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert spec[freqs < 4000].sum() / spec.sum() > 0.8
    # longer text gives longer audio; slower speech gives longer audio
    assert len(speech.speak(text + " and a blue square moves up")) > len(x) * 1.4
    assert len(speech.speak(text, words_per_minute=100)) > len(x) * 1.3


def test_speech_is_deterministic_regardless_of_history():
    text = "a green seven slides up"
    a = speech.speak(text)
    speech._speak_cached.cache_clear()  # force a fresh synthesis after other utterances
    speech._synth_cached.cache_clear()
    for other in ["hello world", "the quick brown fox jumps over the lazy dog", "zebra?"]:
        speech.speak(other)
    b = speech.speak(text)
    assert np.array_equal(a, b)
    b[:10] = 0  # callers get a copy, never the cached array
    assert np.array_equal(speech.speak(text), a)


def test_resampling_to_other_rates():
    x16 = speech.speak("one two three")
    x8 = speech.speak("one two three", sample_rate=8000)
    assert abs(len(x8) * 2 - len(x16)) <= 2
    native = speech.speak("one two three", sample_rate=speech.native_sample_rate())
    assert abs(len(native) - len(x16) * speech.native_sample_rate() / 16000) <= 2


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="empty"):
        speech.speak("   ")
    with pytest.raises(DataError, match="language"):
        speech.speak("hello", voice="zz")
    assert len(speech.speak("bonjour", voice="fr")) > 1000  # another language still works after a bad one
