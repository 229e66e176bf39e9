"""Pairing rendered images with reports: every report gets an image with exactly its findings."""

from __future__ import annotations

import numpy as np

from services.report.data import Corpus, TrainPairs, bank_size, combo_of
from services.report.findings import FINDINGS, to_vector
from services.report.reports import Report, Vocabulary


def report(uid: str, text: str, mesh: tuple[str, ...]) -> Report:
    return Report(uid, text, "", mesh)


def test_each_training_report_is_paired_with_an_image_of_its_findings() -> None:
    reports = [report("CXR1", "Normal chest.", ("normal",)),
               report("CXR2", "Cardiomegaly. Small effusion.", ("Cardiomegaly/mild", "Pleural Effusion/left")),
               report("CXR3", "Mild cardiomegaly.", ("Cardiomegaly",))]
    corpus = Corpus({"train": reports, "val": [], "test": []}, Vocabulary.build([r.text for r in reports], 1))
    combos = [(), ("cardiomegaly",), ("cardiomegaly", "pleural_effusion"), ("cardiomegaly",)]
    bank = np.zeros((len(combos), 8, 8), np.uint8)
    bank[np.arange(len(combos)), 0, np.arange(len(combos))] = 255  # a white pixel at column = bank index
    pairs = TrainPairs(corpus, bank, combos)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(20):
        for idx, images, tokens, labels in pairs.epoch(rng, 2):
            for i, image, label in zip(idx, images, labels, strict=True):
                j = int(np.argmax(image[0, 0]))
                assert combos[j] == combo_of(label) == combo_of(reports[i].labels)
                seen.add(j)
            assert tokens.shape[0] == len(idx) and tokens[:, 0].tolist() == [1] * len(idx)
    assert {1, 3} <= seen  # both cardiomegaly images are used


def test_bank_size_bounds_and_combo_names() -> None:
    assert bank_size(1) == 6 and bank_size(10_000) == 60 and 6 <= bank_size(50) <= 60
    vector = to_vector(dict.fromkeys(FINDINGS, False) | {"pneumothorax": True})
    assert combo_of(vector) == ("pneumothorax",)


def test_abnormal_reports_can_be_repeated_per_epoch() -> None:
    reports = [report("CXR1", "Normal chest.", ("normal",)), report("CXR2", "Normal.", ("normal",)),
               report("CXR3", "Mild cardiomegaly.", ("Cardiomegaly",))]
    corpus = Corpus({"train": reports, "val": [], "test": []}, Vocabulary.build([r.text for r in reports], 1))
    bank = np.zeros((2, 8, 8), np.uint8)
    pairs = TrainPairs(corpus, bank, [(), ("cardiomegaly",)], abnormal_repeat=3)
    assert len(pairs) == 5
    seen = np.concatenate([idx for idx, _, _, _ in pairs.picks(np.random.default_rng(0), 2)])
    assert sorted(seen.tolist()) == [0, 1, 2, 2, 2]
    assert len(TrainPairs(corpus, bank, [(), ("cardiomegaly",)])) == 3


def test_length_buckets_keep_every_report_once_and_shorten_the_padding() -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + " ." for n in rng.integers(1, 40, 64)]
    reports = [report(f"CXR{i}", t, ("normal",)) for i, t in enumerate(texts)]
    corpus = Corpus({"train": reports, "val": [], "test": []}, Vocabulary.build(texts, 1))
    pairs = TrainPairs(corpus, np.zeros((1, 8, 8), np.uint8), [()])
    lengths = (pairs.tokens != 0).sum(1)
    padded = {}
    for bucket in (1, 8):
        batches = [idx for idx, _, _, _ in pairs.picks(np.random.default_rng(1), 8, bucket)]
        assert sorted(np.concatenate(batches).tolist()) == list(range(64))
        padded[bucket] = sum(len(b) * lengths[b].max() for b in batches)
    assert padded[8] < 0.8 * padded[1]
