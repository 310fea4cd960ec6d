"""The one place that writes files: atomic targets, the streaming safetensors writer, and the side files (model card,
recipe, tokenizer/config copies, learned-merge summary, PEFT adapter config) every output carries."""

from .model_card import library_name, model_card
from .safetensors_writer import ShardSpec, ShardWriter, plan_shards, save_tensors, write_index, write_safetensors
from .side_files import (ADAPTER_CONFIG, RECIPE_FILE, SIDE_FILES, TOKENIZER_FILES, WEIGHT_SUFFIXES,
                         copy_non_weight_files, copy_side_files, is_single_file, learned_summary_json,
                         learned_summary_path, peft_adapter_config, recipe_path, write_chat_template)
from .target import (AtomicTarget, atomic_files, check_target, output_error, remove_quietly, source_paths, write_json,
                     write_text)

__all__ = ["ADAPTER_CONFIG", "AtomicTarget", "RECIPE_FILE", "SIDE_FILES", "ShardSpec", "ShardWriter",
           "TOKENIZER_FILES", "WEIGHT_SUFFIXES", "atomic_files", "check_target", "copy_non_weight_files",
           "copy_side_files", "is_single_file", "learned_summary_json", "learned_summary_path", "library_name",
           "model_card", "output_error", "peft_adapter_config", "plan_shards", "recipe_path", "remove_quietly", "save_tensors",
           "source_paths", "write_index", "write_json",
           "write_chat_template", "write_safetensors", "write_text"]
