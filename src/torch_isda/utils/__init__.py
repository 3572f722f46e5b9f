"""Small leaf helpers shared by the harness packages; nothing here imports another part
of ``torch_isda``.
"""
