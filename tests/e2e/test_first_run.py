"""A new user's first PyTorch export: names they can rely on, and their own errors reported as theirs."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")

from edgeq.cli import app  # noqa: E402

_COUNTER = itertools.count()


def user_module(tmp_path: Path, monkeypatch, body: str) -> str:
    """Write the user's module into tmp_path (the current directory, as a user runs edgeq) and return its name."""
    name = f"usermodel_{next(_COUNTER)}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("import collections\nimport torch\n\n" + textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    return name


def io_names(path: Path) -> tuple[list[str], list[str]]:
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [v.name for v in m.graph.input if v.name not in inits], [v.name for v in m.graph.output]


def line_of(module: str, text: str) -> int:
    lines = Path(f"{module}.py").read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if text in ln)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


DICT_MODEL = """
class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, image):
        y = self.fc(image)
        return {"logits": y, "probs": torch.softmax(y, -1)}


def build():
    return Classifier()
"""


@pytest.mark.slow
def test_names_come_from_forward_and_the_returned_dict_and_the_app_toml_fits(runner, tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, DICT_MODEL)
    app_toml = tmp_path / "app.toml"
    app_toml.write_text('[inputs.image]\nlayout = "NC"\n[outputs.probs]\nlabels = false\n')
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", f"{mod}:build", "--example-shape", "1x6", "--quant", "none", "--no-profile",
                            "--preprocess", str(app_toml), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert io_names(out / "model.onnx") == (["image"], ["logits", "probs"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "probs"]


TUPLE_MODEL = """
Pair = collections.namedtuple("Pair", ["boxes", "scores"])


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x, mask):
        h = self.fc(x) * mask
        return Pair(h, h.sum(-1))


class Plain(torch.nn.Module):
    def forward(self, a):
        return a * 2, a + 1


def build():
    return Detector()


def plain():
    return Plain()
"""


def test_namedtuple_fields_and_the_name_options(runner, tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, TUPLE_MODEL)
    out = tmp_path / "nt"
    r = runner.invoke(app, ["export", f"{mod}:build", "--example-shape", "1x4", "--example-shape", "1x4",
                            "--quant", "none", "--no-profile", "--golden", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert io_names(out / "model.onnx") == (["x", "mask"], ["boxes", "scores"])
    out2 = tmp_path / "named"
    r = runner.invoke(app, ["export", f"{mod}:plain", "--example-shape", "1x4", "--input-names", "pixels",
                            "--output-names", "double,next", "--exporter", "torchscript",
                            "--quant", "none", "--no-profile", "--golden", "1", "-o", str(out2)])
    assert r.exit_code == 0, r.output
    assert io_names(out2 / "model.onnx") == (["pixels"], ["double", "next"])


def test_app_toml_is_checked_against_the_names_before_the_export(runner, tmp_path, monkeypatch):
    import edgeq.exporters.torch as et
    from edgeq.errors import EdgeqError

    def stub(*a, **k):
        raise EdgeqError("export stub reached")

    monkeypatch.setattr(et, "export_torch_checked", stub)
    mod = user_module(tmp_path, monkeypatch, DICT_MODEL)
    app_toml = tmp_path / "app.toml"
    app_toml.write_text('[outputs.y]\nactivation = "softmax"\n')
    r = runner.invoke(app, ["export", f"{mod}:build", "--example-shape", "x=1x6", "--preprocess", str(app_toml),
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2
    line = one_line(r.stderr)
    assert "[outputs.y]" in line and "inputs x; outputs logits, probs" in line and "--output-names" in line
    # the names the options give are what the TOML is checked against: this one passes and reaches the export
    r = runner.invoke(app, ["export", f"{mod}:build", "--example-shape", "1x6", "--output-names", "a,y",
                            "--preprocess", str(app_toml), "-o", str(tmp_path / "b")])
    assert one_line(r.stderr) == "error: export stub reached"
    r = runner.invoke(app, ["export", f"{mod}:build", "--example-shape", "1x6", "--output-names", "a,b,c",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--output-names gives 3 name(s) but forward() returns 2" in one_line(r.stderr)
    r = runner.invoke(app, ["export", f"{mod}:build", "--example-shape", "1x6", "--input-names", "a,b",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--input-names gives 2 name(s) for 1 example input(s)" in one_line(r.stderr)
    assert not (tmp_path / "b").exists()


def test_name_options_are_refused_for_an_onnx_source(runner, cnn, tmp_path):
    r = runner.invoke(app, ["export", str(cnn), "--output-names", "y", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "not a source of kind onnx" in one_line(r.stderr)


FAULTY = """
import os

if os.environ.get("USERMODEL_FAIL_ON_IMPORT"):
    raise KeyError("config missing")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[-1] == 3 and not torch.compiler.is_exporting():
            raise ValueError("x must be normalised first")
        return self.fc(x)


class TracedOnly(Net):
    def forward(self, x):
        if torch.compiler.is_exporting():
            raise ValueError("no tracing please")
        return self.fc(x)


class OneAtATime(Net):
    def forward(self, x):
        if x.shape[0] > 1 and not torch.compiler.is_exporting():
            raise ValueError("one image at a time")
        return self.fc(x)


def broken():
    raise RuntimeError("weights not downloaded")


def net():
    return Net()


def traced_only():
    return TracedOnly()


def one_at_a_time():
    return OneAtATime()
"""


def test_errors_in_the_users_own_code_are_reported_as_theirs(runner, tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, FAULTY)
    args = ["--example-shape", "x=1x3", "-o", str(tmp_path / "b")]
    r = runner.invoke(app, ["export", f"{mod}:broken", *args])
    assert r.exit_code == 2
    line = one_line(r.stderr)
    assert f"{mod}:broken() raised RuntimeError: weights not downloaded ({mod}.py:{line_of(mod, 'weights not downloaded')}, in broken)" in line
    assert "bug in edgeq" not in line
    r = runner.invoke(app, ["export", f"{mod}:net", *args])
    assert r.exit_code == 2
    line = one_line(r.stderr)
    assert f"forward() raised ValueError: x must be normalised first ({mod}.py:{line_of(mod, 'normalised first')}, in forward)" in line
    assert "torch cannot export" not in line and "bug in edgeq" not in line
    monkeypatch.setenv("USERMODEL_FAIL_ON_IMPORT", "1")
    fresh = user_module(tmp_path, monkeypatch, FAULTY)
    r = runner.invoke(app, ["export", f"{fresh}:net", *args])
    assert r.exit_code == 2
    assert f"importing {fresh} raised KeyError: 'config missing' ({fresh}.py:{line_of(fresh, 'config missing')}, in <module>)" in one_line(r.stderr)
    bad = user_module(tmp_path, monkeypatch, "def build(:\n    pass\n")
    r = runner.invoke(app, ["export", f"{bad}:build", *args])
    assert r.exit_code == 2 and f"importing {bad} raised SyntaxError: invalid syntax ({bad}.py:4)" in one_line(r.stderr)
    r = runner.invoke(app, ["export", "no_such_user_module:build", *args])  # not found: as before
    assert r.exit_code == 2 and one_line(r.stderr).startswith("error: cannot import no_such_user_module: No module named")
    assert not (tmp_path / "b").exists()


def test_a_user_exception_inside_torch_export_is_unwrapped(runner, tmp_path, monkeypatch):
    mod = user_module(tmp_path, monkeypatch, FAULTY)
    r = runner.invoke(app, ["export", f"{mod}:traced_only", "--example-shape", "x=1x3", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2
    line = one_line(r.stderr)
    assert f"raised ValueError: no tracing please ({mod}.py:{line_of(mod, 'no tracing please')}, in forward)" in line
    assert "torch cannot export" not in line and "bug in edgeq" not in line
    # the export check runs forward() on a second batch size: failing there is the user's too
    r = runner.invoke(app, ["export", f"{mod}:one_at_a_time", "--example-shape", "x=1x3", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2
    assert (f"forward() on the batch=2 inputs raised ValueError: one image at a time "
            f"({mod}.py:{line_of(mod, 'one image at a time')}, in forward)") in one_line(r.stderr)
    assert not (tmp_path / "b").exists()


def test_an_edgeq_bug_is_still_reported_as_one(runner, tmp_path, monkeypatch):
    """A user module ran, then edgeq's own code failed: that stays edgeq's bug."""
    import edgeq.exporters as ex

    mod = user_module(tmp_path, monkeypatch, FAULTY)

    def buggy(*a, **k):
        return {}["edgeq"]

    buggy.__code__ = buggy.__code__.replace(co_filename=ex.__file__)  # an edgeq frame
    monkeypatch.setattr(ex, "_export_module", buggy)
    r = runner.invoke(app, ["export", f"{mod}:net", "--example-shape", "x=1x3", "-o", str(tmp_path / "b")])
    assert r.exit_code == 1
    assert "internal error (KeyError: 'edgeq') -- this is a bug in edgeq" in one_line(r.stderr)


def test_a_hugging_face_folders_own_code_failing_is_reported_as_its_code(runner, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from safetensors.numpy import save_file
    import numpy as np
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # the copies go to tmp_path
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "oops", "architectures": ["OopsModel"],
        "auto_map": {"AutoConfig": "configuration_oops.OopsConfig", "AutoModel": "configuration_oops.OopsConfig"},
    }))
    (folder / "configuration_oops.py").write_text(
        "from transformers import PretrainedConfig\n\n\nclass OopsConfig(PretrainedConfig):\n    model_type = 'oops'\n\n"
        "    def __init__(self, **kw):\n        super().__init__(**kw)\n        raise RuntimeError('hidden_size is required')\n"
    )
    save_file({"w": np.zeros(2, np.float32)}, str(folder / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["export", "custom", "--task", "feature-extraction", "--trust-remote-code", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2
    line = one_line(r.stderr)
    assert ("custom's own model code (--trust-remote-code) raised RuntimeError: hidden_size is required "
            "(custom/configuration_oops.py:9, in __init__)") in line
    assert "transformers cannot load" not in line and not (tmp_path / "b").exists()


def test_a_users_traceback_copied_into_torchs_message_is_read_but_torchs_own_errors_are_not(tmp_path):
    """Exporters may keep only the text of what forward() raised; that text names the user's file and line."""
    from edgeq.core.usercode import raised_by_user

    user = tmp_path / "model.py"
    user.write_text("x = 1\n" * 20)
    wrapped = RuntimeError(
        "Failed to export the model with torch.export.\n"
        "Traceback (most recent call last):\n"
        f'  File "/usr/lib/python3/site-packages/torch/export/_trace.py", line 10, in _export\n    return f()\n'
        f'  File "{user}", line 12, in forward\n    raise KeyError("no anchors")\n    ^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
        "KeyError: 'no anchors'\n"
    )
    fault = raised_by_user(wrapped)
    assert fault is not None and (fault.file, fault.line, fault.exc_type, fault.message) == (str(user), 12, "KeyError", "'no anchors'")
    # torch's own complaint that merely names the user's line is not the user's exception
    guard = RuntimeError(
        "Could not guard on data-dependent expression u0 > 3\n"
        f'The following call raised this error:\n  File "{user}", line 12, in forward\n    if x.sum() > 3:\n\n'
        "torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode: see above\n"
    )
    assert raised_by_user(guard) is None
