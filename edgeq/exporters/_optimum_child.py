"""Runs Optimum's ONNX exporter in its own interpreter (see ``hf_optimum.py``).

Started as ``python -I _optimum_child.py request.json``: ``-I`` keeps this file's
folder off ``sys.path`` (it holds edgeq's ``torch.py``). It must not import
edgeq: the interpreter is the Optimum environment's, where edgeq is not
installed. It writes one JSON result to the path named in the request, also
when the export fails.
"""

import json
import sys


def _first(e):
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:400]


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("optimum-onnx", "optimum", "transformers", "torch", "onnx"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def main(request_path):
    with open(request_path, encoding="utf-8") as f:
        req = json.load(f)
    result = {"ok": False, "python": sys.executable}
    try:
        try:
            from optimum.exporters.onnx import main_export
        except Exception as e:  # noqa: BLE001 - ImportError or a broken install
            result.update(stage="import", error=f"{type(e).__name__}: {_first(e)}")
            return 3
        result["versions"] = _versions()
        shapes = req.get("static") or {}
        try:
            main_export(
                req["folder"], req["output"], task=req["task"], opset=req.get("opset"), device="cpu", dtype="fp32",
                local_files_only=True, trust_remote_code=bool(req.get("trust_remote_code")), do_validation=False,
                library_name="transformers", no_dynamic_axes=bool(shapes), **shapes,
            )
        except BaseException as e:  # noqa: BLE001 - report every failure as data
            result.update(stage="export", error=f"{type(e).__name__}: {_first(e)}")
            return 4
        result["ok"] = True
        return 0
    finally:
        with open(req["result"], "w", encoding="utf-8") as f:
            json.dump(result, f)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
