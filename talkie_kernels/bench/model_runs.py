"""The model section of a bench run: prefill and decode tokens/s of each ``ModelRun`` at each format.

For each run and format ``run_models`` builds (or loads, or under
``mlx.launch`` loads sharded) the reference and fused models into a
``Loaded``; ``_check`` compares their logits and counts their graph nodes
(notes of the run); ``_measure`` times every workload of ``Settings.workloads``
for every implementation, interleaved, and returns their records.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from ..configs import WIDTH_13B
from . import models as M
from . import probes as P
from . import timing as B
from .records import record
from .settings import BLOCK_13B, ModelRun, Settings


@dataclass
class Loaded:
    """One model run at one format, its models built or loaded."""

    run: ModelRun
    #: The format asked for (None: a checkpoint's own weights).
    fmt: str | None
    #: "reference" and "fused": a model, or the exception that says why there is none.
    models: dict
    #: The rows' model and dtype: the config (or checkpoint directory) name, and ``fmt``
    #: or the checkpoint's weights (e.g. "bfloat16 4-bit").
    label: str
    dtype: str
    vocab: int
    #: Tokens per decode sample and the prompt prefilled before them (``Settings.decode_lengths``).
    decode_tokens: int
    decode_prompt: int


def run_models(s: Settings, progress, notes: list[str], graph_nodes: dict) -> list[dict]:
    """The records of every model run; ``notes`` gains what the tables should say about them
    and ``graph_nodes`` each float32 model's nodes per decoded token."""
    records = []
    for run in s.models:
        for fmt in run.formats:
            loaded = _load(s, run, fmt, progress, notes)
            _check(s, loaded, notes, graph_nodes)
            records += _measure(s, loaded, progress)
            del loaded
            mx.clear_cache()
    return records


def _load(s: Settings, run: ModelRun, fmt: str | None, progress, notes: list[str]) -> Loaded:
    label = Path(run.name).name if run.checkpoint else run.name
    progress(f"model {label} {fmt or ''}: building")
    if run.checkpoint and s.group is not None:
        models = _load_sharded(run.name, s, notes)
        dtype = M.model_dtype(models["fused"])
        quantized = "bit" in dtype
    elif run.checkpoint:
        models = M.load_models(run.name)
        dtype = M.model_dtype(M.base_model(models))
        quantized = "bit" in dtype  # e.g. "bfloat16 4-bit"
    else:
        models = (M.build_fused_only if run.fused_only else M.build_models)(run.name, fmt, s.seed)
        dtype = fmt
        quantized = M.weight_format(fmt)[1] is not None
    decode_tokens, decode_prompt = s.decode_lengths(quantized or run.name in WIDTH_13B)
    return Loaded(run, fmt, models, label, dtype, M.vocab_size(M.base_model(models)), decode_tokens, decode_prompt)


class NotSharded(B.NotApplicable):
    """The reference of a run under mlx.launch: mlx-lm's Talkie cannot be sharded."""


def _load_sharded(path: str, s: Settings, notes: list[str]) -> dict:
    """This rank's share of a checkpoint (the fused model); the reference is n/a."""
    from ..launch import maybe_shard

    fused = maybe_shard(path, pipeline=s.pipeline)[0]
    kind = "pipeline (blocks split)" if s.pipeline else "tensor parallel (heads split)"
    n = s.group.size()
    notes.append(
        f"{Path(path).name}: sharded across {n} processes, {kind}, fused only; rates are the "
        "group's, the decode floor is rank 0's weight bytes ÷ bandwidth"
    )
    why = f"mlx-lm's Talkie cannot be sharded: no mlx-lm comparison under mlx.launch ({n} processes)"
    return {"reference": NotSharded(why), "fused": fused}


def _model_for(models: dict, impl: str):
    ref = models["reference"]
    if impl != "fused" and isinstance(ref, NotSharded):
        raise ref
    return M.model_for(models, impl)


def _check(s: Settings, m: Loaded, notes: list[str], graph_nodes: dict) -> None:
    """Notes on ``m``: why it has no reference, how far the fused logits are from the
    reference's, or why the fused model is unavailable (a fused model that cannot run
    becomes that exception: its rows report it); and the decode graph nodes of a
    float32 model (once per label)."""
    models, what = m.models, f"{m.label} {m.dtype}"
    if isinstance(models["reference"], BaseException):
        notes.append(f"{what}: {models['reference']}")
    try:
        agree = M.logits_agreement(models, M.prompt_ids(m.vocab, m.decode_prompt, s.seed))
    except Exception as e:  # the fused model built but cannot run: its rows report this
        models["fused"], agree = e, None
    if agree is not None:
        notes.append(f"{what}: fused logits vs reference on a {m.decode_prompt}-token prompt: max rel. diff {agree:.2g}")
    if isinstance(models["fused"], BaseException):
        f = models["fused"]
        notes.append(f"{what}: fused model unavailable ({type(f).__name__}: {f})")
    elif (m.fmt in (None, "float32") and m.label not in graph_nodes and m.run.name != BLOCK_13B
          and not isinstance(models["reference"], BaseException)):
        nodes = M.decode_nodes(models)
        graph_nodes[m.label] = nodes
        notes.append(
            f"{m.label}: graph nodes per decoded token (mx.export_to_dot): mlx-lm {nodes['reference']}, "
            f"fused {nodes['fused']} ({nodes['fused'] / nodes['reference']:.2f}×)"
        )


