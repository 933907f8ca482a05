"""The codec helpers AAC and H.264 framing: ADTS written and read, ASC parsed, AVCC to Annex B."""

from __future__ import annotations

import pytest

from cloudrec.media.codecs import aac, h264


def test_adts_header_any_rate_and_channels() -> None:
    header = aac.adts_header(100, 44100, 1)
    assert len(header) == 7 and header[:2] == b"\xff\xf1"
    config = aac.parse_adts(header + bytes(100))
    assert config == aac.AacConfig(aac.AAC_LC, 4, 1)
    assert config.sample_rate == 44100 and config.is_lc
    assert aac.adts_length(header) == 107 and aac.adts_samples(header) == 1024
    # the 48 kHz stereo header the encoders write, byte for byte
    assert aac.adts_header(100) == bytes((0xFF, 0xF1, 0x4C, 0x80, 0x0D, 0x7F, 0xFC))
    main = aac.parse_adts(aac.adts_header(10, 8000, 2, object_type=1))
    assert main is not None and main.object_type == 1 and not main.is_lc and main.rate_index == 11


def test_adts_rejects_what_it_cannot_say() -> None:
    with pytest.raises(ValueError, match="44000"):
        aac.adts_header(10, 44000)
    with pytest.raises(ValueError, match="too big"):
        aac.adts_header(9000)
    with pytest.raises(ValueError, match="object type"):
        aac.adts_header(10, object_type=5)
    assert aac.parse_adts(b"\x00" * 7) is None and aac.parse_adts(b"\xff\xf1") is None


def test_asc_to_adts() -> None:
    lc = aac.parse_asc(bytes((0x12, 0x10)))  # AAC-LC, 44.1 kHz, stereo
    assert lc == aac.AacConfig(2, 4, 2) and lc.sample_rate == 44100
    frame = lc.adts(b"\x21" * 50)
    assert len(frame) == 57 and aac.parse_adts(frame) == lc
    he = aac.parse_asc(bytes((0x2B, 0x11, 0x88, 0x00)))  # HE-AAC: SBR over a 24 kHz LC core
    assert he.object_type == 2 and he.sample_rate == 24000
    with pytest.raises(ValueError):
        aac.parse_asc(b"\x12")


def test_avcc_to_annexb() -> None:
    sps, pps = b"\x67\x42\xc0\x1e\x95", b"\x68\xce\x3c\x80"
    record = bytes((1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1)) + len(sps).to_bytes(2, "big") + sps + \
        b"\x01" + len(pps).to_bytes(2, "big") + pps
    config = h264.parse_avc_config(record)
    assert config.length_size == 4 and config.sps == (sps,) and config.pps == (pps,)
    assert config.annexb == h264.START_CODE + sps + h264.START_CODE + pps
    idr, aud = b"\x65\x88\x84", b"\x09\xf0"
    avcc = b"".join(len(n).to_bytes(4, "big") + n for n in (aud, idr))
    nals = h264.split_avcc(avcc, 4)
    assert nals == [aud, idr]
    data, key = h264.access_unit(nals, False, config.annexb)
    assert key and h264.split_annexb(data) == [aud, sps, pps, idr]
    delta, key = h264.access_unit([b"\x41\x9a"], False, config.annexb)
    assert not key and delta == h264.START_CODE + b"\x41\x9a"
    with pytest.raises(ValueError):
        h264.split_avcc(b"\x00\x00\x00\x09\x65", 4)
    with pytest.raises(ValueError):
        h264.parse_avc_config(b"\x02" * 8)
