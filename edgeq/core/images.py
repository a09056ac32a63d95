"""Image folders as calibration/evaluation data, with a small preprocessing spec (TOML).

The preprocessing comes from, in this order: ``--image-preprocess FILE``, the app's
``--preprocess app.toml`` (its ``[inputs.NAME]`` table for the image input, the same
format the bundle manifest records, see edgeq/core/appio.py; ``scale`` must be given there), or
a ``preprocess.toml`` next to the images. A file may use that ``[inputs.NAME]`` format or
this short form for a model with one image input:

    resize = 256            # shorter side to 256 (or [height, width])
    crop = [224, 224]       # centre crop (optional)
    mean = [0.485, 0.456, 0.406]   # after scaling to [0, 1]
    std = [0.229, 0.224, 0.225]
    layout = "NCHW"         # or "NHWC"
    dtype = "float32"       # float32 | float16 | uint8 (uint8: no scaling, mean/std ignored)
    color = "RGB"           # RGB | BGR | L

Images are read one at a time (Pillow, in the ``int8`` extra), so memory does not grow
with the number of images.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import BundleError, CalibrationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_SIDE = 8192  # resize, crop and decoded image sides, checked before anything is allocated
MAX_PIXELS = MAX_SIDE * MAX_SIDE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
SPEC_NAME = "preprocess.toml"


@dataclass(frozen=True)
class Preprocess:
    resize: tuple[int, ...] = ()
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    scale: float = 1.0 / 255.0

    @classmethod
    def load(cls, path: Path, input_name: str = "") -> Preprocess:
        """Read a spec file in either format; ``input_name`` picks the ``[inputs.NAME]`` table."""
        try:
            d = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"cannot read preprocessing spec {path}: {e}", "write a small TOML file (see edgeq/core/images.py)") from None
        if "inputs" in d or "outputs" in d:
            return cls.from_app_file(path, d, input_name)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise CalibrationError(f"{path}: unknown key(s) {', '.join(unknown)}", f"known keys: {', '.join(sorted(known))}")
        try:
            r = d.get("resize", ())
            spec = cls(
                resize=(int(r),) if isinstance(r, int) else tuple(int(v) for v in r),
                crop=tuple(int(v) for v in d["crop"]) if "crop" in d else None,  # type: ignore[arg-type]
                mean=tuple(float(v) for v in d.get("mean", ())),
                std=tuple(float(v) for v in d.get("std", ())),
                layout=str(d.get("layout", "NCHW")).upper(),
                dtype=str(d.get("dtype", "float32")),
                color=str(d.get("color", "RGB")).upper(),
                scale=float(d.get("scale", 1.0 / 255.0)),
            )
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"{path}: bad value ({e})", "see edgeq/core/images.py for the format") from None
        spec.validate(str(path))
        return spec

    @classmethod
    def from_app_file(cls, path: Path, d: dict, input_name: str) -> Preprocess:
        from .appio import input_spec

        tables = d.get("inputs", {})
        if not isinstance(tables, dict) or input_name not in tables or not isinstance(tables[input_name], dict):
            have = ", ".join(sorted(tables)) if isinstance(tables, dict) and tables else "none"
            raise CalibrationError(
                f"{path} has no [inputs.{input_name}] table for the image input (tables: {have})",
                f"add [inputs.{input_name}] with resize, crop, scale, mean, std, layout",
            )
        where = f"{path} [inputs.{input_name}]"
        try:
            app = input_spec(where, tables[input_name])
        except BundleError as e:
            raise CalibrationError(e.message, "fix the preprocessing spec") from None
        return cls.from_app(app, where)

    @classmethod
    def from_app(cls, app: dict, where: str) -> Preprocess:
        """The manifest's per-input preprocessing (appio format) as an image loader."""
        dtype = app.get("dtype", "float32")
        if "scale" not in app and dtype != "uint8":
            raise CalibrationError(
                f"{where}: no scale: edgeq will not guess whether the app feeds pixels or pixels / 255",
                "add scale = 0.00392156862745098 (pixels / 255) or scale = 1.0",
            )
        r = app.get("resize", ())
        crop = app.get("crop")
        layout = app.get("layout", "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise CalibrationError(f"{where}: layout {layout} is not an image layout", "use NCHW or NHWC for an image input")
        spec = cls(
            resize=(r,) if isinstance(r, int) else tuple(r),
            crop=(crop[0], crop[1]) if crop else None,
            mean=tuple(app.get("mean", ())),
            std=tuple(app.get("std", ())),
            layout=layout,
            dtype=dtype,
            color="L" if app.get("color") == "GRAY" else app.get("color", "RGB"),
            scale=float(app.get("scale", 1.0)),
        )
        if len(spec.mean) != len(spec.std):  # appio allows one value for all channels
            n = max(len(spec.mean), len(spec.std))
            spec = replace(spec, mean=spec.mean * n if len(spec.mean) == 1 else spec.mean, std=spec.std * n if len(spec.std) == 1 else spec.std)
        spec.validate(where)
        return spec

    def to_app(self) -> dict:
        """This spec in the manifest's per-input format (edgeq/core/appio.py), every value explicit."""
        out: dict = {"layout": self.layout, "color": "GRAY" if self.color == "L" else self.color, "dtype": self.dtype}
        if self.resize:
            out["resize"] = self.resize[0] if len(self.resize) == 1 else list(self.resize)
        if self.crop:
            out["crop"] = list(self.crop)
        if self.dtype != "uint8":
            out["scale"] = self.scale
            if self.mean:
                out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def validate(self, where: str) -> None:
        bad = None
        if self.layout not in ("NCHW", "NHWC"):
            bad = f"layout must be NCHW or NHWC, not {self.layout}"
        elif self.dtype not in ("float32", "float16", "uint8"):
            bad = f"dtype must be float32, float16 or uint8, not {self.dtype}"
        elif self.color not in ("RGB", "BGR", "L"):
            bad = f"color must be RGB, BGR or L, not {self.color}"
        elif len(self.resize) not in (0, 1, 2) or any(v <= 0 for v in self.resize):
            bad = "resize must be a positive int or [height, width]"
        elif any(v > MAX_SIDE for v in self.resize):
            bad = f"resize {list(self.resize)} is larger than {MAX_SIDE} pixels a side"
        elif self.crop is not None and (len(self.crop) != 2 or min(self.crop) <= 0):
            bad = "crop must be [height, width]"
        elif self.crop is not None and max(self.crop) > MAX_SIDE:
            bad = f"crop {list(self.crop)} is larger than {MAX_SIDE} pixels a side"
        elif len(self.mean) != len(self.std) or any(s == 0 for s in self.std):
            bad = "mean and std need the same length and std no zeros"
        elif self.mean and len(self.mean) != (1 if self.color == "L" else 3):
            bad = f"mean/std need one value per channel ({1 if self.color == 'L' else 3})"
        if bad:
            raise CalibrationError(f"{where}: {bad}", "fix the preprocessing spec")

    def __call__(self, path: Path) -> np.ndarray:
        """One image as a batch-of-one array in the model's layout."""
        try:
            from PIL import Image
        except ImportError:
            raise CalibrationError("reading images needs Pillow", "pip install 'edgeq[int8]'") from None
        try:
            with Image.open(path) as im:
                w, h = im.size  # from the header: nothing decoded yet
                if w * h > MAX_PIXELS:
                    raise CalibrationError(f"{path.name}: image of {w}x{h} pixels is larger than {MAX_SIDE}x{MAX_SIDE}", "downscale the images first")
                if len(self.resize) == 1:
                    s = self.resize[0] / min(w, h)
                    nw, nh = max(1, round(w * s)), max(1, round(h * s))
                    if max(nw, nh) > MAX_SIDE:
                        raise CalibrationError(
                            f"{path.name}: resizing {w}x{h} to a shorter side of {self.resize[0]} gives {nw}x{nh}, "
                            f"larger than {MAX_SIDE} pixels a side", "use resize = [height, width], or crop the images first")
                im = im.convert("L" if self.color == "L" else "RGB")
                if len(self.resize) == 1:
                    im = im.resize((nw, nh), Image.BILINEAR)
                elif len(self.resize) == 2:
                    im = im.resize((self.resize[1], self.resize[0]), Image.BILINEAR)
                if self.crop is not None:
                    ch, cw = self.crop
                    w, h = im.size
                    if ch > h or cw > w:
                        raise CalibrationError(f"{path.name}: crop {ch}x{cw} is larger than the image {h}x{w}", "resize first (resize = ...)")
                    left, top = (w - cw) // 2, (h - ch) // 2
                    im = im.crop((left, top, left + cw, top + ch))
                a = np.asarray(im)
        except CalibrationError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many types on bad files
            raise CalibrationError(f"cannot read image {path}: {type(e).__name__}", "remove or fix the file") from None
        if a.ndim == 2:
            a = a[:, :, None]
        if self.color == "BGR":
            a = a[:, :, ::-1]
        if self.dtype == "uint8":
            out = a.astype(np.uint8)
        else:
            out = a.astype(np.float32) * self.scale
            if self.mean:
                out = (out - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
            out = out.astype(self.dtype)
        if self.layout == "NCHW":
            out = out.transpose(2, 0, 1)
        return np.ascontiguousarray(out[None])


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, name order; links and files outside it are skipped."""
    base = folder.resolve()
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink() and p.resolve().parent == base:
            out.append(p)
    return out
