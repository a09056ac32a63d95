"""ARM64 off-device: run a bundle's own runner under qemu-aarch64 with the aarch64 onnxruntime wheel.

Correctness only. Integer kernels differ between CPU features (dot product,
i8mm, narrow-load cores), so the same quantized file can compute different
answers on different Arm cores. This module runs the bundle's ``run.py``
(numpy + onnxruntime) inside a Debian arm64 userland under
``qemu-aarch64-static -cpu MODEL`` for several CPU models and compares the
outputs with the golden outputs computed on the x86 host that built the bundle.

Emulated timings are not device timings: nothing here reports one. The only
clock reading kept is the emulator's wall time, labelled as emulation overhead.

The userland is built once and cached (``EDGEQ_ARM64_ROOT``, default
``~/.cache/edgeq/arm64-root``):

1. ``debootstrap --variant=minbase --arch=arm64 --foreign --include=python3 bookworm ROOT``
2. ``dpkg -x`` of every downloaded .deb into ROOT (the foreign first stage leaves
   most packages unpacked only as .deb files)
3. ``pip install --target ROOT/opt/edgeq/site --platform manylinux..._aarch64 --only-binary=:all:``
   onnxruntime (the host's version when PyPI has it) and numpy
4. a per-CPU ``ROOT/proc/cpuinfo`` is written before each run: onnxruntime's
   cpuinfo library crashes on the host's x86 cpuinfo.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core import child
from ..errors import BundleError, CheckFailed, ProviderError

ROOT_ENV = "EDGEQ_ARM64_ROOT"
QEMU_ENV = "EDGEQ_QEMU"
MIRROR_ENV = "EDGEQ_DEBIAN_MIRROR"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SITE = "/opt/edgeq/site"  # as seen inside the userland
STAMP = ".edgeq-arm64-root.json"
DEFAULT_CPUS = ("cortex-a53", "cortex-a72", "neoverse-n1")
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")

_BASE_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82_FEATURES = _BASE_FEATURES + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
# qemu -cpu name -> (MIDR part number, /proc/cpuinfo Features line). The features match
# the HWCAPs qemu-user reports for that model; onnxruntime reads both.
CPU_MODELS: dict[str, tuple[int, str]] = {
    "cortex-a35": (0xD04, _BASE_FEATURES),
    "cortex-a53": (0xD03, _BASE_FEATURES),
    "cortex-a57": (0xD07, _BASE_FEATURES),
    "cortex-a72": (0xD08, _BASE_FEATURES),
    "cortex-a55": (0xD05, _V82_FEATURES),
    "cortex-a76": (0xD0B, _V82_FEATURES),
    "neoverse-n1": (0xD0C, _V82_FEATURES),
    "max": (0xD0C, _V82_FEATURES + " sha3 sm3 sm4 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 i8mm bf16"),
}


class EmulationError(ProviderError):
    """The ARM64 emulator or its userland cannot be set up or crashed."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EmulationConfig:
    """Where the userland lives and which tools build and run it."""

    root: Path
    qemu: str = "qemu-aarch64-static"
    mirror: str = DEFAULT_MIRROR
    suite: str = SUITE
    onnxruntime_version: str | None = None  # None: the host's version when PyPI has it
    timeout_s: float = 1800.0  # per emulated run

    @classmethod
    def from_env(cls, **overrides: Any) -> "EmulationConfig":
        root = os.environ.get(ROOT_ENV) or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeq" / "arm64-root")
        base = cls(
            root=Path(root).expanduser().absolute(),
            qemu=os.environ.get(QEMU_ENV) or "qemu-aarch64-static",
            mirror=os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR,
        )
        return base if not overrides else cls(**{**asdict(base), **overrides})


def parse_cpus(text: str) -> tuple[str, ...]:
    """``cortex-a53,neoverse-n1`` -> a tuple of known qemu CPU models (``default``: the three defaults)."""
    names = tuple(dict.fromkeys(c.strip().lower() for c in text.split(",") if c.strip()))
    if not names or names == ("default",):
        return DEFAULT_CPUS
    unknown = [n for n in names if n not in CPU_MODELS]
    if unknown:
        raise EmulationError(
            f"unknown emulated CPU model '{unknown[0]}'",
            f"choose from {', '.join(CPU_MODELS)} (comma-separated), or 'default' for {','.join(DEFAULT_CPUS)}",
        )
    return names


