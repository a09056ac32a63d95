"""Remote device over SSH: copy a bundle, run its own ``run.py`` there, bring the JSON back.

``edgeq profile BUNDLE --device ssh://user@host[:port]`` uses the system OpenSSH
client (``ssh`` and ``scp``), never a password: ``BatchMode=yes`` so a missing key
fails at once instead of prompting, a connect timeout, and strict host-key
checking against ``~/.ssh/known_hosts`` or the file given with ``--known-hosts``
(``--accept-new-host-key`` trusts a host seen for the first time and records it).

The device needs Python 3 with numpy and onnxruntime; the bundle's runner checks
every checksum, runs the golden pairs and times the model there. Those figures
are measured on the device: they are device timings. The bundle is copied into a
fresh ``mktemp -d`` folder on the device and removed afterwards.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core import child
from ..errors import BundleError, EdgeqError


class RemoteError(EdgeqError):
    """The device cannot be reached, refuses the login, or cannot run the bundle."""


@dataclass(frozen=True)
class Device:
    """``ssh://user@host[:port]``."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def scp_destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}{':' + str(self.port) if self.port else ''}"


_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
_USER_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def parse_device(url: str) -> Device:
    """Parse ``ssh://[user@]host[:port]``; anything else is refused with an example."""
    example = "pass --device ssh://user@host or ssh://user@host:2222"
    parts = urlsplit(url.strip())
    if parts.scheme != "ssh":
        raise RemoteError(f"unsupported device '{url}': only ssh:// devices are supported", example)
    try:
        port = parts.port
    except ValueError:
        raise RemoteError(f"device '{url}' has an invalid port", example) from None
    host = parts.hostname or ""
    user = unquote(parts.username) if parts.username else None
    if parts.password is not None:
        raise RemoteError("a password in the device URL is not supported", "use an SSH key (ssh-copy-id), with --identity if needed")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RemoteError(f"device '{url}' has a path or query; edgeq chooses the folder on the device", example)
    if not host or not _HOST_RE.match(host) or host.startswith("-"):
        raise RemoteError(f"device '{url}' has no valid host name", example)
    if user is not None and (not _USER_RE.match(user) or user.startswith("-")):
        raise RemoteError(f"device '{url}' has an invalid user name", example)
    return Device(host=host, user=user, port=port)


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path | None = None
    """Trust only the host keys in this file (else ~/.ssh/known_hosts)."""
    accept_new_host_key: bool = False
    """Trust and record a host key seen for the first time (never a changed one)."""
    identity: Path | None = None
    connect_timeout_s: int = 10
    command_timeout_s: float = 900.0
    python: str = "python3"
    """Interpreter on the device (needs numpy and onnxruntime)."""

    def ssh_args(self) -> list[str]:
        args = [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
            "-o", "LogLevel=ERROR",
        ]
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return args


def _ssh(device: Device, opts: SshOptions) -> list[str]:
    return ["ssh", *opts.ssh_args(), *(["-p", str(device.port)] if device.port else []), "--", device.destination]


def _explain(device: Device, opts: SshOptions, stderr: str, what: str) -> RemoteError:
    text = " ".join(stderr.strip().split())[-300:] or "no message"
    low = text.lower()
    if "host key verification failed" in low or "no matching host key" in low or "remote host identification has changed" in low:
        where = opts.known_hosts or "~/.ssh/known_hosts"
        hint = (f"add the device's host key to {where} (ssh-keyscan -p PORT HOST >> {where}, after checking its fingerprint), "
                "or pass --accept-new-host-key to trust a first-seen key")
    elif "permission denied" in low:
        hint = f"install your public key on the device (ssh-copy-id {device.destination}) or pass --identity KEY"
    elif "connection refused" in low or "timed out" in low or "could not resolve" in low or "no route" in low:
        hint = f"check that {device.host} is on and runs sshd on port {device.port or 22}"
    else:
        hint = f"try: ssh {'-p ' + str(device.port) + ' ' if device.port else ''}{device.destination}"
    return RemoteError(f"{what} on {device.url()} failed: {text}", hint)


