"""profile --device ssh://...: against a real sshd that the test starts on 127.0.0.1 with throw-away keys."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeq.cli import app
from edgeq.devices.ssh import parse_device, RemoteError

from tests.models import cnn_data, make_cnn, snapshot

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeq-test", "-f", str(path)], check=True)


class Sshd:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.port = _free_port()
        self.user = getpass.getuser()
        _keygen(tmp / "host_key")
        _keygen(tmp / "user_key")
        _keygen(tmp / "other_key")
        (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
        os.chmod(tmp / "authorized_keys", 0o600)
        host_pub = (tmp / "host_key.pub").read_text().split()
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.host_key_line = f"{host_pub[0]} {host_pub[1]}"
        cfg = tmp / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {tmp / 'host_key'}",
            f"PidFile {tmp / 'sshd.pid'}",
            f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
        ]) + "\n")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.proc.stderr.read().decode()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("sshd did not start listening within 15 s")

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def args(self, *, key: str = "user_key", known_hosts: Path | None = None) -> list[str]:
        return ["--device", self.url, "--identity", str(self.dir / key), "--known-hosts", str(known_hosts or self.known_hosts),
                "--device-python", sys.executable]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sshd(tmp_path: Path):
    if not os.path.exists(SSHD) or not shutil.which("ssh") or not shutil.which("scp"):
        pytest.skip("OpenSSH server/client not installed (apt-get install openssh-server)")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    d = tmp_path / "sshd"
    d.mkdir()
    server = Sshd(d)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def built_bundle(tmp_path_factory) -> Path:
    """One arm64 bundle of the tiny CNN for the whole module (an export is the slow part of each test)."""
    d = tmp_path_factory.mktemp("remote-bundle")
    cnn = make_cnn(d / "cnn.onnx")
    np.savez(d / "calib.npz", **cnn_data(64, seed=1))
    out = d / "bundle"
    r = CliRunner().invoke(app, ["export", str(cnn), "-o", str(out), "--target", "arm64", "--calib", str(d / "calib.npz"), "--no-profile"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def bundle(built_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy per test: some tests change the bundle."""
    return Path(shutil.copytree(built_bundle, tmp_path / "bundle", symlinks=True))


def test_profile_on_device_copies_checks_and_times_there(runner, sshd, bundle):
    before = snapshot(bundle)
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(), "--runs", "25", "--warmup", "2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["device"] == sshd.url
    (d,) = res["results"]
    # the device ran the bundle's own runner: every file checked, every golden pair compared
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert d["files_checked"] == len(manifest["files"])
    assert [p["pair"] for p in d["pairs"]] == [p["id"] for p in manifest["golden"]["pairs"]]
    assert d["passed"] and all(p["passed"] for p in d["pairs"])
    assert d["max_abs_error"] <= manifest["golden"]["atol"]
    assert d["model"] == "model.ort" and d["providers"][0] == "CPUExecutionProvider"
    # figures measured on the device, labelled as such
    t = d["timing"]
    assert t["device_measurement"] is True
    assert t["runs"] == 25 and t["warmup"] == 2
    assert 0 < t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"]
    assert t["cold_start_ms"] >= t["session_create_ms"] > 0
    assert t["peak_rss_kib"] and t["peak_rss_kib"] >= t["rss_before_session_kib"]
    assert d["platform"]["machine"] == platform.machine()
    import onnxruntime

    assert d["platform"]["onnxruntime"] == onnxruntime.__version__
    # the copy on the device is gone, the local bundle untouched
    assert d["remote_dir"].startswith("/") and not Path(d["remote_dir"]).exists()
    assert snapshot(bundle) == before


def test_profile_on_device_table(runner, sshd, bundle):
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(), "--runs", "10"])
    assert r.exit_code == 0, r.output
    for word in ("measured on the device", "golden pairs", "pass", "p50", "p99", "cold start", "onnxruntime"):
        assert word in r.stdout


