"""Triton kernels of the fused ops (the default backend for CUDA tensors).

Importing this package imports triton; :mod:`fastunlearn.ops.backends` checks that it can before any
kernel here is used. Under ``TRITON_INTERPRET=1`` (set before the first import) the same kernels run on
CPU tensors in Triton's interpreter, which is how the tests check them on machines without a GPU.
"""
