"""Checkpoint files → tensors: the lazy safetensors reader, the one format-detection function, the packed-weight codecs.

The bottom layer of ``model/``: it imports no model.  One module per packed-weight family
(``fp8``, ``nf4``, ``gguf_codec``…; ``fused_decode`` compiles the fp8, nf4 and GGUF decodes into one kernel where a
probe says the bits are the eager ones), hidden behind the ``QuantizedLinear`` layer type; ``assign`` puts tensors into
meta-built models without copies.
"""

from .assign import assign_weights, key_problems, replace_module, set_tensor, swap_quantized_linears
from .formats import (QUANT_DESCRIPTIONS, CheckpointFormat, LinearSpec, classify_modules, describe_other_family,
                      detect_format, module_of, reader_traits)
from . import fp8_fused, fused_decode, gguf_fused, nf4_fused
from .fp8 import FP8_DTYPE, FP8_MAX, dequantize_fp8, quantize_fp8_rowwise, quantize_fp8_tensorwise
from .nf4 import (NF4_BLOCKSIZE, NF4_CODE, dequantize_nf4, dequantize_nf4_reference, nf4_quant_state_json,
                  parse_nf4_quant_state, quantize_nf4)
from .ops import TorchOps
from .packed_linear import SCHEMES, QuantizedLinear
from .reader import (CheckpointReader, check_safetensors_file, json_from_tensor, json_to_tensor, open_checkpoint,
                     resolve_checkpoint_files)

__all__ = ["assign_weights", "key_problems", "replace_module", "set_tensor", "swap_quantized_linears",
           "QUANT_DESCRIPTIONS", "CheckpointFormat", "LinearSpec", "classify_modules", "describe_other_family",
           "detect_format", "reader_traits", "module_of", "fp8_fused", "fused_decode", "gguf_fused", "nf4_fused", "FP8_DTYPE", "FP8_MAX", "dequantize_fp8", "quantize_fp8_rowwise",
           "quantize_fp8_tensorwise", "NF4_BLOCKSIZE", "NF4_CODE", "dequantize_nf4", "dequantize_nf4_reference",
           "nf4_quant_state_json", "parse_nf4_quant_state", "quantize_nf4", "TorchOps", "SCHEMES", "QuantizedLinear", "CheckpointReader",
           "check_safetensors_file", "json_from_tensor", "json_to_tensor", "open_checkpoint", "resolve_checkpoint_files"]
