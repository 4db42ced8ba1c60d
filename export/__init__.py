"""Export: a trained QSNN as a one-time-step QONNX graph, and that graph compiled to integers.

Modules (only :mod:`.qonnx_float` and :mod:`.integer_torch` import torch; the rest need numpy, onnx,
onnxruntime and qonnx, so ``sim/`` and ``targets/`` can use them without torch):

* :mod:`.format`        the file format: metadata keys, reading and checking a qsnn QONNX file,
                         name-preserving cleanup, atomic save.
* :mod:`.qonnx_float`   ``export_float(checkpoint, out)``: PyTorch/Brevitas → QONNX, one time step,
                         membranes as graph inputs/outputs (kind ``"float"``).
* :mod:`.float_graph`   ``read_float_graph(onnx)``: the float export as plain, checked layers and
                         metadata (the compiler's first pass).
* :mod:`.compile`       ``compile_qonnx(onnx, profile)``: QONNX → :class:`~qsnn.network.IntegerNetwork`
                         plus a report, as a pipeline of small passes.
* :mod:`.qonnx_int`     ``export_integer(net, out)``: the integer-domain one-step graph (kind
                         ``"integer"``), exact in float64, that any QONNX executor runs bit for bit;
                         ``read_integer_qonnx`` reads it back.
* :mod:`.runtime`       host loops over T: ``run_onnx_steps`` (onnxruntime after ``QuantToQCDQ``, or
                         qonnx's ``execute_onnx``) for both kinds.
* :mod:`.integer_torch` ``run_integer_torch``: an independent PyTorch evaluation of the integer
                         semantics of :mod:`qsnn.arith`.
* :mod:`.torch_model`   ``export_torch(sequential, input_shape, num_steps, out)``: a user's own
                         snnTorch + Brevitas ``nn.Sequential`` as the same float QONNX (imports torch).
* :mod:`.cli`           ``qsnn-export``.

``from qsnn.export import export_torch`` loads :mod:`.torch_model` on first use, so importing this
package does not import torch.
"""


def __getattr__(name: str):
    if name in ("export_torch", "qsnn_from_sequential"):
        from . import torch_model

        return getattr(torch_model, name)
    raise AttributeError(f"module 'qsnn.export' has no attribute {name!r}")
