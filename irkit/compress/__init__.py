"""Passes that trade accuracy for speed by training or searching: ``distill`` (knowledge
distillation into a smaller student) and ``search`` (the fastest pass pipeline within an
accuracy budget). They sit above ``irkit.passes``: they train with torch, bring students
back through the torch frontend and time candidates on the compile target. Both are
registered by ``plugins/builtins.py``."""
