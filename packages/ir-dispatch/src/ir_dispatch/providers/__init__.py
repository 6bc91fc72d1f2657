"""Providers that ship with ir-dispatch itself (no extra dependency beyond torch).

:mod:`ir_dispatch.providers.cpu` registers the batch-invariant CPU implementations as provider
``cpu``; ``import ir_dispatch`` imports it, so CPU runs are covered out of the box.
"""
