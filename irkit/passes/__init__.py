BUILTIN_PASSES: dict[str, str] = {}