def _run(cmd: list[str], opts: SshOptions, *, timeout: float | None = None) -> child.CompletedProcess:
    try:
        return child.run(cmd, capture_output=True, text=True, timeout=timeout or opts.command_timeout_s)
    except FileNotFoundError:
        raise RemoteError(f"{cmd[0]} is not installed", "install the OpenSSH client (apt-get install openssh-client)") from None
    except child.TimeoutExpired:
        raise RemoteError(f"{cmd[0]} did not finish within {timeout or opts.command_timeout_s:.0f} s",
                          "check the device, or raise --device-timeout") from None


def _local_check(bundle: Path) -> dict[str, Any]:
    from ..bundles.reader import MANIFEST, read_bundle

    if not bundle.is_dir() or not (bundle / MANIFEST).is_file():
        raise BundleError(f"not a bundle: {bundle} (no {MANIFEST})",
                          "pass the folder edgeq export wrote; --device runs bundles, not bare models")
    try:
        b = read_bundle(bundle)  # the one reader: manifest, schema, file list, checksums
    except BundleError as e:
        raise BundleError(e.message, "rebuild it with edgeq export before sending it to a device") from None
    if "run.py" not in b.files:
        raise BundleError(f"bundle {bundle} has no run.py", "rebuild it with edgeq export")
    return b.manifest


