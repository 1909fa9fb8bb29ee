"""SmoothQuant before dynamic int8: the smoothed fp32 graph computes the same token states, and, calibrated on
SciFact abstracts, its int8 version stays closer to fp32 than plain dynamic int8 on other SciFact abstracts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="muses[onnx] is not installed (make test installs it)")

from muses.backends.export import CALIBRATION_WINDOWS, calibration_feeds, window_feeds
from muses.backends.onnx import OnnxRunner, export_onnx, quantize_onnx
from muses.backends.smoothing import smooth_matmuls
from muses.data.beir import load_beir
from muses.encoder import MultiScaleEncoder


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> Path:
    names = list(encoder.tokenizer.model_input_names)
    return export_onnx(encoder.transformer, names, tmp_path_factory.mktemp("smooth") / "fp32.onnx")


def _abstracts(data_dir: Path, split: str, n: int, skip: frozenset[str] = frozenset()) -> list[str]:
    """The first ``n`` abstracts (title and text) cited by ``split``'s claims, leaving out ``skip``."""
    data = load_beir("scifact", split, data_dir=data_dir)
    ids = [c for q in sorted(data.qrels) for c in sorted(data.qrels[q]) if c not in skip]
    return [f"{data.corpus[i]['title']}. {data.corpus[i]['text']}" for i in dict.fromkeys(ids)][:n]


@pytest.fixture(scope="module")
def calibration(data_dir: Path, encoder: MultiScaleEncoder) -> list[dict[str, np.ndarray]]:
    """Windows of 100 abstracts cited by SciFact train claims."""
    return calibration_feeds(encoder, _abstracts(data_dir, "train", 100))


@pytest.fixture(scope="module")
def abstracts(data_dir: Path, encoder: MultiScaleEncoder) -> list[dict[str, np.ndarray]]:
    """Feeds of 12 abstracts cited by SciFact test claims and by no train claim: held out from the calibration."""
    train = load_beir("scifact", "train", data_dir=data_dir).qrels
    texts = _abstracts(data_dir, "test", 12, skip=frozenset(c for r in train.values() for c in r))
    return window_feeds(encoder, encoder.window_inputs(texts))


def _states(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """``[T, H]``: the token states of every window, stacked."""
    run = OnnxRunner("onnx", path, 1)
    return np.concatenate([run(f["input_ids"], f["attention_mask"])[0] for f in feeds])


def _cosine_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over tokens of 1 - cos(a_t, b_t)."""
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(1 - cos))


def test_smoothing_keeps_the_fp32_token_states(
    tmp_path: Path, fp32: Path, calibration: list[dict[str, np.ndarray]], abstracts: list[dict[str, np.ndarray]]
) -> None:
    smoothed = smooth_matmuls(fp32, tmp_path / "smoothed.onnx", calibration)
    want, got = _states(fp32, abstracts), _states(smoothed, abstracts)
    assert want.shape == got.shape and want.shape[0] > 12 * 150
    assert _cosine_error(want, got) < 1e-6  # the same function, up to float rounding
    import onnx

    smooths = [n for n in onnx.load(str(smoothed)).graph.node if n.name.endswith("/Smooth")]
    assert len(smooths) == 6 * 4  # per layer: the q/k/v input, attention output, feed-forward in and out


def test_smoothed_int8_is_closer_to_fp32_than_plain_dynamic_int8(
    tmp_path: Path, fp32: Path, calibration: list[dict[str, np.ndarray]], abstracts: list[dict[str, np.ndarray]]
) -> None:
    plain = quantize_onnx(fp32, tmp_path / "plain.onnx")
    smooth = quantize_onnx(fp32, tmp_path / "smooth.onnx", calibration)
    want = _states(fp32, abstracts)
    plain_error = _cosine_error(want, _states(plain, abstracts))
    smooth_error = _cosine_error(want, _states(smooth, abstracts))
    assert plain_error > 1e-3  # int8 really changed the states
    assert smooth_error < 0.75 * plain_error, (smooth_error, plain_error)
    assert not list(tmp_path.glob(".smooth-*"))  # the smoothed fp32 intermediate is gone


def test_calibration_spreads_its_windows_over_the_whole_text(encoder: MultiScaleEncoder) -> None:
    """A file of 400 short texts of one kind, then 200 of another: both kinds calibrate, 300 windows in all."""
    texts = [f"Roots absorb water, sample {i}." for i in range(400)] + [
        f"Volcanoes erupt lava, {i}." for i in range(200)
    ]
    feeds = calibration_feeds(encoder, texts)
    assert len(feeds) == CALIBRATION_WINDOWS == 300
    [volcano] = encoder.tokenizer("volcanoes", add_special_tokens=False)["input_ids"][:1]
    late = sum(volcano in f["input_ids"][0] for f in feeds)
    assert 90 <= late <= 110  # a third of the windows, as a third of the text
    assert (
        feeds[0]["input_ids"].shape[0] == 1
        and feeds[-1]["input_ids"][0].tolist() == encoder.window_inputs(texts[-1:])[0]
    )