def cpuinfo_text(cpu: str, n: int | None = None) -> str:
    """An ARM-looking /proc/cpuinfo for ``cpu`` (one entry per host CPU)."""
    part, features = CPU_MODELS[cpu]
    n = n or os.cpu_count() or 1
    block = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0x{part:03x}\nCPU revision\t: 0\n\n"
    )
    return "".join(block.format(i=i, features=features, part=part) for i in range(n))


# ---------------------------------------------------------------- userland setup


@dataclass(frozen=True)
class ArmRoot:
    root: Path
    python: str  # e.g. "3.11"
    onnxruntime: str
    numpy: str
    setup_s: float | None = None  # set when this call built it
    requested_onnxruntime: str = ""  # the version asked of PyPI (installed may differ if it had no aarch64 wheel)

    @property
    def interpreter(self) -> Path:
        return self.root / "usr" / "bin" / f"python{self.python}"


def _need_tool(name: str, package: str) -> str:
    path = shutil.which(name) if not os.path.isabs(name) else (name if os.access(name, os.X_OK) else None)
    if not path:
        raise EmulationError(
            f"{name} is not installed; ARM64 emulation needs it",
            f"install it: apt-get install {package}",
        )
    return path


def load_root(cfg: EmulationConfig) -> ArmRoot | None:
    """The cached userland, or None when it is absent or incomplete."""
    stamp = cfg.root / STAMP
    try:
        info = json.loads(stamp.read_text(encoding="utf-8"))
        r = ArmRoot(root=cfg.root, python=info["python"], onnxruntime=info["onnxruntime"], numpy=info["numpy"],
                    requested_onnxruntime=info.get("requested_onnxruntime", info["onnxruntime"]))
    except (OSError, ValueError, KeyError):
        return None
    if not r.interpreter.exists() or not (cfg.root / SITE.lstrip("/") / "onnxruntime").is_dir():
        return None
    return r