def run_on_device(
    bundle: Path,
    device: Device | str,
    opts: SshOptions | None = None,
    *,
    model: str = "ort",
    runs: int = 50,
    warmup: int = 5,
    threads: int = 0,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """Copy ``bundle`` to the device, run ``run.py --json`` there (timing with ``runs`` > 0), clean up.

    Returns the runner's JSON (checks, golden pairs, ``platform``, ``timing``)
    plus ``device`` and ``remote_dir``. A bundle corrupt on arrival raises
    BundleError; golden pairs outside tolerance are reported with ``passed`` False.
    """
    bundle = Path(bundle).absolute()
    dev = parse_device(device) if isinstance(device, str) else device
    opts = opts or SshOptions()
    for p, what in ((opts.known_hosts, "known_hosts file"), (opts.identity, "identity file")):
        if p is not None and not Path(p).is_file():
            raise RemoteError(f"{what} not found: {p}", "check the path")
    _local_check(bundle)
    ssh = _ssh(dev, opts)
    r = _run(ssh + ['mktemp -d "${TMPDIR:-/tmp}/edgeq-XXXXXXXX"'], opts, timeout=opts.connect_timeout_s + 30)
    if r.returncode != 0:
        raise _explain(dev, opts, r.stderr, "connecting")
    remote_dir = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if not remote_dir.startswith("/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", remote_dir):
        raise RemoteError(f"the device returned an unexpected temporary folder: {remote_dir!r}", "check that the device has mktemp")
    try:
        scp = ["scp", "-q", "-r", *opts.ssh_args(), *(["-P", str(dev.port)] if dev.port else []),
               "--", str(bundle), f"{dev.scp_destination}:{remote_dir}/bundle"]
        r = _run(scp, opts)
        if r.returncode != 0:
            raise _explain(dev, opts, r.stderr, "copying the bundle")
        rb = f"{remote_dir}/bundle"
        args = [opts.python, f"{rb}/run.py", rb, "--json", "--model", model]
        if providers:
            args += ["--providers", ",".join(providers)]
        if runs > 0:
            args += ["--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads)]
        r = _run(ssh + [" ".join(shlex.quote(a) for a in args)], opts)
        result = _parse_runner(r, dev, opts)
    finally:
        _run(ssh + [f"rm -rf -- {shlex.quote(remote_dir)}"], opts, timeout=opts.connect_timeout_s + 30)
    if "error" in result and result.get("onnxruntime_refused") is True:  # the files arrived intact; this onnxruntime cannot run them
        raise RemoteError(f"onnxruntime on {dev.url()} cannot run the bundle's model: {str(result['error'])[:300]}",
                          "export for this device's target (an operator or format its onnxruntime lacks), or update onnxruntime there")
    if "error" in result:
        raise BundleError(f"the bundle is corrupt on {dev.url()}: {result['error']}", "the copy was damaged; retry")
    result["device"] = dev.url()
    result["remote_dir"] = remote_dir
    if "timing" in result:
        result["timing"]["device_measurement"] = True
    return result


def _parse_runner(r: child.CompletedProcess, dev: Device, opts: SshOptions) -> dict[str, Any]:
    if r.returncode == 255:
        raise _explain(dev, opts, r.stderr, "running the bundle")
    try:
        return json.loads(r.stdout)
    except ValueError:
        pass
    err = (r.stderr or r.stdout).strip()
    last = err.splitlines()[-1][:300] if err else f"exit {r.returncode}, no output"
    if "No module named" in err:
        hint = f"install numpy and onnxruntime for {opts.python} on the device (pip install onnxruntime numpy), or pass --device-python"
    elif "unrecognized arguments" in err:
        hint = "the bundle's run.py predates on-device timing: rebuild the bundle with this edgeq"
    elif r.returncode == 127 or "not found" in err:
        hint = f"{opts.python} is not on the device: install Python 3, or pass --device-python /path/to/python3"
    else:
        hint = "run the bundle's run.py on the device by hand to see the full error"
    raise RemoteError(f"the bundle runner failed on {dev.url()}: {last}", hint)


def check_remote(result: dict[str, Any]) -> None:
    """CheckFailed (exit 1) when the device computes golden outputs outside tolerance."""
    from ..bundles.bundle import check_golden

    check_golden(result, on=result["device"],
                 hint="the device's onnxruntime computes different results than the machine that built the bundle")


def device_tables(result: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    from ..reporting.tables import fmt
    from ..core.safetext import escape_markup as esc  # what the device and the bundle's manifest report is data

    p = result.get("platform", {})
    head = Table(title=esc(f"edgeq profile on {result['device']} (measured on the device)"), show_header=False)
    head.add_column("k")
    head.add_column("v")
    head.add_row("device", esc(f"{p.get('machine', '?')} {p.get('cpu', '')} ({p.get('cpu_count', '?')} CPUs), {p.get('system', '')}"))
    head.add_row("runtime", esc(f"Python {p.get('python', '?')}, onnxruntime {p.get('onnxruntime', '?')}, {result['model']} on {result['providers'][0]}"))
    head.add_row("checks", f"{result['files_checked']} files, {len(result['pairs'])} golden pairs: "
                 f"{'pass' if result['passed'] else '[red]FAIL[/]'} (max abs error {fmt(result['max_abs_error'])})")
    out = [head]
    t = result.get("timing")
    if t:
        tt = Table(title=esc(f"latency on the device ({t['model']}, {t['runs']} runs after {t['warmup']} warm-up)"))
        tt.add_column("metric")
        tt.add_column("value", justify="right", no_wrap=True)
        peak = t.get("peak_rss_kib")
        for k, v in (("cold start (session + first run)", f"{t['cold_start_ms']:.2f} ms"), ("p50", f"{t['p50_ms']:.4f} ms"),
                     ("p90", f"{t['p90_ms']:.4f} ms"), ("p99", f"{t['p99_ms']:.4f} ms"), ("mean", f"{t['mean_ms']:.4f} ms"),
                     ("coefficient of variation", fmt(t["cv"], ".3f")),
                     ("peak RSS (whole runner process)", "-" if peak is None else f"{peak / 1024:.1f} MiB")):
            tt.add_row(k, v)
        out.append(tt)
    return out
