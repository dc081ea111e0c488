"""The CPU's weight formats: quantized linear layers and their store.

int8.py     every linear layer and the embedding table in int8, computed by oneDNN (each token's
            row quantized on its own, so a prompt read in parts gives the same bits)
blocks.py   linear layers in 4- and 8-bit blocks, computed by the app's own kernel (given by the
            caller: `BlockProducts`) or ONNX Runtime's MatMulNBits
store.py    the quantized weights saved once (safetensors) and read on later starts
output.py   the output layer in 4 bits, its likeliest tokens' logits again from the tied int8
            embedding rows
threads.py  the thread pools' setting, made before PyTorch is imported

This package imports nothing else of the app (tests/unit/test_code_shape.py holds it to that):
which layer gets which format is the caller's to say (`formats`, a function of a layer's name).
"""
