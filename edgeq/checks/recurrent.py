"""Recurrent models: outputs that feed back into the model's own inputs.

An RNN's ``hn``/``cn``, a streaming convolution's cache, a voice-activity detector's ``stateN``: the
app feeds each such output back as an input (``h``, ``c``, ``state``) on the next call. Judged one
call at a time from the data's state, such an output is a raw hidden vector (its cosine says little
about the task) and a state that drifts over many calls is never seen. So edgeq:

- finds the pairs (:func:`find_pairs`): output and input named alike (``state`` -> ``stateN`` /
  ``new_state`` / ``state_out``, ``h0`` -> ``hn`` / ``h_n``, ``x_in`` -> ``x_out``, ``in_x`` -> ``out_x``)
  whose values agree in element type and shape on the first sample, and whose input the data gives as a
  state on the second (the first sample's value again, a start state, or the first call's output, a recorded
  stream: a UNet's ``sample`` -> ``out_sample`` is named alike but its data are new inputs each call);
  ``[outputs.NAME] task = "state", feeds = "INPUT"`` in the app TOML declares a pair, any other declared
  task denies one;
- runs the samples in order as one stream (:func:`rollout`): the first call takes the data's state,
  every later call the model's OWN previous state output (fp32 its fp32 state, the quantized model
  its quantized state), so errors accumulate as they do in the app;
- judges the other outputs over the whole stream with their task metrics; the state outputs become
  checks of kind ``state`` that report their cosine and max error after the rollout (information),
  unless the model has no other output (then the state's cosine over the rollout decides).

A decoder's key/value cache (``past``/``present``) is not a pair here: it has its own path
(edgeq.exporters.decoder, ``kinds.is_kv_state``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .kinds import TaskSpec, is_kv_state

# markers an input's name carries for "the state coming in" and an output's for "the state going out";
# one-letter markers may be glued to the name (h0, hn, stateN), longer ones stand apart (state_in, new_state)
# ("input"/"output" are not markers: input_ids -> ids would pair a token model's ids)
_IN_MARKS = ("in", "prev", "previous", "old", "init", "initial", "0")
_OUT_MARKS = ("out", "new", "next", "updated", "n", "1")
_SEP = re.compile(r"[^0-9a-z]+")


@dataclass(frozen=True)
class Pair:
    """Output ``output`` is fed back as input ``input`` on the next call."""

    output: str
    input: str
    why: str
    declared: bool = False


def _stems(name: str, marks: Sequence[str]) -> set[str]:
    """The name without one of its side's markers (as a prefix, a suffix or a glued one-letter suffix), and as it is."""
    toks = [t for t in _SEP.split(name.lower()) if t]
    if not toks:
        return set()
    out = {"_".join(toks)}
    if len(toks) >= 2 and toks[0] in marks:
        out.add("_".join(toks[1:]))
    if len(toks) >= 2 and toks[-1] in marks:
        out.add("_".join(toks[:-1]))
    last = toks[-1]
    for m in marks:
        if len(m) == 1 and len(last) > 1 and last.endswith(m) and not last[-2].isdigit() and last not in _IN_MARKS + _OUT_MARKS:
            out.add("_".join(toks[:-1] + [last[:-1]]))
    return out


def named_alike(output: str, input: str) -> bool:
    """``output`` reads as the next value of ``input``: the same stem once each side's marker is dropped
    (``stateN``/``state``, ``hn``/``h0``, ``new_cache``/``cache``, ``x_out``/``x_in``); never the same name, never a KV cache."""
    if output == input or is_kv_state(output) or is_kv_state(input):
        return False
    o, i = _stems(output, _OUT_MARKS), _stems(input, _IN_MARKS)
    plain_o, plain_i = "_".join(t for t in _SEP.split(output.lower()) if t), "_".join(t for t in _SEP.split(input.lower()) if t)
    return plain_o != plain_i and bool(o & i)


def _agree(out: np.ndarray, fed: np.ndarray) -> str | None:
    """Why ``out`` cannot be fed back where ``fed`` was (None: it can)."""
    out, fed = np.asarray(out), np.asarray(fed)
    if out.dtype != fed.dtype:
        return f"{out.dtype} output, {fed.dtype} input"
    if out.shape != fed.shape:
        return f"shape {list(out.shape)} output, {list(fed.shape)} input"
    return None


