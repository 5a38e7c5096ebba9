"""The `mil` fuzz target: mutated real MIL text is either parsed and run, or refused with an anekit
error; a short seeded run is part of the suite (the full one: `python -m anekit.fuzz mil`)."""

from __future__ import annotations

import numpy as np
import pytest

import anekit.fuzz.mil_text as mil_fuzz
from anekit import fuzz
from anekit.mil import MilParseError, loads


def test_a_short_mil_fuzz_finds_no_raw_exception_and_no_hang():
    report = fuzz.run("mil", cases=300, seed=8)
    assert report.clean, "\n\n".join(f"case {d.case}: {d.error}\n{d.traceback}" for d in report.defects)
    # both outcomes occur: programs that parse and run, and inputs refused with a message
    assert report.counts["ok"] >= 15 and report.counts["anekit_error"] >= 150, report.counts


def test_the_fuzz_reports_a_raw_exception_as_a_defect(monkeypatch):
    # a target that cannot fail proves nothing: break the parser and the fuzz must say so
    def broken(self, kind, text, pos):
        raise OverflowError("raw")

    monkeypatch.setattr("anekit.mil.parser._Parser.number", broken)
    report = fuzz.run("mil", cases=40, seed=8)
    assert report.counts["other"] > 0
    assert "OverflowError: raw" in report.defects[0].error
    assert "seed " in report.defects[0].input and "mutations" in report.defects[0].input


def test_cases_reproduce_from_their_seed_and_number():
    a = mil_fuzz.make_case(fuzz.case_rng(3, 17))
    b = mil_fuzz.make_case(fuzz.case_rng(3, 17))
    assert (a.seed, a.data, a.mutations, a.via, a.input_seed) == (
        b.seed,
        b.data,
        b.mutations,
        b.via,
        b.input_seed,
    )


def test_generated_seeds_exist_without_the_corpus_and_parse(monkeypatch, tmp_path):
    monkeypatch.setattr(mil_fuzz, "_CORPUS", tmp_path / "absent")
    monkeypatch.setattr(mil_fuzz, "_FIXTURES", tmp_path / "absent")
    mil_fuzz.seeds.cache_clear()
    try:
        seeds = mil_fuzz.seeds()
        assert seeds and all(s.name.startswith("generated:") for s in seeds)
        for s in seeds:  # every seed is a valid program that runs
            mil_fuzz._run(loads(s.text, s.weights), np.random.default_rng(0))
        assert "tensor<uint4, [16, 16, 1, 1]>(BLOBFILE(" in next(s for s in seeds if "uint4" in s.name).text
        report = fuzz.run("mil", cases=30, seed=1)
        assert report.clean
    finally:
        mil_fuzz.seeds.cache_clear()


def test_seeds_without_their_weight_files_get_synthesized_blobs():
    text = (
        "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 4]> x) {\n"
        '        tensor<fp16, [1, 4]> w = const()[name = string("w"), val = tensor<fp16, [1, 4]>('
        'BLOBFILE(path = string("@model_path/weights/weight.bin"), offset = uint64(4096)))];\n'
        '        tensor<fp16, [1, 4]> y = add(x = x, y = w)[name = string("y")];\n    } -> (y);\n}\n'
    )
    seed = mil_fuzz._seed_from_text("t", text)
    assert "offset = uint64(64)" in seed.text  # repointed at the blob the writer placed
    loads(seed.text, seed.weights)


@pytest.mark.parametrize(
    "mutation, check",
    [
        ("bad_utf8", lambda seed, data: isinstance(data, bytes)),
        ("deep_nesting", lambda seed, data: len(data) >= len(seed) + 40),
        ("long_token", lambda seed, data: len(data) >= len(seed) + 300),
        ("blobfile_offset", lambda seed, data: data != seed),
    ],
)
def test_mutations_do_what_they_say_and_only_anekit_errors_follow(mutation, check):
    seed = next(s for s in mil_fuzz.seeds() if "BLOBFILE" in s.text)
    for i in range(10):
        rng = np.random.default_rng(i)
        case = mil_fuzz.Case(seed.name, seed.text, seed.weights, "loads", 0)
        if mutation in mil_fuzz._BYTE_MUTATIONS:
            data = mil_fuzz._BYTE_MUTATIONS[mutation](seed.text.encode(), rng, case)
        else:
            data = mil_fuzz._TEXT_MUTATIONS[mutation](seed.text, rng, case)
        assert check(seed.text, data)
        try:
            loads(data, seed.weights)
        except MilParseError:
            pass
