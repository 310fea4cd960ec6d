"""References → lazy tensor sources (safetensors via mmap; pickles only through torch.load(weights_only=True))."""

from .base import DictSource, PrefixedSource, SubsetSource, TensorInfo, TensorSource
from .pickle_file import safe_torch_load
from .resolve import REFERENCE_MODIFIERS, ModelRef, open_source, resolve_path
from .safetensors_file import ST_DTYPES, ST_NAMES, SafetensorsFile, read_header

__all__ = ["DictSource", "ModelRef", "PrefixedSource", "SubsetSource", "REFERENCE_MODIFIERS", "ST_DTYPES", "ST_NAMES",
           "SafetensorsFile", "TensorInfo", "TensorSource", "open_source", "read_header", "resolve_path",
           "safe_torch_load"]