@contextlib.contextmanager
def _locked(cfg: EmulationConfig) -> Iterator[None]:
    """One edgeq process at a time builds the userland or rewrites its cpuinfo."""
    import fcntl

    cfg.root.parent.mkdir(parents=True, exist_ok=True)
    with open(cfg.root.parent / f".{cfg.root.name}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


Step = Callable[[str, int, int], None]  # (description, done, total)


def _stream(cmd: list[str], on_line: Callable[[str], None], what: str, hint: str, env: dict[str, str] | None = None) -> None:
    tail: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            proc = stack.enter_context(child.popen(cmd, stdout=child.PIPE, stderr=child.STDOUT, text=True, env=env))
        except OSError as e:
            raise EmulationError(f"{what} could not start: {e}", hint) from None
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail = (tail + [line])[-5:]
                on_line(line)
        code = proc.wait()
    if code != 0:
        raise EmulationError(f"{what} failed (exit {code}): {' | '.join(tail)[-400:]}", hint)


def _python_version(root: Path) -> str:
    found = sorted(p.name[len("python"):] for p in (root / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    if not found:
        raise EmulationError("the arm64 userland has no python3 after unpacking", f"remove {root} and retry")
    return found[-1]


def _host_ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__.split("+")[0]


def _pip_install(site: Path, py: str, ort_version: str | None, on_line: Callable[[str], None]) -> None:
    base = child.python_argv(sys.executable, [
        "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet",
        "--target", str(Path(site).absolute()), "--only-binary=:all:", "--implementation", "cp", "--python-version", py])
    for plat in WHEEL_PLATFORMS:
        base += ["--platform", plat]
    hint = "check that PyPI is reachable (pip config) and has an aarch64 onnxruntime wheel for this Python"
    pkgs = [f"onnxruntime=={ort_version}" if ort_version else "onnxruntime", "numpy"]
    try:
        _stream(base + pkgs, on_line, "pip install of the aarch64 wheels", hint)
    except EmulationError:
        if not ort_version:
            raise
        on_line(f"no aarch64 wheel of onnxruntime {ort_version}; taking the newest one")
        shutil.rmtree(site, ignore_errors=True)
        _stream(base + ["onnxruntime", "numpy"], on_line, "pip install of the aarch64 wheels", hint)


def _dist_version(site: Path, name: str) -> str:
    for d in site.glob(f"{name}-*.dist-info"):
        return d.name[len(name) + 1 : -len(".dist-info")]
    return "unknown"


def ensure_root(cfg: EmulationConfig | None = None, *, step: Step | None = None) -> ArmRoot:
    """Return the cached arm64 userland, building it first when it is missing (~2 minutes)."""
    cfg = cfg or EmulationConfig.from_env()
    want = cfg.onnxruntime_version or _host_ort_version()
    found = load_root(cfg)
    if found and found.requested_onnxruntime == want:
        return found
    if found:  # the host's onnxruntime changed: swap only the aarch64 wheels (~20 s)
        return _refresh_site(cfg, found, want, step or (lambda d, i, n: None))
    _need_tool(cfg.qemu, "qemu-user-static")
    debootstrap = _need_tool("debootstrap", "debootstrap")
    dpkg = _need_tool("dpkg-deb", "dpkg")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("fakeroot"):
            raise EmulationError("building the arm64 userland needs root (debootstrap)", "run once as root, or install fakeroot")
        prefix = ["fakeroot"]
    step = step or (lambda d, i, n: None)
    from ..core.fsutil import staging

    t0 = time.perf_counter()
    with _locked(cfg):
        found = load_root(cfg)  # another process may have built it while we waited
        if found:
            return found
        with staging(cfg.root, force=True, is_dir=True, replace_any=True) as tmp:  # edgeq's own cache
            step("debootstrap: starting", 0, 0)
            _stream(
                prefix + [debootstrap, "--variant=minbase", "--arch=arm64", "--foreign", "--include=python3",
                          cfg.suite, str(tmp), cfg.mirror],
                lambda line: step(f"debootstrap: {line[:70]}", 0, 0),
                "debootstrap of the Debian arm64 userland",
                f"check that {cfg.mirror} is reachable (set {MIRROR_ENV} for another mirror)",
            )
            debs = sorted((tmp / "var" / "cache" / "apt" / "archives").glob("*.deb"))
            for i, deb in enumerate(debs):
                step(f"unpacking {deb.name.split('_')[0]}", i, len(debs))
                r = child.run([dpkg, "-x", str(deb), str(tmp)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise EmulationError(f"dpkg -x {deb.name} failed: {r.stderr.strip()[:300]}", "retry; the download may be damaged")
                deb.unlink()
            # /dev from the host (device nodes in the root may be plain files); /proc only for cpuinfo
            shutil.rmtree(tmp / "dev", ignore_errors=True)
            shutil.rmtree(tmp / "proc", ignore_errors=True)
            (tmp / "proc").mkdir()
            for junk in ("debootstrap", "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
                shutil.rmtree(tmp / junk, ignore_errors=True)
            py = _python_version(tmp)
            site = tmp / SITE.lstrip("/")
            step(f"pip: aarch64 onnxruntime {want} + numpy for Python {py}", len(debs), len(debs))
            _pip_install(site, py, want, lambda line: step(f"pip: {line[:70]}", len(debs), len(debs)))
            info = {"suite": cfg.suite, "python": py, "onnxruntime": _dist_version(site, "onnxruntime"),
                    "numpy": _dist_version(site, "numpy"), "mirror": cfg.mirror, "requested_onnxruntime": want}
            (tmp / STAMP).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    built = load_root(cfg)
    if built is None:  # pragma: no cover - staging published an incomplete tree
        raise EmulationError(f"the arm64 userland at {cfg.root} is incomplete after setup", f"remove {cfg.root} and retry")
    return ArmRoot(**{**asdict(built), "setup_s": round(time.perf_counter() - t0, 1)})


def _refresh_site(cfg: EmulationConfig, arm: ArmRoot, want: str, step: Step) -> ArmRoot:
    site = cfg.root / SITE.lstrip("/")
    new = site.with_name(site.name + ".new")
    with _locked(cfg):
        shutil.rmtree(new, ignore_errors=True)
        step(f"pip: aarch64 onnxruntime {want} (was {arm.onnxruntime})", 0, 0)
        try:
            _pip_install(new, arm.python, want, lambda line: step(f"pip: {line[:70]}", 0, 0))
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        shutil.rmtree(site)
        os.replace(new, site)
        stamp = cfg.root / STAMP
        info = json.loads(stamp.read_text(encoding="utf-8"))
        info.update(onnxruntime=_dist_version(site, "onnxruntime"), numpy=_dist_version(site, "numpy"), requested_onnxruntime=want)
        stamp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    found = load_root(cfg)
    assert found is not None
    return found


def progress_step() -> tuple[Step, Callable[[], None]]:
    """A rich progress bar on stderr for ``ensure_root``; returns (step, close)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..reporting.tables import err

    prog = Progress(SpinnerColumn(), TextColumn("building arm64 userland (once)"), BarColumn(bar_width=16), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.description}"), console=err, transient=True)
    task = prog.add_task("starting", total=None)
    started = False

    def step(desc: str, done: int, total: int) -> None:
        nonlocal started
        if not started:
            prog.start()
            started = True
        prog.update(task, description=desc, completed=done, total=total or None)

    def close() -> None:
        if started:
            prog.stop()

    return step, close


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class CpuResult:
    cpu: str
    passed: bool
    max_abs_error: float | None
    pairs: tuple[dict[str, Any], ...]
    model: str
    onnxruntime: str
    machine: str
    """What the guest Python reports (aarch64 under qemu)."""
    emulation_overhead_wall_s: float
    """Wall time of the whole emulated run: emulation overhead, NOT device timing."""
    error: str | None = None
    """Why the model did not run on this CPU (it loaded or ran on x86)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = list(self.pairs)
        return d


def _guest_env() -> dict[str, str]:
    # the guest python runs isolated (-I ignores PYTHON* variables): SITE is put on sys.path by the -c code
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime writes no telemetry files
    }


def run_bundle_emulated(bundle: Path, cpu: str, arm: ArmRoot, cfg: EmulationConfig, *, model: str = "ort") -> CpuResult:
    """Run the bundle's own ``run.py --json`` under ``qemu-aarch64 -cpu CPU``."""
    bundle = Path(bundle).absolute()
    runner = bundle / "run.py"
    if not runner.is_file():
        raise BundleError(f"bundle {bundle} has no run.py", "rebuild it with edgeq export")
    qemu = _need_tool(cfg.qemu, "qemu-user-static")
    cmd = child.python_argv(arm.interpreter, ["-c", child.file_with_path_code([SITE]), runner, bundle, "--json", "--model", model],
                            launcher=[qemu, "-L", str(arm.root), "-cpu", cpu], flags=("-B",))
    with _locked(cfg):
        (arm.root / "proc" / "cpuinfo").write_text(cpuinfo_text(cpu), encoding="ascii")
        t0 = time.perf_counter()
        try:
            r = child.run(cmd, capture_output=True, text=True, env=_guest_env(), timeout=cfg.timeout_s)
        except child.TimeoutExpired:
            raise EmulationError(f"the emulated run on {cpu} took more than {cfg.timeout_s:.0f} s",
                                 "emulation is ~200x slower than native: use a bundle with fewer or smaller golden pairs") from None
        wall = time.perf_counter() - t0
    try:
        result = json.loads(r.stdout) if r.returncode in (0, 1, 2) else None
    except ValueError:
        result = None
    if result is None:
        out = (r.stderr or r.stdout).strip()
        if "No module named" in out:
            raise EmulationError(f"the arm64 userland at {arm.root} cannot import the runner's modules: {out.splitlines()[-1][:200]}",
                                 f"remove {arm.root} to rebuild it")
        # the model does not load or run on this CPU (it did on x86): a failed check, not bad input
        why = f"crashed with signal {-r.returncode}" if r.returncode < 0 else "failed"
        last = next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip() and not set(ln.strip()) <= set("^~ ")), "no output")
        return CpuResult(cpu=cpu, passed=False, max_abs_error=None, pairs=(), model="", onnxruntime=arm.onnxruntime,
                         machine="aarch64", emulation_overhead_wall_s=round(wall, 2), error=f"runner {why}: {last[:300]}")
    if "error" in result and result.get("onnxruntime_refused") is True:  # intact files the Arm onnxruntime cannot run
        return CpuResult(cpu=cpu, passed=False, max_abs_error=None, pairs=(), model="", onnxruntime=arm.onnxruntime,
                         machine="aarch64", emulation_overhead_wall_s=round(wall, 2), error=f"runner failed: {str(result['error'])[:300]}")
    if "error" in result:
        raise BundleError(f"bundle {bundle} is corrupt: {result['error']}", "rebuild it with edgeq export, or fetch an intact copy")
    pairs = tuple({k: v for k, v in p.items() if k != "ms"} for p in result["pairs"])  # emulated ms are not device ms
    return CpuResult(
        cpu=cpu,
        passed=bool(result["passed"]),
        max_abs_error=float(result["max_abs_error"]),
        pairs=pairs,
        model=result["model"],
        onnxruntime=result.get("platform", {}).get("onnxruntime", arm.onnxruntime),
        machine=result.get("platform", {}).get("machine", "unknown (run.py predates platform info)"),
        emulation_overhead_wall_s=round(wall, 2),
    )


def emulate_bundle(
    bundle: Path,
    cpus: tuple[str, ...] = DEFAULT_CPUS,
    *,
    model: str = "ort",
    cfg: EmulationConfig | None = None,
    step: Step | None = None,
    on_cpu: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Golden pairs of ``bundle`` on x86 (this host) and on each emulated Arm CPU.

    The golden outputs were computed by the host that built the bundle; each
    row's ``max_abs_error`` is the largest difference from them. ``passed`` is
    False when any CPU is outside the bundle's golden tolerance (the target's
    ``golden_atol``/``golden_rtol``).
    """
    from ..bundles.bundle import run_golden_pairs
    from ..bundles.reader import MANIFEST, read_bundle

    bundle = Path(bundle)
    if not (bundle / MANIFEST).is_file():
        raise BundleError(f"not a bundle: {bundle} (no {MANIFEST})", "pass the folder edgeq export wrote")
    b = read_bundle(bundle)  # the one reader: manifest, schema, file list, checksums
    if "run.py" not in b.files:
        raise BundleError(f"bundle {bundle} has no run.py", "rebuild it with edgeq export")
    host = run_golden_pairs(b, model=model)
    cfg = cfg or EmulationConfig.from_env()
    arm = ensure_root(cfg, step=step)
    rows = []
    for cpu in cpus:
        if on_cpu:
            on_cpu(cpu)
        rows.append(run_bundle_emulated(bundle, cpu, arm, cfg, model=model).to_dict())
    failures = [f"{r['cpu']}: {r['error']}" if r["error"] else
                f"{r['cpu']}: max abs error {r['max_abs_error']:.3g} (atol {host['atol']}, rtol {host['rtol']})"
                for r in rows if not r["passed"]]
    import platform

    return {
        "bundle": str(bundle),
        "target": host["target"],
        "model": host["model"],
        "atol": host["atol"],
        "rtol": host["rtol"],
        "host": {"arch": platform.machine(), "onnxruntime": host.get("platform", {}).get("onnxruntime", ""), "passed": host.get("golden_passed", host["passed"]), "max_abs_error": host["max_abs_error"],
                 "pairs": [{k: v for k, v in p.items() if k != "ms"} for p in host["pairs"]]},
        "emulated": rows,
        "userland": {"root": str(arm.root), "python": arm.python, "onnxruntime": arm.onnxruntime, "numpy": arm.numpy,
                     "qemu": cfg.qemu, "setup_s": arm.setup_s},
        "note": "qemu-aarch64 user-mode emulation: correctness only; emulation_overhead_wall_s is not device timing"
                + ("" if arm.onnxruntime == _host_ort_version() else
                   f"; the aarch64 onnxruntime is {arm.onnxruntime}, the host's {_host_ort_version()}: differences may be the version"),
        "failures": failures,
        "verdict": host.get("verdict"),
        "passed": bool(host["passed"]) and not failures,
    }


def check_emulated(result: dict[str, Any]) -> None:
    """Raise CheckFailed (exit 1) when a CPU model disagrees with x86 beyond the golden tolerance."""
    if not result["host"]["passed"]:
        raise CheckFailed(
            f"the golden pairs already fail on this host (max abs error {result['host']['max_abs_error']:.3g})",
            "the bundle disagrees with its golden outputs before emulation; run edgeq verify BUNDLE",
        )
    if result.get("verdict") == "fail":
        raise CheckFailed("the bundle failed its export check when it was built (manifest verdict: fail)", "run edgeq verify BUNDLE for the reason")
    if result.get("verify") and not result["verify"]["passed"]:
        raise CheckFailed(f"candidate outside the target's tolerances: {'; '.join(result['verify']['failures'])}", "see the table above")
    if result["failures"]:
        if any(r["error"] for r in result["emulated"]):
            hint = ("a model.ort saved at level 'all' holds x86-only kernels (com.microsoft.nchwc): "
                    "set ort_optimization to 'basic' or 'extended' in the target, or check with --model onnx"
                    if any("nchwc" in (r["error"] or "") for r in result["emulated"]) else
                    "the model does not run on that Arm CPU; check with --model onnx, and EDGEQ_DEBUG=1 for details")
            raise CheckFailed(f"the model does not run on emulated Arm CPU(s): {'; '.join(result['failures'])}"[:900], hint)
        raise CheckFailed(
            f"emulated Arm CPU(s) disagree with x86 beyond the target's golden tolerance: {'; '.join(result['failures'])}",
            "kernels differ between x86 and Arm cores (integer dot products, FMA order): check the quantization recipe on the device, "
            "or loosen the target's golden_atol/golden_rtol if the difference is acceptable",
        )


def emulate_model(
    model: Path,
    target: Any,
    feeds: tuple[dict[str, Any], ...],
    cpus: tuple[str, ...] = DEFAULT_CPUS,
    *,
    cfg: EmulationConfig | None = None,
    step: Step | None = None,
    on_cpu: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Like ``emulate_bundle`` for a bare .onnx: bundle it in a scratch folder with ``feeds`` as golden inputs."""
    from ..bundles.bundle import BundleInputs, write_bundle
    from ..core.fsutil import scratch_dir
    from ..core.onnxutil import artifact_from

    art = artifact_from(Path(model))
    with scratch_dir("edgeq-emulate-") as work:
        write_bundle(art, target, work / "bundle", BundleInputs(golden_feeds=feeds))
        result = emulate_bundle(work / "bundle", cpus, model="onnx", cfg=cfg, step=step, on_cpu=on_cpu)
    result["bundle"] = None
    result["model_path"] = str(model)
    return result


def emulate_candidate(
    candidate: Path,
    cpus: tuple[str, ...],
    *,
    model: str = "ort",
    reference: Path | None = None,
    data: Path | None = None,
    target: str = "arm64",
    labels_key: str = "labels",
    cfg: EmulationConfig | None = None,
    step: Step | None = None,
    on_cpu: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``edgeq verify X --emulate``: a bundle folder, or a model with ``data`` (and optionally ``reference``).

    For a model, the first three samples of ``data`` are the inputs compared
    between x86 and each emulated CPU; with ``reference``, the usual x86 verify
    report against fp32 is added under ``verify`` and counts towards ``passed``.
    """
    candidate = Path(candidate)
    if candidate.is_dir():
        return emulate_bundle(candidate, cpus, model=model, cfg=cfg, step=step, on_cpu=on_cpu)
    from ..core.data import load_samples
    from ..errors import CalibrationError, ModelError
    from ..core.onnxutil import artifact_from
    from ..core.targets import load_target
    from ..checks.comparison import verify as verify_stage

    if data is None:
        raise CalibrationError("verify --emulate on a model needs --data (inputs to compare on)", "or pass a bundle folder")
    for p in (candidate, reference):
        if p is not None and (not Path(p).is_file() or Path(p).suffix.lower() != ".onnx"):
            raise ModelError(f"not an .onnx file: {p}", "check the path")
    tg = load_target(target)
    art = artifact_from(candidate)
    samples = load_samples(data, art.io, what="evaluation", labels_key=labels_key)
    feeds = tuple(samples.feed(i) for i in range(min(3, len(samples))))
    result = emulate_model(candidate, tg, feeds, cpus, cfg=cfg, step=step, on_cpu=on_cpu)
    if reference is not None:
        report = verify_stage(reference, candidate, samples, tg.tolerances, output_names=art.io.output_names).to_dict()
        result["verify"] = report
        result["passed"] = result["passed"] and report["passed"]
        if not report["passed"]:
            result["failures"] = [f"x86 vs reference: {f}" for f in report["failures"]] + result["failures"]
    return result


def emulation_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    from ..reporting.tables import fmt

    from ..core.safetext import escape_markup

    t = Table(title=escape_markup(f"ARM64 under qemu: {result['model']} vs the golden outputs computed when the bundle was built "
                                  f"(atol {result['atol']}, rtol {result['rtol']})"))
    for c in ("cpu", "onnxruntime", "golden pairs", "max abs error", "result"):
        t.add_column(c, justify="right" if c in ("golden pairs", "max abs error") else "left")
    h = result["host"]
    t.add_row(f"{h['arch']} (this host)", escape_markup(h["onnxruntime"]), str(len(h["pairs"])), fmt(h["max_abs_error"]), "pass" if h["passed"] else "[red]FAIL[/]")
    for r in result["emulated"]:
        t.add_row(f"{r['cpu']} (qemu)", escape_markup(r["onnxruntime"]), str(len(r["pairs"])), fmt(r["max_abs_error"]),
                  "pass" if r["passed"] else ("[red]ERROR[/] (does not run)" if r["error"] else "[red]FAIL[/]"))
    return t
