"""Training of quantized SNNs as in "Navigating Local Minima in Quantized Spiking Neural Networks".

Torch data pipelines (:mod:`.data`), the LIF neuron (:mod:`.lif`), the QSNN model (:mod:`.model`),
the spike-count loss (:mod:`.loss`), LR schedules (:mod:`.schedules`) and the training loop
(:mod:`.loop`). Nothing here knows about chips.
"""
