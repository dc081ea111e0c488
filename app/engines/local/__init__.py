"""The local engine: a transformers model in this process, in three wings.

engine.py        the Engine: the streaming pump, the out-of-memory retry, usage
loaded.py        what the loader hands the engine (model, processor, the weights' plan)
model_thread.py  the model's one long-lived thread (OpenMP keeps a pool per thread)
loading/         start-up: finding, placing and loading a checkpoint; memory's defaults
generation/      per request: prompts, caches, the batch scheduler, sampling, streaming
app/cpu_weights/ the CPU's weight formats (int8, 4- and 8-bit blocks, their store), beside the
                 engines: it imports nothing of the app
app/engines/zerogpu.py wraps this engine (or any) in spaces.GPU on ZeroGPU
"""

from app.engines.local.engine import LocalEngine

__all__ = ["LocalEngine"]
