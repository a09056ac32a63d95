"""The accuracy-level rule on language models: a gap of a few tokens in a thousand is sampling noise, not a reason to
ship MatMulNBits at level 0 (a decode step about 2 x slower than level 4 on CPUs with int8 dot products)."""

from __future__ import annotations

from edgeq.quantization.selection.acclevel import LevelMeasure, pick


def _lm(level: int, agree: float, positions: int | None) -> LevelMeasure:
    return LevelMeasure(level, 1.0 if level == 4 else 2.0, agree, True, kl_mean=1e-4, ms_token=1.0 if level == 4 else 2.2,
                        positions=positions)


def test_a_gap_within_sampling_noise_keeps_level_4():
    # measured on the trained realistic fixture (8 windows of 128 tokens): 99.11 % vs 99.70 % over 1,016 positions;
    # before: level 0 was chosen and the bundle decoded 2.2 x slower (2,395 vs 1,067 us per step)
    level, why = pick(_lm(4, 0.9911, 1016), _lm(0, 0.9970, 1016))
    assert level == 4, why
    assert pick(_lm(4, 0.9911, None), _lm(0, 0.9970, None))[0] == 0  # without a position count: the plain 0.5-point rule


def test_a_real_gap_still_chooses_level_0_and_says_why():
    level, why = pick(_lm(4, 0.970, 1016), _lm(0, 0.997, 1016))
    assert level == 0 and "standard errors over 1016 positions" in why
    # a 0.7-point gap: noise over 1,016 positions, a real loss over 50,000
    assert pick(_lm(4, 0.9900, 1016), _lm(0, 0.9970, 1016))[0] == 4
    assert pick(_lm(4, 0.9900, 50000), _lm(0, 0.9970, 50000))[0] == 0