def find_pairs(feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
               overrides: dict[str, dict[str, Any]] | None = None, next_feed: dict[str, np.ndarray] | None = None
               ) -> tuple[Pair, ...]:
    """The (output -> input) pairs of a model from its first call: ``feed`` the inputs it was given,
    ``outputs`` what it returned (by name), ``overrides`` the app TOML's ``[outputs.NAME]`` tables,
    ``next_feed`` the data's second sample (None: there is none).

    Inferred: named alike (:func:`named_alike`) and the same element type and shape on this call, and the
    second sample gives the input as a state (:func:`_given_as_state`).
    Declared (``task = "state"``): ``feeds`` names the input (else the input named alike); a declared
    pair whose input is missing or whose values do not fit raises BundleError (bad input, exit 2). An output with
    any other declared task is never paired."""
    from ..errors import BundleError

    overrides = overrides or {}
    pairs: list[Pair] = []
    used: set[str] = set()
    for name, value in outputs.items():
        decl = overrides.get(name) or {}
        task = decl.get("task")
        if task is not None and task != "state":
            continue
        if task == "state":
            inp = decl.get("feeds") or next((i for i in feed if i not in used and named_alike(name, i)), None)
            if inp is None or inp not in feed:
                raise BundleError(f"output '{name}' is declared task = \"state\" but " + (
                    f"the model has no input '{inp}' in the data" if inp else "no input of the model is named like its previous value"),
                    f"set [outputs.{name}] feeds = \"INPUT\" to the input it is fed back as (inputs: {', '.join(sorted(feed))})")
            bad = _agree(value, feed[inp])
            if bad:
                raise BundleError(f"output '{name}' is declared to feed input '{inp}' but cannot: {bad}",
                                 f"name the input it is fed back as in [outputs.{name}] feeds, or drop task = \"state\"")
            pairs.append(Pair(name, inp, f"declared in the app TOML (feeds '{inp}')", True))
            used.add(inp)
            continue
        for inp in feed:
            if inp in used or not named_alike(name, inp) or _agree(value, feed[inp]) is not None:
                continue
            if next_feed is not None and not _given_as_state(feed[inp], value, next_feed.get(inp)):
                continue
            v = np.asarray(value)
            pairs.append(Pair(name, inp, f"named like the next '{inp}', same {v.dtype} {list(v.shape)} per call"))
            used.add(inp)
            break
    return tuple(pairs)


def _given_as_state(first: np.ndarray, output: np.ndarray, second: Any) -> bool:
    """The data's second value of an input is a state: the first one again (every chunk starts from the app's
    start state) or, near enough, the model's first output (a stream recorded from the app)."""
    if second is None:
        return True
    second, first, output = np.asarray(second), np.asarray(first), np.asarray(output)
    if second.shape == first.shape and np.array_equal(second, first):
        return True
    if second.shape != output.shape or second.dtype.kind not in "fc":
        return bool(second.shape == output.shape and np.array_equal(second, output))
    out = output.astype(np.float64)
    return bool(np.all(np.isfinite(out)) and np.abs(second - out).max(initial=0.0) <= 1e-3 * max(np.abs(out).max(initial=0.0), 1.0))


def rollout(run: Callable[[dict[str, np.ndarray]], Sequence[Any]], feeds: Iterable[dict[str, np.ndarray]], names: Sequence[str],
            overrides: dict[str, dict[str, Any]] | None = None, pairs: tuple[Pair, ...] | None = None
            ) -> tuple[list[list[np.ndarray]], tuple[Pair, ...]]:
    """Every output on every feed, ``[output][sample]``, with ``run(feed) -> outputs`` (in ``names`` order).

    The first call takes its feed as given; the pairs are then found on it and the second feed
    (:func:`find_pairs`, or ``pairs`` when given: the reference's, so the candidate is streamed the same
    way) and every later call gets the model's own previous value of each paired output as its paired
    input. No pairs: each sample on its own, as before."""
    per_output: list[list[np.ndarray]] = []
    prev: dict[str, np.ndarray] = {}
    it = iter(feeds)
    feed, i = next(it, None), 0
    while feed is not None:
        following = next(it, None)
        if i and pairs:
            feed = {**feed, **{p.input: prev[p.output] for p in pairs if p.input in feed}}
        outs = [np.asarray(o) for o in run(feed)]
        if not per_output:
            per_output = [[] for _ in outs]
            if pairs is None:
                pairs = find_pairs(feed, dict(zip(names, outs)), overrides, following)
        for k, o in enumerate(outs):
            per_output[k].append(o)
        prev = dict(zip(names, outs))
        feed, i = following, i + 1
    return per_output, pairs or ()


