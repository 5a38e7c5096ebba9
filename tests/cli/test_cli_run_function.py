"""`anekit run --function` runs one function of a multi-function program; the engine path picks its
function by the same rule as the reference backend (default `main`, or the program's default)."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from anekit.backends.ane.runtime import prepare
from anekit.cli import app
from anekit.mil import loads

TWO_FUNCTIONS = """program(1.3)
{
    func main<ios18>(tensor<fp32, [2]> a) {
            tensor<fp32, [2]> b = add(x = a, y = a)[name = string("b")];
    } -> (b);
    func triple<ios18>(tensor<fp32, [3]> a) {
            tensor<fp32, [3]> b = mul(x = a, y = a)[name = string("b")];
    } -> (b);
}
"""


def _model(tmp_path, text=TWO_FUNCTIONS):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.mil").write_text(text)
    return d


def test_run_picks_the_named_function(tmp_path):
    model = _model(tmp_path)
    np.save(tmp_path / "a.npy", np.array([1.0, 2.0, 3.0], np.float32))
    out = tmp_path / "out.npz"
    r = CliRunner().invoke(
        app,
        ["run", str(model), "--function", "triple", "-i", f"a={tmp_path / 'a.npy'}", "--out", str(out),
         "--backend", "reference", "--numerics", "exact"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(out)["b"], [1.0, 4.0, 9.0])


def test_run_with_an_unknown_function_lists_them(tmp_path):
    r = CliRunner().invoke(
        app, ["run", str(_model(tmp_path)), "--function", "nope", "--backend", "reference"]
    )
    assert r.exit_code == 1
    assert "'nope'" in r.output and "'main', 'triple'" in r.output
    assert "Traceback" not in r.output


def test_engine_prepare_defaults_to_the_programs_default_function():
    assert list(prepare(loads(TWO_FUNCTIONS)).inputs.values())[0].shape == (2,)
    assert list(prepare(loads(TWO_FUNCTIONS), "triple").inputs.values())[0].shape == (3,)
    # text without `main`: the first function is the default (mil-text.md §1.7), as on the reference backend
    no_main = loads(TWO_FUNCTIONS.replace("func main<", "func double<"))
    assert list(prepare(no_main).inputs.values())[0].shape == (2,)
