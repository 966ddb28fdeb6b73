"""Passes that trade accuracy for speed by training or searching: ``distill`` (knowledge
distillation into a smaller student) and ``search`` (the fastest pass pipeline within an
accuracy budget). They sit above ``irkit.passes``: they train with torch, bring students
back through the torch frontend and time candidates on the compile target."""

COMPRESS_PASSES: dict[str, str] = {
    "distill": "irkit.compress.distill:Distill",
    "search": "irkit.compress.search:Search",
}

__all__ = ["COMPRESS_PASSES"]
