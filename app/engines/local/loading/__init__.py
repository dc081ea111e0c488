"""Start-up: a checkpoint found, placed and loaded as the weights' plan says (app/weights.py).

checkpoint.py  finding and loading a checkpoint (device, dtype, attention, 4-bit, the CPU's
               formats from app/cpu_weights/); hands over a LoadedModel
placement.py   where the weights go (one device, several GPUs, the CPU)
memory.py      free memory -> the defaults of the bounds and of the batch

Nothing on the request side (generation/, engine.py) imports this wing.
"""
