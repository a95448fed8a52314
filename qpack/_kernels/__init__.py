"""Compiled Cython kernels. Import them through the validating wrappers in ``qpack``."""
