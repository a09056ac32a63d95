"""Untrusted model sources (issue 8, items 5-7): pickles, remote code, broken safetensors.

Each case: exit 2 with one line naming the problem, nothing at the output path,
and a canary file that the payload would create proves no code from the input ran.
"""

from __future__ import annotations

import json
import struct
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgeq.cli import app  # noqa: E402

FACTORY = "tests.robustness.test_untrusted_sources:tiny"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def tiny() -> torch.nn.Module:
    return Tiny()


class Payload:
    """Unpickling this creates ``canary`` (Path.touch runs during the load)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (Path.touch, (self.canary,))


class EvilModule(Tiny):
    def __init__(self, canary: Path) -> None:
        super().__init__()
        self.payload = Payload(canary)


def _refused(r, out: Path, canary: Path, *words: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists() and not canary.exists()
    assert not [p for p in out.parent.iterdir() if ".edgeq-" in p.name]


# --- 5. pickle checkpoints with a __reduce__ payload -------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("what", ["state-dict", "module"])
def test_pickle_payload_refused_as_model(runner, tmp_path, suffix, what):
    canary = tmp_path / "canary"
    path = tmp_path / f"evil{suffix}"
    obj = {"fc.weight": torch.zeros(2, 4), "extra": Payload(canary)} if what == "state-dict" else EvilModule(canary)
    torch.save(obj, str(path))
    assert not canary.exists()
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(path), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, canary, f"evil{suffix}", "--trust-pickle")


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_pickle_payload_refused_as_weights(runner, tmp_path, suffix):
    canary = tmp_path / "canary"
    path = tmp_path / f"w{suffix}"
    torch.save({"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2), "x": Payload(canary)}, str(path))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", FACTORY, "--weights", str(path), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, canary, "not a plain weights file", "--trust-pickle")


def test_torchscript_archive_refused_even_without_payload(runner, tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(path))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(path), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, tmp_path / "canary", "TorchScript", "--trust-pickle")


def test_torchscript_archive_with_injected_payload_refused(runner, tmp_path):
    canary = tmp_path / "canary"
    clean = tmp_path / "clean.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(clean))
    evil = tmp_path / "evil.pt"
    import pickle

    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Payload(canary), protocol=2)
            zout.writestr(item, data)
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(evil), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, canary, "TorchScript")


def test_hf_folder_with_pickled_bin_payload_refused(runner, tmp_path):
    canary = tmp_path / "canary"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    torch.save({"w": torch.zeros(1), "x": Payload(canary)}, str(folder / "pytorch_model.bin"))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(folder), "--task", "feature-extraction", "-o", str(out)])
    _refused(r, out, canary, "pytorch_model.bin", "--trust-pickle")


@pytest.mark.slow
def test_trusted_full_module_pickle_exports(runner, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(Tiny(), str(path))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(path), "--example-shape", "x=1x4", "-o", str(out)])
    assert r.exit_code == 2 and "--trust-pickle" in r.stderr and not out.exists()
    r = runner.invoke(app, [
        "export", str(path), "--trust-pickle", "--exporter", "torchscript", "--example-shape", "x=1x4",
        "--quant", "none", "--no-profile", "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["export"]["passed"]


# --- 6. Hugging Face folder with custom code ---------------------------------------------------


def test_auto_map_folder_imports_nothing_without_trust_remote_code(runner, tmp_path):
    canary = tmp_path / "canary"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil",
        "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
    }))
    code = f"from pathlib import Path\nPath({str(canary)!r}).touch()\n"
    (folder / "modeling_evil.py").write_text(code)
    (folder / "configuration_evil.py").write_text(code)
    out = tmp_path / "out"
    for task in ("feature-extraction", "text-classification"):
        r = runner.invoke(app, ["export", str(folder), "--task", task, "-o", str(out)])
        _refused(r, out, canary, "auto_map", "--trust-remote-code")
    assert not any("modeling_evil" in m or "configuration_evil" in m for m in sys.modules)


# --- 7. broken safetensors and non-finite weights -------------------------------------------------


def _write_safetensors(path: Path, header: dict, data: bytes, *, claimed_len: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if claimed_len is None else claimed_len) + raw + data)
    return path


def test_safetensors_header_length_past_end(runner, tmp_path):
    w = _write_safetensors(tmp_path / "w.safetensors", {"fc.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}},
                           bytes(32), claimed_len=1 << 40)
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", FACTORY, "--weights", str(w), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, tmp_path / "canary", "w.safetensors", "header length", "past the end")


def test_safetensors_overlapping_offsets(runner, tmp_path):
    header = {
        "fc.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        "fc.bias": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},
    }
    w = _write_safetensors(tmp_path / "w.safetensors", header, bytes(32))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", FACTORY, "--weights", str(w), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, tmp_path / "canary", "overlap", "fc.weight", "fc.bias")


def test_safetensors_offsets_past_data_section(runner, tmp_path):
    header = {"fc.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [16, 48]}}
    w = _write_safetensors(tmp_path / "w.safetensors", header, bytes(32))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", FACTORY, "--weights", str(w), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, tmp_path / "canary", "outside the 32-byte data section")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_safetensors_with_non_finite_weights(runner, tmp_path, bad):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in Tiny().state_dict().items()}
    sd["fc.weight"][1, 2] = bad
    w = tmp_path / "w.safetensors"
    save_file(sd, str(w))
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", FACTORY, "--weights", str(w), "--example-shape", "x=1x4", "-o", str(out)])
    _refused(r, out, tmp_path / "canary", "non-finite", "fc.weight")


def test_hf_folder_with_nan_safetensors(runner, tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf"
    cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    transformers.BertModel(cfg).save_pretrained(folder)
    st = folder / "model.safetensors"
    sd = load_file(str(st))
    name = sorted(sd)[0]
    sd[name].view(-1)[0] = float("nan")
    save_file(sd, str(st), metadata={"format": "pt"})
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(folder), "--task", "feature-extraction", "-o", str(out)])
    _refused(r, out, tmp_path / "canary", "non-finite", name)


def test_the_canary_payload_is_live(tmp_path):
    """The payload above really runs when unpickled without restrictions (so its absence means something)."""
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(canary)}, str(path))
    torch.load(str(path), weights_only=False)
    assert canary.exists()
