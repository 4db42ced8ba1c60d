"""qsnn: quantized spiking neural networks from training to hardware.

The core package holds the contract every stage shares: the integer network
(:mod:`qsnn.network`), chip profiles (:mod:`qsnn.profiles`) and their integer arithmetic
(:mod:`qsnn.arith`), dataset readers returning NumPy arrays (:mod:`qsnn.data`), the
hyperparameter presets (:mod:`qsnn.config`), errors (:mod:`qsnn.errors`) and atomic file output
(:mod:`qsnn.atomic`).
"""

__version__ = "0.1.0"
