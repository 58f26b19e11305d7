"""``actalign generate``: base prompts -> candidates (template and/or LLM) -> judge -> variant sets.

Outputs, next to ``--out sets.jsonl``:

- ``sets.jsonl``: variant sets (base prompt first, then given variants, then accepted candidates);
  sets left with fewer than 2 variants are dropped (and counted);
- ``sets.report.json``: counts, acceptance rate and rejections per reason, overall and per method,
  with example accepted/rejected candidates;
- ``sets.candidates.jsonl``: every candidate with its method, verdict, reason and similarity.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from actalign import judge as judging  # module import: actalign.judge imports actalign.generate.lexicon
from actalign.generate.base import BasePrompt, read_base_prompts
from actalign.generate.llm import SamplingConfig
from actalign.generate.transforms import TRANSFORMS, template_variants
from actalign.variants import VariantSet, save_variant_sets

METHODS = ("template", "llm", "both")
N_EXAMPLES = 10
TEMPLATE_MIN_SIMILARITY = 0.65


@dataclass(frozen=True)
class Candidate:
    """A proposed variant of one base prompt and where it came from."""

    set_id: str
    method: str  # template | llm
    text: str
    raw: str | None = None
    transforms: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    """Written sets, one log entry per candidate, and the report."""

    sets: list[VariantSet]
    log: list[dict]
    report: dict = field(default_factory=dict)


def set_key_terms(bases: Sequence[BasePrompt]) -> dict[str, list[str]]:
    """Key terms per set id, contrasting each base with the other bases of its family."""
    by_family: dict[str, list[str]] = {}
    for b in bases:
        by_family.setdefault(b.family, []).append(b.prompt)
    return {b.id: judging.key_terms(b.prompt, b.answer, by_family[b.family], b.keep) for b in bases}


def template_candidates(
    bases: Sequence[BasePrompt], n: int, seed: int, transforms: Sequence[str] | None = None
) -> dict[str, list[Candidate]]:
    """``n`` programmatic candidates per base."""
    return {
        b.id: [Candidate(b.id, "template", v.text, transforms=v.transforms) for v in template_variants(b, n, seed, transforms)]
        for b in bases
    }


def llm_candidates(
    bases: Sequence[BasePrompt],
    n: int,
    seed: int,
    model: str,
    sampling: SamplingConfig,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, list[Candidate]]:
    """``n`` sampled, cleaned LLM candidates per base."""
    from actalign.generate.llm import load_paraphrase_model, sample_paraphrases

    pm = load_paraphrase_model(model, device=device)
    samples = sample_paraphrases(pm, bases, n, seed=seed, config=sampling, progress=progress)
    return {sid: [Candidate(sid, "llm", s.text, raw=s.raw) for s in found] for sid, found in samples.items()}


def judge_sets(
    bases: Sequence[BasePrompt], candidates: dict[str, list[Candidate]], judges: dict[str, "judging.Judge"]
) -> tuple[list[VariantSet], list[dict], list[str]]:
    """Judge every base's candidates, method by method (``judges[method]``), each against the base
    and everything accepted before it; returns (kept sets, candidate log, dropped set ids)."""
    terms = set_key_terms(bases)
    sets, log, dropped = [], [], []
    for base in bases:
        accepted: list[str] = []
        for method, judge in judges.items():
            found = [c for c in candidates.get(base.id, []) if c.method == method]
            verdicts = judge.judge(base.prompt, [c.text for c in found], base.answer, terms[base.id], [*base.given, *accepted])
            log += [_log_entry(base, c, v) for c, v in zip(found, verdicts)]
            accepted += [v.text for v in verdicts if v.accepted]
        variants = list(dict.fromkeys([base.prompt, *base.given, *accepted]))
        if len(variants) < 2:
            dropped.append(base.id)
            continue
        sets.append(VariantSet(base.id, base.family, tuple(variants), base.answer))
    return sets, log, dropped


def _log_entry(base: BasePrompt, candidate: Candidate, verdict: "judging.Verdict") -> dict:
    entry = {"id": base.id, "method": candidate.method, "base": base.prompt, **verdict.to_json()}
    if candidate.transforms:
        entry["transforms"] = list(candidate.transforms)
    if candidate.raw is not None and candidate.raw != candidate.text:
        entry["raw"] = candidate.raw
    if verdict.similarity is not None:
        entry["similarity"] = round(verdict.similarity, 4)
    return entry


def summarise(log: Sequence[dict]) -> dict:
    """Counts, acceptance rate and rejections per reason (every reason listed, zeros included)."""
    total = len(log)
    accepted = sum(e["accepted"] for e in log)
    reasons = Counter(e["reason"] for e in log if not e["accepted"])
    return {
        "candidates": total,
        "accepted": accepted,
        "rejected": total - accepted,
        "acceptance_rate": round(accepted / total, 4) if total else 0.0,
        "rejections": {r: reasons.get(r, 0) for r in judging.REASONS},
        "rejection_rate": {r: round(reasons.get(r, 0) / total, 4) if total else 0.0 for r in judging.REASONS},
    }


def pick_examples(log: Sequence[dict], accepted: bool, k: int = N_EXAMPLES) -> list[dict]:
    """Up to ``k`` examples, spread over sets (accepted) or over reasons (rejected)."""
    pool = [e for e in log if e["accepted"] == accepted]
    key = (lambda e: e["id"]) if accepted else (lambda e: e["reason"])
    buckets: dict[object, list[dict]] = {}
    for e in pool:
        buckets.setdefault(key(e), []).append(e)
    out: list[dict] = []
    while len(out) < k and any(buckets.values()):
        for bucket in buckets.values():
            if bucket and len(out) < k:
                out.append(bucket.pop(0))
    fields = ("id", "method", "base", "text", "reason", "detail", "similarity", "transforms")
    return [{f: e[f] for f in fields if f in e} for e in out]


def build_report(bases: Sequence[BasePrompt], sets: Sequence[VariantSet], log: Sequence[dict], dropped: Sequence[str], settings: dict) -> dict:
    """The generation report (see module docstring)."""
    methods = sorted({e["method"] for e in log})
    return {
        **settings,
        "n_bases": len(bases),
        "n_sets_written": len(sets),
        "n_sets_dropped": len(dropped),
        "dropped_ids": list(dropped),
        "n_variants_written": sum(len(s.variants) for s in sets),
        **summarise(log),
        "by_method": {m: summarise([e for e in log if e["method"] == m]) for m in methods},
        "examples": {"accepted": pick_examples(log, True), "rejected": pick_examples(log, False)},
    }


def generate_sets(
    bases: Sequence[BasePrompt],
    method: str = "template",
    n: int = 8,
    seed: int = 0,
    model: str = "smollm2-135m",
    judge_config: "judging.JudgeConfig | None" = None,
    template_min_similarity: float | None = TEMPLATE_MIN_SIMILARITY,
    sampling: SamplingConfig = SamplingConfig(),
    transforms: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> GenerationResult:
    """Generate candidates with ``method`` (template, llm or both), judge them, build sets and report.

    Template candidates are meaning-preserving by construction, so their similarity threshold is
    ``template_min_similarity`` (None: the same as ``judge_config``'s); everything else is shared.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    candidates: dict[str, list[Candidate]] = {b.id: [] for b in bases}
    if method in ("template", "both"):
        for sid, found in template_candidates(bases, n, seed, transforms).items():
            candidates[sid] += found
    if method in ("llm", "both"):
        for sid, found in llm_candidates(bases, n, seed, model, sampling, device, progress).items():
            candidates[sid] += found
    config = judge_config or judging.JudgeConfig()
    judges = {}
    if method in ("template", "both"):
        floor = config.min_similarity if template_min_similarity is None else template_min_similarity
        judges["template"] = judging.Judge(replace(config, min_similarity=floor))
    if method in ("llm", "both"):
        judges["llm"] = judging.Judge(config)
    sets, log, dropped = judge_sets(bases, candidates, judges)
    settings = {"method": method, "n": n, "seed": seed, "thresholds": {m: asdict(j.config) for m, j in judges.items()}}
    if method != "template":
        settings.update(model=model, sampling=asdict(sampling))
    return GenerationResult(sets, log, build_report(bases, sets, log, dropped, settings))


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(sets, report, candidate log) paths for ``--out``."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return out, stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".candidates.jsonl")


def write_outputs(result: GenerationResult, out: str | Path) -> tuple[Path, Path, Path]:
    """Write sets (when any set survived), report and candidate log; returns their paths."""
    sets_path, report_path, log_path = output_paths(out)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    if result.sets:
        save_variant_sets(result.sets, sets_path)
    report = {**result.report, "sets_file": str(sets_path) if result.sets else None, "candidates_file": str(log_path)}
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log_path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in result.log), encoding="utf-8")
    return sets_path, report_path, log_path


