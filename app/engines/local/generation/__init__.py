"""Per request: a prompt read into a cache, replies decoded together, tokens streamed.

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
attention.py       the CPU path's attention: keys and values in bfloat16, exact per token
own_kernels.py     the app's CPU kernels (attention, norms, rotary: *.cpp), built once per machine
own_layers.py      the CPU path's decoder layers: transformers' arithmetic in fewer calls
watch.py           layer hooks: Stop during a prefill, and its progress
streamer.py        token ids -> text as each token decodes
out_of_memory.py   telling an out-of-memory error, and giving the GPU's caches back
"""
