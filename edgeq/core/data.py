"""Sample sets for calibration and evaluation, checked against the model's inputs.

Formats:
- an ``.npz`` file with one array per model input and, for evaluation, an optional
  integer ``labels`` array. Each input's samples sit on a new first axis, or along the
  input's batch axis (edgeq.core.batchaxis: not always the first), or the array is one
  sample of the input's shape, shared by every sample (a sample rate; docs/calibration-data.md);
- a folder of ``.npz`` files (same keys) or, for single-input models, ``.npy``
  files, read in name order and joined along the sample or batch axis; files whose
  shapes differ in the model's dynamic axes, or that are each one call of a model
  without a shared batch (a graph network), are read file by file instead.
Arrays are read with ``allow_pickle=False``: object arrays are refused.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import IoSpec, TensorSpec
from .batchaxis import BatchAxis, batch_axes
from ..errors import CalibrationError, EdgeqError

LABELS_KEY = "labels"


@dataclass(frozen=True)
class SampleSet:
    """Stacked samples per input; ``feed(i)`` gives one batch-of-one feed dict."""

    arrays: dict[str, np.ndarray]
    stacked: dict[str, bool]  # True: array has an extra leading sample axis
    labels: np.ndarray | None
    source: str
    synthetic: bool = False
    notes: tuple[str, ...] = field(default=())
    files: tuple[Path, ...] = ()
    """Image files read one at a time with ``loader`` (image folders); ``arrays`` is then empty."""
    loader: Any = None
    input_name: str = ""
    mask_roles: tuple[tuple[str, str], ...] = ()
    """(input, "real" | "padding" | "none"): token masks the app file declares (edgeq.checks.masking)"""
    runs: tuple[int, ...] = ()
    """A folder whose files differ in shape (dynamic axes): each file's number of samples; ``loader`` reads
    file k as a sample set of its own, and sample i is read from the file that holds it. With ``files``,
    ``arrays`` holds only inputs replaced for every sample (stacked), laid over what the files give."""
    varied: tuple[str, ...] = ()
    """the inputs whose shape differs between samples, with the sizes seen (``x [5..11, 4]``)"""

    def __len__(self) -> int:
        if self.runs:
            return sum(self.runs)
        if self.files:
            return len(self.files)
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def feed(self, i: int) -> dict[str, np.ndarray]:
        if self.files:
            if self.runs:
                k, j = self._locate(i)
                feed = self.loader(self.files[k]).feed(j)
            else:
                feed = {self.input_name: self.loader(self.files[i])}
            return {**feed, **{k: np.asarray(a[i]) for k, a in self.arrays.items()}}
        # np.asarray: a stacked scalar input (e.g. a sample rate) stays a 0-d array, not a numpy scalar
        return {k: (np.asarray(a[i]) if self.stacked[k] else a[i : i + 1]) for k, a in self.arrays.items()}

    def _locate(self, i: int) -> tuple[int, int]:
        """(file, sample within it) of sample ``i`` of a folder read file by file."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        for k, run in enumerate(self.runs):
            if i < run:
                return k, i
            i -= run
        raise IndexError(i)

    def take(self, n: int) -> SampleSet:
        n = min(n, len(self))
        if self.files:
            from dataclasses import replace

            cut = dict(labels=None if self.labels is None else self.labels[:n], arrays={k: a[:n] for k, a in self.arrays.items()})
            if self.runs:
                k, j = self._locate(n - 1) if n else (-1, -1)
                runs = (*self.runs[:k], j + 1) if n else ()
                return replace(self, files=self.files[: len(runs)], runs=runs, **cut)
            return replace(self, files=self.files[:n], **cut)
        return SampleSet(
            arrays={k: a[:n] for k, a in self.arrays.items()},
            stacked=self.stacked,
            labels=None if self.labels is None else self.labels[:n],
            source=self.source,
            synthetic=self.synthetic,
            notes=self.notes,
            mask_roles=self.mask_roles,
        )


# Bounds on an .npz, read from its zip central directory before any array is decompressed.
MAX_NPZ_RATIO = 200.0  # declared / stored bytes, past NPZ_RATIO_FROM (as for bundle archives)
NPZ_RATIO_FROM = 16 << 20
MAX_NPZ_BYTES = 8 << 30  # declared bytes in one .npz
MAX_NPZ_MEMBERS = 4096
MAX_SAMPLES = 1_000_000  # an input's array may hold at most this many samples of its declared shape
_NPY_HEADER = 4096  # room for the .npy header (numpy writes 128 bytes)


def _input_bytes_limit(io: IoSpec | None, name: str) -> tuple[int, str]:
    """The most bytes array ``name`` can usefully hold: MAX_SAMPLES samples of the model's input shape."""
    spec = _spec_or_none(io, name) if io is not None else None
    if spec is None or not spec.shape:
        return MAX_NPZ_BYTES, f"{MAX_NPZ_BYTES >> 30} GiB"
    axis = batch_axes(io.inputs)[name].axis
    rest = [d for i, d in enumerate(spec.shape) if i != axis]  # one sample's axes, its batch axis aside
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return MAX_NPZ_BYTES, f"{MAX_NPZ_BYTES >> 30} GiB"
    try:
        itemsize = np.dtype(spec.dtype).itemsize
    except TypeError:
        return MAX_NPZ_BYTES, f"{MAX_NPZ_BYTES >> 30} GiB"
    per_sample = itemsize * int(np.prod(rest, dtype=np.int64))
    return min(MAX_NPZ_BYTES, _NPY_HEADER + per_sample * MAX_SAMPLES), f"{MAX_SAMPLES} samples of {spec.dtype}{spec.shape_str()}"


