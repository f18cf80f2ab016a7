"""The slice of ONNX Runtime's session surface that the predictor uses, for sessions that are
not ONNX Runtime (:mod:`eoforge.inference.torch_session`,
:mod:`eoforge.inference.openvino_session`): input/output descriptions and an IO binding that
writes the logits straight into the predictor's own buffer.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from eoforge.errors import InputError
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME

__all__ = ["Arg", "Binding"]


@dataclass(frozen=True)
class Arg:
    """The slice of ``onnxruntime.NodeArg`` the predictor reads."""

    name: str
    type: str
    shape: list[Any]


class Binding:
    """The slice of ``onnxruntime.IOBinding`` the predictor uses.

    ``input`` is the bound batch; ``output`` the caller's logits buffer (a view of the memory
    ``bind_output`` names, or None: the session allocates); ``result`` the last logits.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.input: npt.NDArray[np.float32] | None = None
        self.output: npt.NDArray[np.float32] | None = None
        self.result: npt.NDArray[np.float32] | None = None

    def bind_cpu_input(self, name: str, array: npt.NDArray[np.float32]) -> None:
        if name != INPUT_NAME:
            raise InputError(f"a {self.owner} has one input, '{INPUT_NAME}', not '{name}'.")
        self.input = array

    def bind_output(
        self,
        name: str,
        device_type: str = "cpu",
        device_id: int = 0,
        element_type: Any = None,
        shape: list[int] | None = None,
        buffer_ptr: int | None = None,
    ) -> None:
        if name != OUTPUT_NAME or device_type != "cpu":
            raise InputError(
                f"a {self.owner} returns '{OUTPUT_NAME}' to the CPU; got '{name}' on {device_type}."
            )
        if buffer_ptr is None or shape is None:
            self.output = None
            return
        if element_type not in (None, np.float32):
            raise InputError(f"a {self.owner} writes float32 logits, not {element_type}.")
        count = int(np.prod(shape))
        raw = (ctypes.c_float * count).from_address(buffer_ptr)
        self.output = np.ctypeslib.as_array(raw).reshape(shape)

    def copy_outputs_to_cpu(self) -> list[npt.NDArray[np.float32]]:
        if self.result is None:
            raise InputError("copy_outputs_to_cpu before run_with_iobinding.")
        return [self.result]
