"""mergekit 0.1.5 run in-process on a recipe, for the differential tests (callers skip without mergekit)."""

from tinymodels import load_state


def run_mergekit(recipe_dict: dict, out, copy_tokenizer: bool = False) -> dict:
    """Merge ``recipe_dict`` with mergekit into ``out`` on the CPU; the output's tensors (float32, CPU)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfiguration.model_validate(recipe_dict)
    run_merge(config, str(out), options=MergeOptions(device="cpu", copy_tokenizer=copy_tokenizer, lazy_unpickle=False,
                                                      low_cpu_memory=False))
    return load_state(out)
