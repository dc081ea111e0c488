"""The local engine: a transformers model in this process.

engine.py          the Engine: the streaming pump, the out-of-memory retry, usage
scheduler.py       the model thread's loop: prompts read one at a time, replies decoded together
batch.py           one decode step for every reply in the batch, each with its own cache
sampling.py        one reply's next token from its logits, as generate would pick it
reuse.py           the prefix-cache protocol of one request (take, read, put back, Stop)
calls.py           the model's work for a request: encode media, read a prompt
internals.py       the only place that touches transformers' and Qwen-VL's internals, checked
                   when the engine is built (kv.py holds the KV cache's side of them)
generate_kwargs.py a request's sampling settings as generate() keywords (pure)
bounds.py          the prompt bound (text first, then with media)
prompt.py          chat turns + media -> processor inputs, media spans and content keys
prefix_cache.py    earlier prompts' model state, matched by token ids and media keys
kv.py              KV caches: growing in place, cut, copied, compacted, sized
watch.py           layer hooks: Stop during a prefill, and its progress
streamer.py        token ids -> text as each token decodes
checkpoint.py      finding and loading a checkpoint (device, dtype, attention, 4-bit, int8)
placement.py       where the weights go (one device, several GPUs, the CPU)
cpu_int8.py        the CPU's int8 path; int8_store.py saves its weights once
cpu_int4.py        the language model's 4-bit layers on the CPU (ONNX Runtime's kernel)
attention.py       the CPU path's attention: keys and values in bfloat16, exact per token
memory.py          free memory -> the defaults of the bounds; out-of-memory handling
model_thread.py    the model's one long-lived thread (OpenMP keeps a pool per thread)
zerogpu.py         a wrapper running the engine inside spaces.GPU on ZeroGPU
"""

from app.engines.local.engine import LocalEngine

__all__ = ["LocalEngine"]
