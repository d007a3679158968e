"""Synthetic voice-message stand-in: a short tone or melody as a PCM WAV file.

The simulator uploads real WAV bytes, so the server and S3 see the same size and type
as from a toy's microphone: RIFF, 16-bit signed little-endian PCM, mono.
"""

from __future__ import annotations

import io
import math
import struct
import wave

SAMPLE_WIDTH_BYTES = 2  # 16-bit PCM
CHANNELS = 1
DEFAULT_SAMPLE_RATE = 16_000  # Hz

MAX_SECONDS = 600.0  # keeps a typo such as --seconds 30000 from allocating gigabytes
_AMPLITUDE = 0.3 * 32767  # well below full scale, so the tone does not clip
_FADE_SECONDS = 0.01  # ramp at each note edge, so note changes do not click

# C major arpeggio (C5 E5 G5 C6) in Hz, played in turn when no frequency is given.
_MELODY_HZ = (523.25, 659.25, 783.99, 1046.50)
_NOTE_SECONDS = 0.25


def synthesize_wav(
    seconds: float = 3.0,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    frequency: float | None = None,
) -> bytes:
    """Synthesize a mono 16-bit PCM WAV file and return its bytes.

    Args:
        seconds: Duration, more than 0 and at most 600.
        sample_rate: Samples per second, from 8000 to 48000. petvault devices use
            16000.
        frequency: Pitch of a constant tone in Hz, below half the sample rate. None
            plays a four-note arpeggio that repeats every second.

    Returns:
        A complete WAV file. At 16 kHz its size is 44 + 32000 * seconds bytes, for
        example 96044 bytes for 3 s.

    Raises:
        ValueError: an argument is outside the ranges above.
    """
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be more than 0 and at most {MAX_SECONDS:g} (got {seconds})")
    if not 8000 <= sample_rate <= 48000:
        raise ValueError(f"sample_rate must be from 8000 to 48000 Hz (got {sample_rate})")
    if frequency is not None and not 0 < frequency < sample_rate / 2:
        raise ValueError(
            f"frequency must be above 0 and below {sample_rate / 2:g} Hz, half the sample "
            f"rate (got {frequency})"
        )

    frame_count = round(seconds * sample_rate)
    samples = [_sample(index, sample_rate, frequency, seconds) for index in range(frame_count)]
    pcm = struct.pack(f"<{frame_count}h", *samples)

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(SAMPLE_WIDTH_BYTES)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


def _sample(index: int, sample_rate: int, frequency: float | None, total_seconds: float) -> int:
    time = index / sample_rate
    if frequency is not None:
        pitch = frequency
        note_time = time
        note_length = math.inf
    else:
        note_index = int(time / _NOTE_SECONDS)
        pitch = _MELODY_HZ[note_index % len(_MELODY_HZ)]
        note_time = time - note_index * _NOTE_SECONDS
        note_length = _NOTE_SECONDS

    # Linear fade in at each note start, and fade out at each note end and at the end
    # of the file.
    envelope = min(
        1.0,
        note_time / _FADE_SECONDS,
        (note_length - note_time) / _FADE_SECONDS,
        (total_seconds - time) / _FADE_SECONDS,
    )
    value = _AMPLITUDE * envelope * math.sin(2 * math.pi * pitch * note_time)
    return round(value)
