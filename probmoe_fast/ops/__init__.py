r"""Autograd Functions over the pure tensor math of :mod:`probmoe_fast._core`."""