def _check_npz_sizes(path: Path, io: IoSpec | None) -> None:
    """Refuse a decompression bomb or an oversized array before numpy inflates anything."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip: np.load reports it
    hint = "write the data with numpy.savez (uncompressed), fewer samples per file, or split it into a folder of files"
    if len(infos) > MAX_NPZ_MEMBERS:
        raise CalibrationError(f"{path} holds {len(infos)} arrays (limit {MAX_NPZ_MEMBERS})", hint)
    stored = max(path.stat().st_size, 1)
    total = 0
    for zi in infos:
        name = zi.filename[:-4] if zi.filename.endswith(".npy") else zi.filename
        size = zi.file_size
        if size > NPZ_RATIO_FROM and size > MAX_NPZ_RATIO * max(zi.compress_size, 1):
            raise CalibrationError(
                f"{path}: array '{name[:80]}' declares {size} bytes from {zi.compress_size} stored "
                f"(compression ratio above {MAX_NPZ_RATIO:g}: a decompression bomb?)", hint)
        limit, why = _input_bytes_limit(io, name)
        if size > limit:
            raise CalibrationError(f"{path}: array '{name[:80]}' declares {size} bytes, more than {why} ({limit} bytes)", hint)
        total += size
    if total > MAX_NPZ_BYTES or (total > NPZ_RATIO_FROM and total > MAX_NPZ_RATIO * stored):
        raise CalibrationError(
            f"{path} declares {total} bytes of arrays in {stored} bytes of file (limit {MAX_NPZ_BYTES >> 30} GiB, "
            f"compression ratio {MAX_NPZ_RATIO:g})", hint)


def _read_npz(path: Path, io: IoSpec | None = None) -> dict[str, np.ndarray]:
    _check_npz_sizes(path, io)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CalibrationError(
                f"{path} holds object (pickled) arrays", "save plain numeric arrays with numpy.savez"
            ) from None
        raise CalibrationError(f"cannot read {path}: {e}", "write it with numpy.savez") from None
    except (OSError, EOFError) as e:
        raise CalibrationError(f"cannot read {path}: {e}", "write it with numpy.savez") from None
    except Exception as e:  # noqa: BLE001 - zipfile/format errors
        raise CalibrationError(f"{path} is not a valid .npz file ({type(e).__name__})", "write it with numpy.savez") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CalibrationError(f"{path} holds an object (pickled) array", "save a numeric array") from None
        raise CalibrationError(f"cannot read {path}: {e}", "write it with numpy.save") from None
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(f"{path} is not a valid .npy file ({type(e).__name__})", "write it with numpy.save") from None


def _read_raw(path: Path, io: IoSpec, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CalibrationError(f"{what} data not found: {path}", "pass an .npz file or a folder of .npy/.npz files")
    if path.is_file():
        if path.suffix == ".npz":
            return _read_npz(path, io)
        if path.suffix == ".npy":
            return _single_input(io, _read_npy(path), path)
        raise CalibrationError(
            f"{what} data {path} is neither .npz nor .npy", "pass an .npz file or a folder of .npy/.npz files"
        )
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
    if not files:
        raise CalibrationError(f"{what} folder {path} holds no .npy or .npz files", "put one file per sample or batch in it")
    if len(files) > 1 and _one_call(files[0], io, what):
        _raise_if_one_by_one(files, io, what)
    parts: list[dict[str, np.ndarray]] = []
    for f in files:
        parts.append(_read_npz(f, io) if f.suffix == ".npz" else _single_input(io, _read_npy(f), f))
    keys = set(parts[0])
    for f, p in zip(files, parts):
        if set(p) != keys:
            raise CalibrationError(
                f"{f.name} has arrays {sorted(p)} but {files[0].name} has {sorted(keys)}",
                "every file in the folder must hold the same inputs",
            )
    out: dict[str, np.ndarray] = {}
    batch = batch_axes(io.inputs)
    parts = _spread_shared(parts, io, batch, what)
    for k in keys:
        arrs = [p[k] for p in parts]
        join, axis = _folder_join(_spec_or_none(io, k), batch.get(k), arrs[0].ndim)
        try:
            out[k] = join(arrs, axis=axis)
        except ValueError:
            _raise_if_one_by_one(files, io, what)
            raise CalibrationError(
                f"input '{k}': files in {path} have different shapes", "give every sample the same shape"
            ) from None
    return out


def _spread_shared(parts: list[dict[str, np.ndarray]], io: IoSpec, batch: dict[str, BatchAxis], what: str) -> list[dict[str, np.ndarray]]:
    """A folder's files each hold a batch: an input given once in a file of several samples (a sample rate)
    is that file's value for each of them. Such an input is put on a new first axis in every file, repeated
    where given once, so that the files join sample by sample; files that do not fit are left to load_samples."""
    specs = {t.name: t for t in io.inputs}
    per_file = []
    for p in parts:
        lays = {}
        for k, a in p.items():
            if k in specs and a.ndim in (len(specs[k].shape), len(specs[k].shape) + 1):
                try:
                    lays[k] = _check_layout(a.shape, a.dtype.name, specs[k], what, batch[k])
                except CalibrationError:
                    return parts  # load_samples names the problem
        per_file.append(lays)
    counts = [max((lay.count for lay in lays.values() if not lay.shared), default=1) for lays in per_file]
    spread = {k for lays, n in zip(per_file, counts) for k, lay in lays.items() if lay.shared and n > 1}
    if not spread or any(k not in lays for lays in per_file for k in spread):
        return parts
    return [{k: _on_new_axis(a, lays[k], n) if k in spread else a for k, a in p.items()}
            for p, lays, n in zip(parts, per_file, counts)]


def _folder_join(spec: TensorSpec | None, batch: BatchAxis | None, ndim: int) -> tuple[Any, int]:
    """How a folder's files join for one input: a file of the input's shape less its batch axis holds one
    sample (stacked on that axis); one of the input's shape a batch along its batch axis (concatenated
    there), or one sample when the input has no batch axis (stacked on a new first axis); otherwise the
    files carry a sample axis first (concatenated on it; load_samples refuses what does not fit)."""
    if spec is None or batch is None:
        return np.concatenate, 0
    rank = len(spec.shape)
    if batch.axis is not None and ndim == rank - 1:
        return np.stack, batch.axis
    if ndim == rank and batch.axis is not None:
        return np.concatenate, batch.axis
    if ndim == rank and batch.known:
        return np.stack, 0
    return np.concatenate, 0


def _single_input(io: IoSpec, arr: np.ndarray, path: Path) -> dict[str, np.ndarray]:
    if len(io.inputs) != 1:
        raise CalibrationError(
            f"{path.name} is a bare .npy but the model has {len(io.inputs)} inputs ({', '.join(io.input_names)})",
            "use .npz files with one array per input name",
        )
    return {io.inputs[0].name: arr}


def _spec_or_none(io: IoSpec, name: str) -> TensorSpec | None:
    try:
        return io.input(name)
    except KeyError:
        return None


RANDOM = "random"


def random_samples(io: IoSpec, n: int = 64) -> SampleSet:
    """Seeded standard-normal inputs: a stand-in that says loudly that it is one."""
    feeds = [synthetic_feed(io, seed=i) for i in range(n)]
    arrays = {t.name: np.stack([f[t.name] for f in feeds]) for t in io.inputs}
    return SampleSet(
        arrays=arrays, stacked={k: True for k in arrays}, labels=None, source="random (--calib random)", synthetic=True,
        notes=("WARNING: random calibration data: ranges do not reflect real inputs",),
    )


def _image_samples(path: Path, io: IoSpec, what: str, preprocess: Path | None) -> SampleSet:
    from .images import SPEC_NAME, Preprocess, image_files

    files = image_files(path)
    if len(io.inputs) != 1:
        raise CalibrationError(
            f"{what} folder {path} holds images but the model has {len(io.inputs)} inputs",
            "use .npz files with one array per input name",
        )
    spec_path = preprocess or (path / SPEC_NAME)
    if not spec_path.is_file():
        raise CalibrationError(
            f"{what} folder {path} holds images but no preprocessing spec",
            f"write {path / SPEC_NAME} (resize, crop, mean, std, layout, dtype), or pass --preprocess app.toml / --image-preprocess FILE",
        )
    spec = io.inputs[0]
    prep = Preprocess.load(spec_path, spec.name)
    first = prep(files[0])
    _check_array(first, spec, what, batch_axes(io.inputs)[spec.name])  # shape and dtype against the model, before any work
    return SampleSet(
        arrays={}, stacked={spec.name: False}, labels=None, source=f"{path} ({len(files)} images, {spec_path.name})",
        files=tuple(files), loader=prep, input_name=spec.name,
    )


def load_samples(
    path: str | Path,
    io: IoSpec,
    *,
    what: str = "calibration",
    labels_key: str = LABELS_KEY,
    preprocess: Path | None = None,
    random_n: int = 64,
) -> SampleSet:
    """Read and check a sample set against the model's inputs.

    ``path`` is an .npz/.npy file, a folder of them, an image folder (with a preprocessing
    spec), or the word ``random`` (seeded random inputs, flagged as synthetic everywhere).
    """
    if str(path) == RANDOM and not Path(path).exists():
        return random_samples(io, random_n)
    path = Path(path)
    from .fsutil import require_regular_file

    require_regular_file(path, f"{what} data", CalibrationError)
    if path.is_dir():
        from .images import image_files

        if image_files(path) and not any(p.suffix in (".npz", ".npy") for p in path.iterdir()):
            return _image_samples(path, io, what, preprocess)
    try:
        raw = _read_raw(path, io, what)
    except _OneByOne as e:  # a folder whose files differ in shape, or each one call of the model
        return _file_runs(path, e.files, io, what, labels_key)
    return _from_raw(raw, path, io, what, labels_key)


def _from_raw(raw: dict[str, np.ndarray], path: Path, io: IoSpec, what: str, labels_key: str) -> SampleSet:
    """Arrays read from ``path`` (a file, or a folder's files joined) checked against the model as a sample set."""
    from .lmdata import fill_lm_inputs

    raw, lm_notes = fill_lm_inputs(raw, io, f"{what} data {path}")  # input_ids windows alone are enough for language models
    labels = None
    if labels_key in raw and labels_key not in io.input_names:
        labels = raw.pop(labels_key)
    raw, dropped = _drop_unused_tokenizer_arrays(raw, io, what)
    lm_notes = [*lm_notes, *dropped]
    missing = [n for n in io.input_names if n not in raw]
    extra = sorted(set(raw) - set(io.input_names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown array(s) {', '.join(extra)}")
        raise CalibrationError(
            f"{what} data {path}: {'; '.join(parts)}",
            f"the model's inputs are: {', '.join(f'{t.name} {t.dtype}{t.shape_str()}' for t in io.inputs)}",
        )
    batch = batch_axes(io.inputs)
    layouts, n, one = _read_layouts({k: (a.shape, a.dtype.name) for k, a in raw.items()}, io.inputs, batch, what)
    for spec in io.inputs:
        _check_finite(raw[spec.name], layouts[spec.name], spec, what, nan_ok=spec.name in io.missing_ok)
    if one:
        lm_notes.append(one)
    if n == 0:
        raise CalibrationError(f"{what} data {path} holds no samples", "provide at least one sample per input")
    if labels is not None:
        labels = np.asarray(labels)
        _check_labels(labels.shape, labels.dtype.name, n, what, labels_key)
    arrays: dict[str, np.ndarray] = {}
    stacked: dict[str, bool] = {}
    for spec in io.inputs:
        lay = layouts[spec.name]
        arrays[spec.name], stacked[spec.name] = _to_internal(raw[spec.name], lay, n)
        if lay.shared and n > 1:
            lm_notes.append(f"{what} data: '{spec.name}' given once ({spec.dtype}{list(raw[spec.name].shape)}): "
                            f"the same value for each of the {n} samples")
        elif lay.kind == "batch" and lay.axis:
            lm_notes.append(f"{what} data: '{spec.name}' {list(raw[spec.name].shape)} read as {n} samples along "
                            f"{batch[spec.name].describe()}")
    return SampleSet(arrays=arrays, stacked=stacked, labels=labels, source=str(path), notes=tuple(lm_notes))


TOKENIZER_ZERO_ARRAYS = ("token_type_ids",)
"""arrays a tokenizer writes for every text whose all-zero value is what a model exported without them assumes"""


def _drop_unused_tokenizer_arrays(raw: dict[str, np.ndarray], io: IoSpec, what: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """A tokenizer's all-zero ``token_type_ids`` for a model that takes none: dropped, with a note (one
    segment is what such a model computes). Non-zero ones (sentence pairs) are refused by the caller."""
    notes = []
    for name in TOKENIZER_ZERO_ARRAYS:
        if name in raw and name not in io.input_names and "input_ids" in io.input_names:
            arr = np.asarray(raw[name])
            if arr.dtype.kind in "iub" and not arr.any():
                raw = {k: v for k, v in raw.items() if k != name}
                notes.append(f"{what} data: '{name}' dropped: the model takes no such input and every entry is 0 "
                             "(one segment, what the model assumes)")
    return raw, notes


def check_array_names(path: Path | None, input_names: list[str] | tuple[str, ...], *, what: str, labels_key: str = LABELS_KEY) -> None:
    """Before a slow export: an .npz's array names against the inputs the exported model will take (known
    before the export runs). Refuses in one line what :func:`load_samples` would refuse after it: an array
    the model does not take (all-zero ``token_type_ids`` excepted: dropped there, with a note)."""
    check_arrays_early(path, ExpectedInputs(also=tuple(input_names)), what=what, labels_key=labels_key)


@dataclass(frozen=True)
class ExpectedInputs:
    """What an export will take, known before it runs (edgeq.exporters.expected builds one per source kind)."""

    specs: tuple[TensorSpec, ...] = ()
    """inputs whose dtype and shape are known: an array under such a name is checked as load_samples checks it"""
    also: tuple[str, ...] = ()
    """further names the model takes, their layout known only after the export"""
    pattern: str = ""
    """a regular expression of further names it takes (a KV-cache decoder's past_key_values.N.key/value)"""
    described: str = ""
    """the hint's account of what the model takes, when more than the names (e.g. what edgeq fills in)"""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.specs) + tuple(n for n in self.also if n not in {t.name for t in self.specs})

    def takes(self, name: str) -> bool:
        import re

        return name in self.names or bool(self.pattern and re.fullmatch(self.pattern, name))


def _npz_layouts(path: Path) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """Each array's shape and dtype from its .npy header (no data read), or None when the file is not a plain .npz."""
    import zipfile

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for zi in zf.infolist():
                if not zi.filename.endswith(".npy"):
                    continue
                with zf.open(zi) as f:
                    header = _npy_header(f)
                if header is None:
                    return None
                out[zi.filename[:-4]] = header
    except (zipfile.BadZipFile, OSError, ValueError, TypeError):
        return None  # load_samples says why
    return out


def _npy_header(f: Any) -> tuple[tuple[int, ...], str] | None:
    """An open .npy stream's array shape and dtype name from its header alone (no data read); None for a format
    version numpy's readers here do not know."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):  # 3.0 is 2.0's header in UTF-8: the same reader for numpy's dtypes
        return None
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return tuple(int(d) for d in shape), np.dtype(dtype).name


def check_arrays_early(path: Path | None, expected: ExpectedInputs, *, what: str, labels_key: str = LABELS_KEY) -> None:
    """Before a slow export: refuse in one line (exit 2) an .npz array the model will not take, or one whose
    dtype or shape does not fit an input ``expected`` knows the layout of; the rest is left to
    :func:`load_samples` after the export (missing inputs, values). Sample counts are compared as there, among
    the inputs known now (edgeq.core.batchaxis reads each one's batch axis from ``expected``). Only headers are read,
    plus the small all-zero ``token_type_ids`` test."""
    if path is None or Path(path).suffix.lower() != ".npz" or not Path(path).is_file():
        return  # folders, images, "random": checked by load_samples
    _check_npz_sizes(Path(path), None)
    layouts = _npz_layouts(Path(path))
    if layouts is None:
        return
    extra = sorted(n for n in layouts if n != labels_key and not expected.takes(n))
    if extra and "input_ids" in expected.names and any(n in TOKENIZER_ZERO_ARRAYS for n in extra):
        try:
            with np.load(path, allow_pickle=False) as z:
                zeros = {n for n in extra if n in TOKENIZER_ZERO_ARRAYS and z[n].dtype.kind in "iub" and not z[n].any()}
        except (OSError, ValueError):
            return  # unreadable: load_samples says why
        extra = [n for n in extra if n not in zeros]
    if extra:
        takes = expected.described or ", ".join(expected.names)
        raise CalibrationError(f"{what} data {Path(path).name}: unknown array(s) {', '.join(extra)}",
                               f"the model's inputs are: {takes}; drop the other arrays from the file")
    batch = batch_axes(expected.specs)
    given = {spec.name: layouts[spec.name] for spec in expected.specs if spec.name in layouts and spec.name != labels_key}
    if given:  # the layouts, counts and labels as load_samples checks them, on the inputs known now
        _, n, _ = _read_layouts(given, expected.specs, batch, what)
        if labels_key in layouts and not expected.takes(labels_key) and len(given) == len(expected.specs) and not (expected.also or expected.pattern):
            _check_labels(*layouts[labels_key], n, what, labels_key)


@dataclass(frozen=True)
class Layout:
    """How one array holds its samples: ``"new"`` (on a new first axis), ``"batch"`` (along the input's batch
    axis ``axis``), ``"one"`` (a single sample, no sample axis) or ``"call"`` (with the other arrays, one call
    of a model that has no shared batch); ``count`` samples."""

    kind: str
    count: int
    axis: int | None = None

    @property
    def shared(self) -> bool:
        """One sample given without a sample axis: the same value for every sample of the set."""
        return self.kind in ("one", "call") or (self.kind == "batch" and self.count == 1)

    def where(self, batch: BatchAxis) -> str:
        """How the array was read, for a message: "samples on a new first axis", "samples along batch axis 1: ..."."""
        if self.kind == "new":
            return "samples on a new first axis"
        if self.kind == "call":
            return "one call of the model with the arrays as given"
        return f"samples along {batch.describe()}" if self.kind == "batch" else f"one sample shared by all ({batch.describe()})"


def _check_layout(shape: tuple[int, ...], dtype: str, spec: TensorSpec, what: str, batch: BatchAxis, *, one_call: bool = False) -> Layout:
    """An array's dtype and shape against ``spec``: samples stacked on a new first axis, along the input's
    batch axis (``batch``, edgeq.core.batchaxis), or one sample given as the input's own shape (``one_call``:
    the array as given, one call of the model); else one line naming the input, its shape, what the model
    expects and the batch axis read."""
    rank = len(spec.shape)
    expected = f"{spec.dtype}{spec.shape_str()}"
    text = spec.dtype == "object" and dtype.startswith("str")  # a string input (classic ML encoders): a unicode array, no pickle
    if dtype != spec.dtype and not text:
        raise CalibrationError(
            f"{what} input '{spec.name}' has dtype {dtype}, the model expects "
            + ("strings" if spec.dtype == "object" else spec.dtype),
            "save the strings as a unicode array: numpy.savez(..., NAME=array.astype(str))" if spec.dtype == "object"
            else f"convert it, e.g. array.astype('{spec.dtype}')",
        )
    b = batch.axis
    if one_call and len(shape) == rank:
        sample_shape, layout = tuple(shape), Layout("call", 1)
    elif len(shape) == rank + 1:
        sample_shape, layout = tuple(shape[1:]), Layout("new", int(shape[0]))
    elif len(shape) == rank and b is not None:
        sample_shape, layout = (*shape[:b], 1, *shape[b + 1 :]), Layout("batch", int(shape[b]), b)
    elif len(shape) == rank and batch.known:
        sample_shape, layout = tuple(shape), Layout("one", 1)
    else:
        new = f"[N, {', '.join('?' if d is None else str(d) for d in spec.shape)}]" if rank else "[N]"
        other = (f" or along batch axis {b}" if b is not None
                 else ", or one array of the input's shape shared by all samples" if batch.known else "")
        raise CalibrationError(
            f"{what} input '{spec.name}' has shape {list(shape)}, the model expects {expected} per sample ({batch.describe()})",
            f"stack samples along a new first axis ({new}){other}",
        )
    for i, (got, want) in enumerate(zip(sample_shape, spec.shape)):
        if isinstance(want, int) and got != want:
            raise CalibrationError(
                f"{what} input '{spec.name}' has sample shape {list(sample_shape)}, the model expects {expected} "
                f"(axis {i}; read as {layout.where(batch)})",
                "resize or reshape the data to the model's input shape",
            )
    return layout


def _check_array(arr: np.ndarray, spec: TensorSpec, what: str, batch: BatchAxis) -> Layout:
    return _check_finite(arr, _check_layout(arr.shape, arr.dtype.name, spec, what, batch), spec, what)


def _check_finite(arr: np.ndarray, layout: Layout, spec: TensorSpec, what: str, *, nan_ok: bool = False) -> Layout:
    """NaN/Inf refused; ``nan_ok``: NaN is a missing value the model handles (IoSpec.missing_ok), only Inf is refused."""
    if arr.dtype.kind in "fc":
        per_sample = _samples_first(arr, layout)
        ok = (lambda a: ~np.isinf(a)) if nan_ok else np.isfinite
        finite = ok(per_sample.reshape(len(per_sample), -1)).all(axis=1) if per_sample.size else np.ones(len(per_sample), bool)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise CalibrationError(
                f"{what} input '{spec.name}' holds {'Inf' if nan_ok else 'NaN or Inf'} (first in sample {bad})",
                "clean the data: calibration ranges must come from finite values",
            )
    return layout


def _samples_first(arr: np.ndarray, layout: Layout) -> np.ndarray:
    """A view of ``arr`` with its samples on axis 0."""
    if layout.kind in ("one", "call"):
        return arr[None]
    if layout.kind == "batch" and layout.axis:
        return np.moveaxis(arr, layout.axis, 0)
    return arr


def _sample_count(layouts: dict[str, Layout], what: str) -> int:
    """The set's number of samples: every input given with several samples must hold the same number (one
    line naming each input's count and where it was read); an input given once is shared by all."""
    counts = {k: lay for k, lay in layouts.items() if not lay.shared}
    if len({lay.count for lay in counts.values()}) > 1:
        raise CalibrationError(
            f"{what} data: inputs have different sample counts "
            f"({', '.join(f'{k}={lay.count} along {_short_where(lay)}' for k, lay in counts.items())})",
            "give every input the same number of samples (on a new first axis or along its batch axis), "
            "or one sample shared by all",
        )
    return next(iter(counts.values())).count if counts else int(bool(layouts))


ONE_CALL = "read as one sample"
"""the start of the note said when a file's arrays are one call of the model (see :func:`_read_layouts`)"""


def _read_layouts(shapes: dict[str, tuple[tuple[int, ...], str]], specs: tuple[TensorSpec, ...] | list[TensorSpec],
                  batch: dict[str, BatchAxis], what: str) -> tuple[dict[str, Layout], int, str]:
    """Each given input's layout and the set's sample count, from shapes and dtypes alone (load and the early
    header check alike), plus a note when the arrays are one call of the model: every input given in its own
    rank (none on a new first axis) where the model has no batch to read samples along -- an input whose
    batch axis edgeq cannot tell, or batch axes the model names apart (a graph's ``[num_nodes, F]`` beside
    ``[2, num_edges]``: sizes, not a batch). Otherwise the batch reading stands, and its refusal."""
    specs = [t for t in specs if t.name in shapes]
    why = _one_call_why(shapes, specs, batch)
    if why is None:
        layouts = {t.name: _check_layout(*shapes[t.name], t, what, batch[t.name]) for t in specs}
        return layouts, _sample_count(layouts, what), ""
    layouts = {t.name: _check_layout(*shapes[t.name], t, what, batch[t.name], one_call=True) for t in specs}
    _check_shared_sizes(shapes, specs, what)
    return layouts, 1, f"{what} data: {ONE_CALL} (one call of the model with the arrays as given): {why}"


_BATCH_LIKE = re.compile(r"(?i)^(.*batch.*|s\d+|unk__\d+|dim_?\d+|DynamicDimension\.\d+|[a-z]|\?)$")
"""axis names that may be a batch: ones naming it, and ones an exporter generated (they name nothing)"""


def _one_call_why(shapes: dict[str, tuple[tuple[int, ...], str]], specs: list[TensorSpec], batch: dict[str, BatchAxis]) -> str | None:
    """Why arrays all in their input's own rank cannot hold samples along batch axes, or None when they may."""
    if not specs or any(len(shapes[t.name][0]) != len(t.shape) or shapes[t.name][1] != t.dtype for t in specs):
        return None
    unknown = [t.name for t in specs if batch[t.name].axis is None and not batch[t.name].known]
    if unknown:
        return f"'{unknown[0]}' has no batch axis edgeq can tell ({batch[unknown[0]].why})"
    sizes: dict[str, int] = {}  # each batch axis's name -> its size in the arrays
    for t in specs:
        b = batch[t.name].axis
        if b is not None and isinstance(t.shape[b], str) and t.shape[b]:
            sizes.setdefault(t.shape[b], shapes[t.name][0][b])
    if len(sizes) < 2 or any(_BATCH_LIKE.match(k) for k in sizes):
        # one shared batch, or names an exporter made up (torch.export's s0/s1, onnx's unk__3) that say nothing of
        # what the axis holds: read along them, counts compared
        return None
    return ("the model names its inputs' dynamic axes apart, so they are sizes, not a shared batch ("
            + ", ".join(f"{k}={v}" for k, v in sizes.items()) + ")")


def _check_shared_sizes(shapes: dict[str, tuple[tuple[int, ...], str]], specs: list[TensorSpec], what: str) -> None:
    """One call's arrays: an axis name the model gives several inputs must have one size in all of them."""
    seen: dict[str, tuple[int, str, int]] = {}
    for t in specs:
        for axis, (sym, got) in enumerate(zip(t.shape, shapes[t.name][0])):
            if not isinstance(sym, str) or not sym:
                continue
            size, name, first = seen.setdefault(sym, (got, t.name, axis))
            if size != got:
                raise CalibrationError(
                    f"{what} input '{t.name}' has {sym}={got} (axis {axis}) but '{name}' has {sym}={size} (axis {first})",
                    f"the model gives both axes the name '{sym}': give them the same size")


def _header(path: Path, io: IoSpec) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """A folder file's arrays (shape, dtype) from their headers alone; None when they cannot be read so."""
    if path.suffix == ".npz":
        _check_npz_sizes(path, io)
        return _npz_layouts(path)
    if len(io.inputs) != 1:
        return None
    try:
        with open(path, "rb") as f:
            header = _npy_header(f)
    except (OSError, ValueError, TypeError):
        return None
    return None if header is None else {io.inputs[0].name: header}


class _OneByOne(Exception):
    """A folder's files are read one by one (:func:`_file_runs`), not joined."""

    def __init__(self, files: tuple[Path, ...]) -> None:
        super().__init__(len(files))
        self.files = files


def _one_call(path: Path, io: IoSpec, what: str) -> bool:
    """Whether a folder's file is one call of the model (its headers alone): then the files cannot be joined."""
    head = _header(path, io)
    if head is None:
        return False
    try:
        return bool(_read_layouts(_one_sample_batched({k: v for k, v in head.items() if k in io.input_names}, io),
                                  io.inputs, batch_axes(io.inputs), what)[2])
    except CalibrationError:
        return False


def _raise_if_one_by_one(files: list[Path], io: IoSpec, what: str) -> None:
    """Called where a folder's files cannot be joined: :class:`_OneByOne` when they are to be read one by one."""
    ragged = _files_of_their_own(files, io, what)
    if ragged:
        raise _OneByOne(ragged)


def _files_of_their_own(files: list[Path], io: IoSpec, what: str) -> tuple[Path, ...]:
    """The files of a folder that must be read one by one (empty: join them, as always): each file fits the model
    on its own (headers alone), and either is one call of the model or the files' samples differ in shape, which
    only the model's dynamic axes allow. Anything else is left to the joined reading, which names the problem."""
    files = tuple(files)
    heads = []
    for f in files:
        head = _header(f, io)
        if head is None:
            return ()
        heads.append(_one_sample_batched({k: v for k, v in head.items() if k in io.input_names}, io))
    if len(files) < 2 or any(set(h) != set(heads[0]) for h in heads):
        return ()
    batch = batch_axes(io.inputs)
    try:
        reads = [_read_layouts(h, io.inputs, batch, what) for h in heads]
    except CalibrationError:
        return ()
    if any(one for _, _, one in reads):
        return files
    for k in heads[0]:
        join, axis = _folder_join(_spec_or_none(io, k), batch.get(k), len(heads[0][k][0]))
        kept = {tuple(d for i, d in enumerate(h[k][0]) if join is np.stack or i != axis) for h in heads}
        if len(kept) > 1 or len({len(h[k][0]) for h in heads}) > 1:
            return files
    return ()


def _one_sample_batched(arrays: dict[str, Any], io: IoSpec) -> dict[str, Any]:
    """A folder's file of an input's shape less its batch axis is one sample (an utterance ``[T]`` for ``x [batch,
    time]``): given its batch axis of 1. ``arrays`` maps names to arrays, or to (shape, dtype) headers."""
    batch = batch_axes(io.inputs)
    out = dict(arrays)
    for k, v in arrays.items():
        spec, b = _spec_or_none(io, k), batch.get(k)
        if spec is None or b is None or b.axis is None:
            continue
        if isinstance(v, np.ndarray) and v.ndim == len(spec.shape) - 1:
            out[k] = np.expand_dims(v, b.axis)
        elif isinstance(v, tuple) and len(v[0]) == len(spec.shape) - 1:
            out[k] = ((*v[0][: b.axis], 1, *v[0][b.axis :]), v[1])
    return out


@dataclass
class _FileReader:
    """Reads one file of a folder read file by file as a sample set of its own; keeps the last one read."""

    io: IoSpec
    what: str
    labels_key: str
    last: tuple[Path, SampleSet] | None = None

    def __call__(self, path: Path) -> SampleSet:
        last = self.last  # read once: another thread may replace it meanwhile
        if last is None or last[0] != path:
            raw = _read_npz(path, self.io) if path.suffix == ".npz" else _single_input(self.io, _read_npy(path), path)
            last = (path, _from_raw(_one_sample_batched(raw, self.io), path, self.io, self.what, self.labels_key))
            self.last = last
        return last[1]


def _file_runs(path: Path, files: tuple[Path, ...], io: IoSpec, what: str, labels_key: str) -> SampleSet:
    """A folder whose files differ in shape: each file checked in full now (as a file alone is), then read
    again when its samples are fed, one file in memory at a time."""
    reader = _FileReader(io, what, labels_key)
    runs, labels, notes, ones = [], [], {}, 0
    axes: dict[str, list[set[int]]] = {}
    for f in files:
        s = reader(f)
        runs.append(len(s))
        labels.append(s.labels)
        ones += any(n.startswith(f"{what} data: {ONE_CALL}") for n in s.notes)
        notes.update(dict.fromkeys(n for n in s.notes if not n.startswith(f"{what} data: {ONE_CALL}")))
        for k, v in s.feed(0).items():
            for i, d in enumerate(np.shape(v)):
                axes.setdefault(k, [set() for _ in np.shape(v)])[i].add(int(d))
    if any(lab is None for lab in labels) and any(lab is not None for lab in labels):
        has = next(f for f, lab in zip(files, labels) if lab is not None)
        lacks = next(f for f, lab in zip(files, labels) if lab is None)
        raise CalibrationError(f"{what} data {path}: {has.name} holds '{labels_key}' but {lacks.name} does not",
                               f"give '{labels_key}' in every file or in none")
    varied = [f"{k} [{', '.join(str(min(a)) if len(a) == 1 else f'{min(a)}..{max(a)}' for a in ax)}]"
              for k, ax in axes.items() if any(len(a) > 1 for a in ax)]
    each = "one sample (one call of the model with its arrays as given)" if ones == len(files) else "its own run of samples"
    differ = (f" whose shapes differ in the model's dynamic axes ({', '.join(varied[:4])}{', ...' if len(varied) > 4 else ''})"
              if varied else "")
    summary = f"{what} data {path}: {len(files)} files{differ}: each file read as {each}, {sum(runs)} samples"
    return SampleSet(arrays={}, stacked={}, labels=None if labels[0] is None else np.concatenate(labels), source=str(path),
                     notes=(summary, *notes), files=files, loader=reader, runs=tuple(runs), varied=tuple(varied))


def require_stacked(data: SampleSet | None, what: str, needs: str) -> None:
    """Trips that read a whole input at once (a language model's ``input_ids`` windows [n, T]) refuse, in one line,
    a folder read file by file (files of several shapes, or each one call of the model)."""
    if data is not None and data.runs:
        shapes = f" ({', '.join(data.varied[:3])})" if data.varied else ""
        raise CalibrationError(f"{what} data {data.source}: files of their own shapes{shapes}, read one by one; {needs}",
                               "write the samples as one .npz, each input's samples of one shape stacked on a new first axis")


def check_one_shape(data: SampleSet | None, target: str, what: str) -> None:
    """A target that runs fixed shapes pins the model's dynamic axes to one sample's: samples of other shapes
    cannot run there, so such data is refused in one line before any work."""
    if data is not None and data.varied:
        raise CalibrationError(
            f"target {target} runs the model with fixed shapes, but the {what} samples differ in shape "
            f"({', '.join(data.varied[:3])}{', ...' if len(data.varied) > 3 else ''})",
            "give samples of one shape (pad or crop them to one size), or pick a target without static shapes")


def _short_where(layout: Layout) -> str:
    return "a new first axis" if layout.kind == "new" else f"batch axis {layout.axis}"


def _on_new_axis(arr: np.ndarray, layout: Layout, n: int) -> np.ndarray:
    """``arr``'s samples on a new first axis, each of the input's full shape: samples along a batch axis
    move to the front, keeping a size-1 batch axis in place; one shared sample is repeated ``n`` times
    (a read-only broadcast view, no copy)."""
    if layout.shared:
        return np.broadcast_to(arr, (n, *arr.shape))
    if layout.kind == "batch":
        return np.expand_dims(np.moveaxis(arr, layout.axis or 0, 0), (layout.axis or 0) + 1)
    return arr


def _to_internal(arr: np.ndarray, layout: Layout, n: int) -> tuple[np.ndarray, bool]:
    """``arr`` in SampleSet's layout: (samples on a new first axis, True) or (along batch axis 0, False,
    kept as given, as before)."""
    if layout.kind == "batch" and not layout.axis and not (layout.shared and n > 1):
        return arr, False
    if layout.kind == "batch" and not layout.shared:
        return np.ascontiguousarray(_on_new_axis(arr, layout, n)), True
    return _on_new_axis(arr, layout, n), True


def _check_labels(shape: tuple[int, ...], dtype: str, n: int, what: str, labels_key: str) -> None:
    # [n] class indices, or [n, positions] next tokens for a language model
    if len(shape) not in (1, 2) or shape[0] != n or np.dtype(dtype).kind not in "iu":
        raise CalibrationError(
            f"{what} data: '{labels_key}' must be a 1-D integer array of {n} labels, got {dtype}{list(shape)}",
            "store class indices, one per sample (or [samples, positions] next-token ids for a language model)",
        )


def synthetic_feed(io: IoSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if any(t.name.startswith("past_key_values.") for t in io.inputs) and "input_ids" in io.input_names:
        from ..exporters.decoder import prefill_feed  # KV-cache decoder: a consistent prefill (mask covers past + new)

        return prefill_feed(io.inputs, rng.integers(0, 2, (1, 8), dtype=np.int64))
    feed = {}
    from .modelmeta import imgsz_shape

    for t in io.inputs:
        # dynamic height/width: the size the file declares (metadata imgsz), else 1
        shape = list(imgsz_shape(t.shape, io.imgsz) or [d if isinstance(d, int) else 1 for d in t.shape])
        dt = np.dtype(t.dtype)
        if dt.kind == "f":
            feed[t.name] = rng.standard_normal(shape).astype(dt)
        else:  # never zeros: masks of ones, token ids in range (edgeq/core/golden.py)
            from ..core.golden import typical_ints

            feed[t.name] = typical_ints(t.name, shape, dt, rng) if dt.kind in "iu" else np.ones(shape, dt)
    return feed


@contextlib.contextmanager
def on_synthetic_feed(feed: dict[str, np.ndarray], synthetic: bool) -> Iterator[None]:
    """Run a model on ``feed``; when edgeq made it up (no data given) and onnxruntime refuses it
    (a dynamic time axis set to 1 that a reflect pad or a window needs longer, an id out of
    range), that is the user's missing data, not an edgeq bug: one line naming the inputs used."""
    try:
        yield
    except Exception as e:
        if not synthetic or not type(e).__module__.startswith("onnxruntime"):
            raise
        raise typical_inputs_refused(EdgeqError, feed, " ".join(str(e).split()), "; dynamic axes set to 1") from e


def typical_inputs_refused(cls: type[EdgeqError], feed: dict[str, np.ndarray], said: str, detail: str = "") -> EdgeqError:
    """The one line when a model refuses the typical inputs edgeq made up for want of data (``feed``; ``said``:
    onnxruntime's words): the user's missing data, not an edgeq bug."""
    used = ", ".join(f"'{k}' {list(v.shape)} {v.dtype}" for k, v in feed.items())
    return cls(f"the model does not run on edgeq's typical inputs ({used}{detail}), as no --calib or --eval data was given; "
               f"onnxruntime said: {said[:200]}", "pass --eval DATA.npz (or --calib) with real inputs of the shapes the model needs")