# ----------------------------------------------------------------------------- CLI


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``generate`` on an ``add_subparsers()`` object; sets ``func=run_generate``."""
    from actalign.models import DEFAULT_MODEL

    p = subparsers.add_parser(
        "generate",
        help="generate paraphrase variant sets from base prompts (templates and/or an LLM, with a judge)",
        description="Turn base prompts (JSONL: id, family, prompt or variants, optional answer) into variant sets.",
    )
    p.add_argument("--input", required=True, help="base-prompt JSONL (e.g. actalign/data/base_prompts.jsonl)")
    p.add_argument("--out", required=True, help="output variant-set JSONL; also writes <stem>.report.json and <stem>.candidates.jsonl")
    p.add_argument("--method", default="template", choices=METHODS, help="programmatic templates, LLM paraphrasing, or both")
    p.add_argument("--n", type=int, default=8, help="candidates per base prompt and method (default 8)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="paraphrasing model for --method llm/both (smollm2-135m, tiny, a folder or hub name)")
    p.add_argument("--seed", type=int, default=0, help="seed for template choices and LLM sampling")
    p.add_argument("--device", default="cpu", help="torch device for the LLM")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--transforms", default=None, help=f"comma-separated subset of {','.join(TRANSFORMS)}")
    defaults = judging.JudgeConfig()
    p.add_argument("--min-similarity", type=float, default=defaults.min_similarity, help="MiniLM cosine to the base for LLM candidates (default %(default)s)")
    p.add_argument("--template-min-similarity", type=float, default=TEMPLATE_MIN_SIMILARITY, help="the same for template candidates (default %(default)s)")
    p.add_argument("--min-edit-distance", type=float, default=defaults.min_edit_distance, help="normalised edit distance below which a candidate is a near duplicate (default %(default)s)")
    sampling = SamplingConfig()
    p.add_argument("--temperature", type=float, default=sampling.temperature, help="LLM sampling temperature (default %(default)s)")
    p.add_argument("--top-p", type=float, default=sampling.top_p, help="LLM nucleus sampling (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=sampling.max_new_tokens, help="tokens per sampled paraphrase (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=sampling.batch_size, help="base prompts per generate call")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_generate)
    return p


def run_generate(args: argparse.Namespace) -> int:
    """Run ``actalign generate`` from parsed arguments; prints a summary. Returns 0, or 1 when no
    set survived the judge (the report is still written)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bases = read_base_prompts(args.input)
    result = generate_sets(
        bases,
        method=args.method,
        n=args.n,
        seed=args.seed,
        model=args.model,
        judge_config=judging.JudgeConfig(args.min_similarity, args.min_edit_distance),
        template_min_similarity=args.template_min_similarity,
        sampling=SamplingConfig(args.temperature, args.top_p, args.max_new_tokens, args.batch_size),
        transforms=args.transforms.split(",") if args.transforms else None,
        device=args.device,
        progress=not args.no_progress,
    )
    result.report["input"] = str(args.input)
    sets_path, report_path, _ = write_outputs(result, args.out)
    r = result.report
    print(
        f"{r['candidates']} candidates, {r['accepted']} accepted ({r['acceptance_rate']:.1%}); "
        f"{r['n_sets_written']} sets written, {r['n_sets_dropped']} dropped"
    )
    print("rejections: " + (", ".join(f"{k}={v}" for k, v in r["rejections"].items() if v) or "none"))
    if not result.sets:
        print(f"actalign generate: no set kept 2 or more variants; wrote only {report_path}", file=sys.stderr)
        return 1
    print(f"wrote {sets_path} and {report_path}")
    return 0