def _measure(s: Settings, m: Loaded, progress) -> list[dict]:
    """The records of every workload of ``m`` (``Settings.workloads``), implementations interleaved.

    The decode rows of the 13B-width configs, which targets hold to their
    floor, also carry the read bandwidth measured in their own rounds
    (``read_gbps_local``: ``probes.ReadProbe``'s 512 MiB read once per round
    between the row's samples, as the linear rows do), and their floor is
    read against it: this VM's bandwidth moves by a third within a run, so a
    floor from the run's start or end reads that drift as the model's. (Not
    under ``mlx.launch``, whose floor is rank 0's.)

    The generate_step workload likewise carries the fused model's synchronous
    loop timed in its own rounds (``SYNC_CASE``, not a row of its own): its
    target compares the two loops, and measured minutes apart in separate
    workloads the drift read as the difference (``_in_round_sync``).
    """
    run, models = m.run, m.models
    weight_model = models["reference"] if isinstance(models["fused"], BaseException) else models["fused"]
    weight_bytes = M.decode_weight_bytes(weight_model)
    records = []
    in_round_floor = run.name in WIDTH_13B and s.group is None
    probe = probe_case = None  # made at the first decode workload that reads it
    for phase, method, impls in s.workloads(run, m.fmt):
        tokens = run.prompt_len if phase == "prefill" else m.decode_tokens
        progress(f"model {m.label} {m.dtype} {phase} {method} ({tokens} tokens)")
        cases = {impl: _case(s, m, phase, method, impl) for impl in impls}
        companions = ()
        if method == "generate_step" and "fused" in impls:
            cases[SYNC_CASE] = _case(s, m, phase, "step_loop", "fused")
        if phase == "decode" and in_round_floor:
            if probe_case is None:  # (once: where it fails, probe_case is why and the run's probe serves)
                probe, probe_case = P.round_probe(P.ReadProbe)
            if probe is not None:
                cases, companions = dict(cases, probe=probe_case), ("probe",)
        # The eager models already ran this format (logits check in _check), so a
        # slow eager case's warm-up is a fair sample; a compiled one's compiles.
        results = B.interleaved(cases, rounds=s.rounds, min_rounds=s.min_rounds, budget_s=s.model_budget_s[phase],
                                slow_s=s.slow_s.get("models"), reuse_warmup=("reference", "fused"),
                                companions=companions)
        for case in cases.values():
            if hasattr(case, "close"):
                case.close()
        base = {
            "kind": "model", "model": m.label, "phase": phase, "method": method, "dtype": m.dtype, "tokens": tokens,
            "checkpoint": str(Path(run.name).resolve()) if run.checkpoint else None,
            "prompt_len": run.prompt_len if phase == "prefill" else m.decode_prompt,
        }
        if phase == "decode":
            base["weight_bytes_per_token"] = weight_bytes
            if companions:
                base["read_gbps_local"] = probe.take_median()
        rows = [record(base, impl, results[impl], tokens) for impl in impls]
        if SYNC_CASE in cases:
            _in_round_sync(rows, results, tokens)
        records += rows
    return records


#: The fused synchronous decode loop, timed in the generate_step workload's rounds.
SYNC_CASE = "fused_step_loop"


def _in_round_sync(rows: list[dict], results: dict, tokens: int) -> None:
    """The fused generate_step row gains ``sync_tokens_per_s_local`` (the synchronous loop's
    tok/s in the same rounds) and ``vs_sync_local``: the median over rounds of that round's
    synchronous time ÷ its generate_step time (> 1: the pipelined loop is faster)."""
    piped, sync = results.get("fused"), results.get(SYNC_CASE)
    if not (isinstance(piped, B.Stats) and isinstance(sync, B.Stats) and piped.samples_ms and sync.samples_ms):
        return
    row = next(r for r in rows if r["impl"] == "fused")
    row["sync_tokens_per_s_local"] = tokens / (sync.median / 1e3)
    pairs = list(zip(sync.samples_ms, piped.samples_ms))  # round by round: each samples every round until done
    row["vs_sync_local"] = statistics.median(a / b for a, b in pairs)


def _case(s: Settings, m: Loaded, phase: str, method: str, impl: str):
    """The timed case of one implementation of one workload (``timing.interleaved``), or the
    exception that says why it has none (n/a, or an unavailable fused model: reported, not timed)."""
    try:
        model = _model_for(m.models, impl)
        if phase == "prefill":
            return M.prefill_case(model, M.prompt_ids(m.vocab, m.run.prompt_len, s.seed), impl)
        make = M.decode_case if method == "step_loop" else M.generate_step_case
        return make(model, M.prompt_ids(m.vocab, m.decode_prompt, s.seed), m.decode_tokens, impl)
    except Exception as e:
        return e
