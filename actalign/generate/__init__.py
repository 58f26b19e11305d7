"""Paraphrase variant generation (``actalign generate``).

- :func:`generate_template` / :func:`template_variants`: seeded programmatic variants from
  composable :class:`Transform` s (slot templates, coordination swap, name substitution, passive
  voice, clause reordering, synonyms, contractions, punctuation, casing, frames);
- :func:`sample_paraphrases`: few-shot LLM paraphrases through the model's chat template;
- :mod:`actalign.judge`: the filter every candidate goes through;
- :func:`generate_sets`, :func:`write_outputs`: the whole pipeline; :func:`add_generate_parser` and
  :func:`run_generate`: the command line.
"""

from actalign.generate.base import BasePrompt, as_base, read_base_prompts
from actalign.generate.llm import SamplingConfig, clean_candidate, load_paraphrase_model, sample_paraphrases
from actalign.generate.pipeline import (
    GenerationResult,
    add_generate_parser,
    generate_sets,
    run_generate,
    write_outputs,
)
from actalign.generate.transforms import (
    TRANSFORMS,
    TemplateVariant,
    Transform,
    applicable_transforms,
    generate_template,
    template_variants,
)

__all__ = [
    "BasePrompt",
    "GenerationResult",
    "SamplingConfig",
    "TRANSFORMS",
    "TemplateVariant",
    "Transform",
    "add_generate_parser",
    "applicable_transforms",
    "as_base",
    "clean_candidate",
    "generate_sets",
    "generate_template",
    "load_paraphrase_model",
    "read_base_prompts",
    "run_generate",
    "sample_paraphrases",
    "template_variants",
    "write_outputs",
]
