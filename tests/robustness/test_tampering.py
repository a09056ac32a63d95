"""Issue 8, item 11: tampered bundles are refused by ``edgeq verify`` (and by run.py on the device).

One signed bundle (version 2), one older signed bundle (version 1) and one
unsigned bundle are built once; each test tampers with a copy.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.bundles.archive import write_archive
from edgeq.cli import app

from tests.bundles import build, keypair


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("tamper")
    key, pub = keypair(d / "key.pem")
    other_key, other_pub = keypair(d / "other.pem")
    return {
        "v2": build(d / "v2", sign_key=key, bundle_version=2),
        "v1": build(d / "v1", sign_key=key, bundle_version=1, seed=5),
        "unsigned": build(d / "unsigned"),
        "key": key, "pub": pub, "other_key": other_key, "other_pub": other_pub,
    }


@pytest.fixture
def copy(built, tmp_path):
    def _copy(name: str = "v2") -> Path:
        dst = tmp_path / name
        shutil.copytree(built[name], dst)
        return dst

    return _copy


def _verify(runner, path: Path, *extra: str):
    r = runner.invoke(app, ["verify", str(path), *extra])
    return r.exit_code, r.stderr.strip()


def _refused(runner, path, *words, extra=()):
    code, err = _verify(runner, path, *extra)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_intact_bundles_pass(runner, built):
    code, err = _verify(runner, built["v2"], "--pubkey", str(built["pub"]), "--min-version", "2")
    assert code == 0, err
    r = runner.invoke(app, ["verify", str(built["v2"]), "--pubkey", str(built["pub"]), "--json"])
    res = json.loads(r.stdout)
    assert res["signature_checked"] and res["bundle_version"] == 2 and res["passed"]
    assert res["files_checked"] == len(json.loads((built["v2"] / "manifest.json").read_text())["files"])
    assert _verify(runner, built["unsigned"])[0] == 0


@pytest.mark.parametrize("rel", ["model.ort", "model.onnx", "golden/001/out_0.npy", "run.py", "cpp/runner.cpp"])
def test_a_flipped_byte_is_refused(runner, copy, rel):
    b = copy()
    p = b / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    _refused(runner, b, f"checksum mismatch: {rel}")


def test_added_file_is_refused(runner, copy):
    b = copy()
    (b / "golden" / "000" / "extra.npy").write_bytes(b"x")
    _refused(runner, b, "file not in the manifest: golden/000/extra.npy")


def test_removed_file_is_refused(runner, copy):
    b = copy()
    (b / "required_operators_and_types.config").unlink()
    _refused(runner, b, "file missing from the bundle: required_operators_and_types.config")


def test_renamed_file_is_refused(runner, copy):
    b = copy()
    (b / "model.ort").rename(b / "model2.ort")
    _refused(runner, b, "model2.ort")


def test_symlinked_file_is_refused(runner, copy, tmp_path):
    b = copy()
    real = tmp_path / "elsewhere.ort"
    shutil.move(b / "model.ort", real)
    (b / "model.ort").symlink_to(real)
    _refused(runner, b, "not a regular file: model.ort")


def test_swapped_manifest_is_refused_even_with_its_valid_signature(runner, copy, built):
    b = copy()
    for name in ("manifest.json", "manifest.json.sig"):  # the older bundle's manifest, correctly signed
        shutil.copyfile(built["v1"] / name, b / name)
    _refused(runner, b, "checksum mismatch", extra=("--pubkey", str(built["pub"])))
    _refused(runner, b, "checksum mismatch")


def test_edited_manifest_breaks_the_signature(runner, copy, built):
    b = copy()
    m = json.loads((b / "manifest.json").read_text())
    m["bundle_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    _refused(runner, b, "signature does not match manifest.json", extra=("--pubkey", str(built["pub"])))


def test_resigned_by_another_key_is_refused(runner, copy, built):
    from edgeq.bundles.bundle import load_private_key

    b = copy()
    data = (b / "manifest.json").read_bytes()
    sig = load_private_key(built["other_key"]).sign(data)
    (b / "manifest.json.sig").write_text(base64.b64encode(sig).decode() + "\n")
    _refused(runner, b, "signature does not match", extra=("--pubkey", str(built["pub"])))
    # the attacker's own key would accept it: the device must hold the publisher's key
    assert _verify(runner, b, "--pubkey", str(built["other_pub"]))[0] == 0


def test_unsigned_bundle_is_refused_when_a_key_is_required(runner, built):
    _refused(runner, built["unsigned"], "not signed", extra=("--pubkey", str(built["pub"])))


def test_older_signed_bundle_replayed_is_refused(runner, built):
    _refused(runner, built["v1"], "version 1 is older than the minimum 2", extra=("--pubkey", str(built["pub"]), "--min-version", "2"))
    assert _verify(runner, built["v1"], "--pubkey", str(built["pub"]), "--min-version", "1")[0] == 0


def test_version_check_without_a_key_is_refused(runner, built):
    _refused(runner, built["v2"], "--min-version needs --pubkey", extra=("--min-version", "1"))


def test_loosened_tolerance_is_refused_without_a_key(runner, copy):
    b = copy("unsigned")
    m = json.loads((b / "manifest.json").read_text())
    m["golden"]["atol"] = 1e9
    (b / "manifest.json").write_text(json.dumps(m))
    _refused(runner, b, "looser than target arm64")


def test_manifest_naming_a_path_outside_is_refused_by_the_schema(runner, copy):
    b = copy("unsigned")
    m = json.loads((b / "manifest.json").read_text())
    m["golden"]["pairs"][0]["inputs"][0] = "../../etc/passwd"
    (b / "manifest.json").write_text(json.dumps(m))
    _refused(runner, b, "does not match the manifest schema", "golden/pairs/0/inputs/0")


def test_manifest_that_is_not_json_or_too_big(runner, copy):
    b = copy("unsigned")
    (b / "manifest.json").write_bytes(b"\xff{not json")
    _refused(runner, b, "not valid JSON")
    (b / "manifest.json").write_bytes(b" " * (17 << 20))
    _refused(runner, b, "larger than")


def test_flipped_byte_in_archive_is_refused(runner, built, tmp_path):
    arc = write_archive(built["v2"], tmp_path / "v2.tar.gz", "tar.gz")
    assert _verify(runner, arc, "--pubkey", str(built["pub"]))[0] == 0
    data = bytearray(arc.read_bytes())
    data[len(data) // 2] ^= 0x40
    arc.write_bytes(bytes(data))
    code, err = _verify(runner, arc, "--pubkey", str(built["pub"]))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "refused" in err and "nothing was extracted" in err  # caught by gzip's checksum, before writing


def test_run_py_on_the_device_refuses_a_tampered_bundle(copy):
    b = copy()
    ok = subprocess.run([sys.executable, str(b / "run.py"), str(b)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout
    p = b / "golden" / "000" / "in_0.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x10
    p.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, str(b / "run.py"), str(b)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "checksum mismatch: golden/000/in_0.npy" in bad.stderr