def test_unknown_host_key_is_refused_unless_accepted(runner, sshd, bundle, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(known_hosts=empty), "--runs", "5"])
    assert r.exit_code == 2
    assert "host key verification failed" in r.stderr.lower() and "--accept-new-host-key" in r.stderr
    assert empty.read_text() == ""
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(known_hosts=empty), "--runs", "5", "--accept-new-host-key", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["passed"]
    assert sshd.host_key_line in empty.read_text()  # recorded for next time
    # a changed key is never accepted
    empty.write_text(f"[127.0.0.1]:{sshd.port} {(sshd.dir / 'other_key.pub').read_text().split()[0]} "
                     f"{(sshd.dir / 'other_key.pub').read_text().split()[1]}\n")
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(known_hosts=empty), "--runs", "5", "--accept-new-host-key"])
    assert r.exit_code == 2 and "host key" in r.stderr.lower()


def test_wrong_key_and_missing_python_are_one_line_errors(runner, sshd, bundle):
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(key="other_key"), "--runs", "5"])
    assert r.exit_code == 2
    assert "permission denied" in r.stderr.lower() and "ssh-copy-id" in r.stderr
    args = sshd.args()
    args[args.index("--device-python") + 1] = "/nonexistent/python3"
    r = runner.invoke(app, ["profile", str(bundle), *args, "--runs", "5"])
    assert r.exit_code == 2
    assert "runner failed" in r.stderr and "--device-python" in r.stderr


def _rewrite_entry(bundle: Path, rel: str) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / rel).read_bytes()
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def test_golden_pair_failing_on_device_exits_1_with_figures(runner, sshd, bundle):
    # a consistent bundle (checksums match) whose golden output the device cannot reproduce
    rel = "golden/001/out_0.npy"
    want = np.load(bundle / rel)
    np.save(bundle / rel, want + 0.5)
    _rewrite_entry(bundle, rel)
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(), "--runs", "5", "--json"])
    assert r.exit_code == 1
    (d,) = json.loads(r.stdout)["results"]
    assert [p["passed"] for p in d["pairs"]] == [True, False, True]
    assert d["pairs"][1]["max_abs_error"] == pytest.approx(0.5, abs=1e-3)
    assert "golden pair(s) 001 outside tolerance" in r.stderr and sshd.url in r.stderr


def test_a_model_the_device_onnxruntime_refuses_is_not_called_a_damaged_copy(runner, sshd, bundle):
    # intact files (checksums match) that onnxruntime on the device cannot load: the model does not run there,
    # which says so in one line, not "corrupt on arrival; retry"
    (bundle / "model.ort").write_bytes(b"\x08not an ort model")
    _rewrite_entry(bundle, "model.ort")
    r = runner.invoke(app, ["profile", str(bundle), *sshd.args(), "--runs", "5"])
    assert r.exit_code == 2, r.output
    assert "cannot run the bundle's model" in r.stderr and sshd.url in r.stderr
    assert "damaged" not in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_corrupt_bundle_is_refused_before_connecting(runner, bundle):
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"x")
    # port 9 on localhost: nothing is contacted because the local check fails first
    r = runner.invoke(app, ["profile", str(bundle), "--device", "ssh://nobody@127.0.0.1:9"])
    assert r.exit_code == 2 and "corrupt" in r.stderr and "checksum mismatch: model.onnx" in r.stderr


def test_device_urls_are_validated(runner, bundle):
    assert parse_device("ssh://pi@raspberrypi.local:2222").port == 2222
    assert parse_device("ssh://[::1]:22").scp_destination == "[::1]"
    assert parse_device("ssh://board").user is None
    for bad, word in [("http://host", "only ssh://"), ("ssh://u:pw@host", "password"), ("ssh://host/tmp", "path"),
                      ("ssh://-oProxyCommand=x", "host"), ("ssh://host:99999", "port")]:
        with pytest.raises(RemoteError, match=word):
            parse_device(bad)
    r = runner.invoke(app, ["profile", str(bundle), "--device", "ftp://host"])
    assert r.exit_code == 2 and "only ssh:// devices" in r.stderr
