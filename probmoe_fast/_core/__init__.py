r"""Pure tensor math of the fast path: the batched ESP dynamic program, the sampler, the mode and
the §5 input checks. No autograd Functions here (those live in :mod:`probmoe_fast.ops`).
"""