def session_rollout(sess: Any, data: Any, n: int, overrides: dict[str, dict[str, Any]] | None = None,
                    pairs: tuple[Pair, ...] | None = None) -> tuple[list[list[np.ndarray]], tuple[Pair, ...]]:
    """:func:`rollout` of an onnxruntime session over the first ``n`` samples of ``data`` (a SampleSet; each feed
    keeps the session's inputs): ``[output][sample]`` (an empty list per output for no samples) and the pairs."""
    from ..core.runtime import run

    names = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    feeds = ({k: v for k, v in data.feed(i).items() if k in names} for i in range(min(n, len(data))))
    outs, pairs = rollout(lambda f: run(sess, f), feeds, outputs, overrides, pairs)
    return outs or [[] for _ in outputs], pairs


def mark_states(specs: list[TaskSpec], pairs: tuple[Pair, ...], steps: int) -> list[TaskSpec]:
    """Paired outputs become ``state`` checks (information: the other outputs carry the task over the
    ``steps``-call rollout; judged by cosine only when every output is a state); the others' reasons say
    they were judged over the rollout."""
    if not pairs:
        return specs
    by_out = {p.output: p for p in pairs}
    only = all(s.output in by_out for s in specs)
    fed = ", ".join(f"'{p.output}' as '{p.input}'" for p in pairs)
    out = []
    for s in specs:
        p = by_out.get(s.output)
        if p is None:
            out.append(replace(s, why=f"{s.why}; over a {steps}-call rollout (each model fed back its own {fed})"))
            continue
        role = ("every output is a state: its cosine over the rollout decides" if only else
                "information, not the verdict: the task outputs are judged over the rollout")
        out.append(TaskSpec(s.output, "state", f"fed back as input '{p.input}' ({p.why}): {steps} calls rolled out in order, "
                            f"each model fed its own state; {role}", {"feeds": p.input, "steps": steps, "judged": only}, s.declared))
    return out


def may_pair(inputs: Sequence[str], outputs: Sequence[str], overrides: dict[str, dict[str, Any]] | None = None) -> bool:
    """Whether any output could be paired with an input, from the names alone (no run): an output declared
    ``task = "state"``, or one named alike an input and not declared otherwise."""
    overrides = overrides or {}
    return any((overrides.get(o) or {}).get("task") == "state" or
               ((overrides.get(o) or {}).get("task") is None and any(named_alike(o, i) for i in inputs)) for o in outputs)


def rolled_calibration(model_path: Any, data: Any, overrides: dict[str, dict[str, Any]] | None = None,
                       io: Any = None, limit: int | None = None) -> tuple[Any, str | None]:
    """Calibration data for a recurrent model: ``data`` (a SampleSet) with each paired input replaced, from the
    second sample on, by fp32's own state after the sample before (one fp32 pass in sample order), so the
    state inputs' ranges are those the app feeds, not the file's one start state (often zeros). A state the
    data gives differently per sample (recorded from the app) is kept. ``limit``: only the first ``limit``
    samples are rolled out (those calibration reads and scores on); the others keep the data's state.
    Returns (data, note); ``data`` unchanged and no note when no output feeds an input, decided from the
    names first (``io``: the model's IoSpec, else read from the file) so other models cost nothing."""
    m = len(data) if limit is None else min(limit, len(data))
    if m < 2 or data.files:  # image folders: one input, read one file at a time
        return data, None
    if io is None:
        from ..core.onnxutil import artifact_from

        io = artifact_from(model_path).io
    if not may_pair(io.input_names, io.output_names, overrides):
        return data, None
    from ..core.runtime import create_session

    sess = create_session(model_path)
    pairs = session_rollout(sess, data, 2, overrides)[1]  # two calls: the second sample tells a state from an input
    first = data.feed(0)
    start = [p for p in pairs if all(np.array_equal(data.feed(i)[p.input], first[p.input]) for i in range(1, m))]
    if not start:
        return data, (f"calibrated {', '.join(repr(p.input) for p in pairs)} on the states the data gives (they differ per sample)"
                      if pairs else None)
    outs, _ = session_rollout(sess, data, m, overrides, pairs)
    outputs = [o.name for o in sess.get_outputs()]
    arrays, stacked = dict(data.arrays), dict(data.stacked)
    for p in start:
        given = data.arrays[p.input]
        rest = given[m:] if data.stacked[p.input] else given[m:, None]  # the samples calibration does not read, as given
        arrays[p.input] = np.concatenate([np.stack([np.asarray(first[p.input])] + outs[outputs.index(p.output)][:-1]), rest])
        stacked[p.input] = True
    return replace(data, arrays=arrays, stacked=stacked), (
        f"calibrated {', '.join(repr(p.input) for p in start)} on fp32's own rolled-out state ({m} samples in order from "
        "the data's start state, which every sample repeats), as the app feeds it")
